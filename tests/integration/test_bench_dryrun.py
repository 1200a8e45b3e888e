"""The benchmark harness's dry run: it parses, plans every run, and starts nothing.

`python bench/run.py --quick --dry-run` must work on a machine without HAProxy, nginx, iperf3 or
wrk (CI does not install them): these tests run it with a PATH that holds only the Python
interpreter's directory, and an empty results directory that must stay empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "bench" / "run.py"


def _run(args: list[str], results: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PATH"] = str(Path(sys.executable).parent)  # no haproxy, nginx, iperf3, wrk, taskset
    return subprocess.run([sys.executable, str(RUN), *args, "--results-dir", str(results)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
                          check=False)


def _plan(args: list[str], results: Path) -> dict[str, Any]:
    res = _run([*args, "--dry-run", "--json-plan"], results)
    assert res.returncode == 0, res.stderr
    plan: dict[str, Any] = json.loads(res.stdout)
    return plan


def test_quick_dry_run_prints_the_plan_and_starts_nothing(tmp_path: Path) -> None:
    results = tmp_path / "results"
    res = _run(["--quick", "--dry-run"], results)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "dry run: nothing started, no load generated" in out
    for target in ("direct", "l4lb", "haproxy", "nginx"):
        assert f"] {target}:" in out
    for workload in ("idle", "bulk1", "bulk8", "newconn", "keepalive", "udp300k"):
        assert f"    {workload} " in out
    assert "taskset -c 1 haproxy" in out and "taskset -c 0 iperf3" in out
    assert "python -m bench.tablebench" in out
    assert not results.exists(), "a dry run must not write results"


def test_quick_plan_covers_every_target_workload_and_repetition(tmp_path: Path) -> None:
    plan = _plan(["--quick"], tmp_path / "r")
    reps = plan["options"]["reps"]
    assert reps >= 3
    assert plan["estimate_seconds"] < 180
    names = [w["name"] for w in plan["workloads"]]
    assert names[0] == "idle", "idle connections are measured first, on a fresh balancer"
    seen: dict[tuple[str, str], int] = {}
    for block in plan["blocks"]:
        for step in block["steps"]:
            seen[(block["target"], step)] = seen.get((block["target"], step), 0) + 1
    for target in ("direct", "l4lb", "haproxy", "nginx"):
        for name in names:
            expected = 0
            if not (target == "direct" and name == "idle") and not (
                    target == "haproxy" and name.startswith("udp")):
                expected = reps
            assert seen.get((target, name), 0) == expected, (target, name)
    orders = {b["rep"]: [x["target"] for x in plan["blocks"] if x["rep"] == b["rep"]]
              for b in plan["blocks"]}
    assert orders[0] != orders[1], "target order rotates between repetitions"
    assert plan["table_sizes"] == [10, 100, 1000]


def test_full_plan_is_pinned_and_unpinned_and_fits_fifteen_minutes(tmp_path: Path) -> None:
    plan = _plan([], tmp_path / "r")
    assert {b["pin"] for b in plan["blocks"]} == {"pinned", "unpinned"}
    assert {b["target"] for b in plan["blocks"]} >= {"direct", "l4lb", "haproxy",
                                                     "haproxy-auto", "nginx"}
    assert plan["estimate_seconds"] < 900
    assert {w["name"] for w in plan["workloads"]} >= {"udp100k", "udp300k"}


def test_cubic_variant_runs_only_the_bulk_workloads(tmp_path: Path) -> None:
    plan = _plan(["--targets", "l4lb,l4lb-cubic,haproxy"], tmp_path / "r")
    steps = {(b["target"], s) for b in plan["blocks"] for s in b["steps"]}
    cubic = {s for t, s in steps if t == "l4lb-cubic"}
    assert cubic == {"bulk1", "bulk8"}
    assert {s for t, s in steps if t == "l4lb"} > cubic


def test_cubic_variant_sets_the_key_on_the_bulk_service_only() -> None:
    sys.path.insert(0, str(REPO))
    from bench import peers

    ports = peers.Ports(bulk=1, http=2, idle=3, udp=4)
    plain = peers.l4lb_config(ports, ports, "/run/x.sock", udp=True)
    cubic = peers.l4lb_config(ports, ports, "/run/x.sock", udp=True,
                              bulk_congestion_control="cubic")
    assert "congestion_control" not in plain
    services = cubic.split("[[services]]")[1:]
    with_key = [s for s in services if 'congestion_control = "cubic"' in s]
    assert len(with_key) == 1 and 'name = "bulk"' in with_key[0]


def test_nogro_variant_runs_udp_300k_only_and_switches_the_udp_service(tmp_path: Path) -> None:
    plan = _plan(["--targets", "l4lb,l4lb-nogro,nginx"], tmp_path / "r")
    steps = {(b["target"], s) for b in plan["blocks"] for s in b["steps"]}
    assert {s for t, s in steps if t == "l4lb-nogro"} == {"udp300k"}
    sys.path.insert(0, str(REPO))
    from bench import peers

    ports = peers.Ports(bulk=1, http=2, idle=3, udp=4)
    assert "udp_gro" not in peers.l4lb_config(ports, ports, "/run/x.sock", udp=True)
    off = peers.l4lb_config(ports, ports, "/run/x.sock", udp=True, udp_gro=False)
    with_key = [s for s in off.split("[[services]]")[1:] if "udp_gro = false" in s]
    assert len(with_key) == 1 and 'protocol = "udp"' in with_key[0]


def test_reference_smoke_target_is_labelled_apart(tmp_path: Path) -> None:
    res = _run(["--quick", "--dry-run", "--l4lb-reference", "--targets", "l4lb"],
               tmp_path / "r")
    assert res.returncode == 0, res.stderr
    assert "L4LB_NO_EXTENSIONS=1 taskset -c 1 l4lb run" in res.stdout
    assert "smoke test only" in res.stdout


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    res = _run(["--quick", "--dry-run", "--targets", "squid"], tmp_path / "r")
    assert res.returncode == 2
    assert "unknown target 'squid'" in res.stderr
    res = _run(["--quick", "--dry-run", "--only", "bulk3"], tmp_path / "r")
    assert res.returncode == 2
    assert "unknown workload" in res.stderr
