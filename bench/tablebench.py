"""Time a forwarding-table rebuild and its publish, for 10 / 100 / 1,000 backends, in-process.

Run as `python -m bench.tablebench --sizes 10,100,1000 --reps 7` from the repository root with
the interpreter l4lb runs on; prints one JSON object. For every size and scheduler (round_robin,
maglev with the 65,537-slot ring) it builds the blob with l4lb.table.builder.TableBuilder after a
weight change (one backend goes to 0 and back, as a health check would do) and publishes it into a
started data plane with one worker (l4lb.dataplane.load_dataplane_class: the compiled one unless
L4LB_NO_EXTENSIONS=1). What cannot be imported yet is reported as such, never faked.
Not measured here: whether forwarding pauses during a publish (it needs traffic through the data
plane at the same time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any


def _config(n: int, scheduler: str, slots: int) -> Any:
    from l4lb.config.model import Backend, Config, Endpoint, GlobalSettings, Service

    backends = []
    for i in range(n):
        host = f"127.0.{1 + i // 250}.{1 + i % 250}"  # never contacted: no traffic is sent
        ep = Endpoint(host=host, port=8000, text=f"{host}:8000")
        backends.append(Backend(address=ep, name=ep.text))
    svc = Service(name="svc", protocol="tcp",
                  listen=(Endpoint(host="127.0.0.1", port=9, text="127.0.0.1:9"),),
                  backends=tuple(backends), scheduler=scheduler,  # type: ignore[arg-type]
                  maglev_table_size=slots)
    return Config(path="<bench>", global_=GlobalSettings(workers=1), services=(svc,))


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def run(sizes: list[int], reps: int, slots: int) -> dict[str, Any]:
    """Every measurement, as a JSON-able dict."""
    out: dict[str, Any] = {"sizes": sizes, "reps": reps, "slots": slots, "results": []}
    try:
        from l4lb.table.builder import TableBuilder
    except ImportError as exc:
        out["error"] = f"l4lb.table.builder.TableBuilder is not importable yet: {exc}"
        return out
    dp: Any = None
    try:
        from l4lb.dataplane import compiled_available, load_dataplane_class, reference_requested

        cls = load_dataplane_class()
        dp = cls(1)
        dp.start()
        out["dataplane"] = ("reference" if reference_requested() else
                            "compiled" if compiled_available() else "unknown")
    except Exception as exc:  # any failure here means "publish not measurable"
        out["publish_error"] = f"data plane publish not available: {type(exc).__name__}: {exc}"
        dp = None
    try:
        for n in sizes:
            for sched in ("round_robin", "maglev"):
                cfg = _config(n, sched, slots)
                label = cfg.services[0].backends[0].address.text
                builder = TableBuilder()
                first = builder.build(cfg)
                if dp is not None:
                    dp.publish(first)
                build_ms: list[float] = []
                publish_ms: list[float] = []
                size = len(first)
                for r in range(reps):
                    weights = {("svc", label): 0} if r % 2 == 0 else {}
                    t0 = time.perf_counter()
                    blob = builder.build(cfg, weights)
                    t1 = time.perf_counter()
                    build_ms.append((t1 - t0) * 1e3)
                    if dp is not None:
                        dp.publish(blob)
                        publish_ms.append((time.perf_counter() - t1) * 1e3)
                    size = len(blob)
                row: dict[str, Any] = {"backends": n, "scheduler": sched, "blob_bytes": size,
                                       "build_ms": _stats(build_ms)}
                if publish_ms:
                    row["publish_ms"] = _stats(publish_ms)
                    row["total_ms"] = _stats([b + p for b, p in
                                              zip(build_ms, publish_ms, strict=True)])
                out["results"].append(row)
    finally:
        if dp is not None:
            dp.stop(1.0)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point: prints the JSON result."""
    ap = argparse.ArgumentParser(prog="python -m bench.tablebench", description=__doc__)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--slots", type=int, default=65537)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    print(json.dumps(run(sizes, args.reps, args.slots)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
