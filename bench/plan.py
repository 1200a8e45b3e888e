"""Plan a benchmark invocation: which runs, in which order, for how long. Pure: no I/O.

A run is one workload against one target, in one pinning mode, in one repetition. Runs are grouped
into blocks: one block is one lifetime of the balancer process (started, every workload of the
block run against it, stopped). Within a repetition every target gets one block, and the target
order rotates from one repetition to the next, so a slow phase of the shared machine does not
always hit the same target. Idle connections come first in a block, on a fresh process, so that
the RSS growth they cause is not hidden by memory that earlier workloads left in pools.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PIN_MODES = ("pinned", "unpinned")
TARGETS = ("direct", "l4lb", "l4lb-cubic", "l4lb-tfo", "l4lb-nogro", "haproxy", "haproxy-auto",
           "nginx", "l4lb-ref")
L4LB_VARIANTS = ("l4lb", "l4lb-cubic", "l4lb-tfo", "l4lb-nogro")  # the compiled data plane, by
#                                                                  configuration
CUBIC = "cubic"  # l4lb-cubic: the bulk service's congestion_control
PEERS = ("haproxy", "haproxy-auto", "nginx")
# TCP Fast Open towards the HTTP backend. HAProxy 2.6's `tfo` server keyword sent no SYN-data
# in mode tcp here (TcpExt.TCPFastOpenActive stayed 0, also with tcp-request inspect-delay),
# and nginx's stream proxy has no such option: there is no peer to pair it with.
TFO_TARGETS = ("l4lb-tfo",)
# udp_gro = false on the UDP service: how much of l4lb's UDP figure comes from GRO buffers.
# udpgen and udpecho send GSO packets, which a GRO socket on loopback receives whole (one
# buffer per packet); from a NIC, only datagrams that arrive in one receive poll merge. Run at
# the rate the target is defined at only, to keep the full run inside its budget.
NOGRO_RATE = 300_000
LB_CPU = 1  # the balancer's CPU in pinned mode
LOAD_CPU = 0  # load generators' and backends' CPU in pinned mode

TARGET_LABELS = {
    "direct": "direct (client straight to the backend)",
    "l4lb": "l4lb (1 worker, compiled data plane)",
    "l4lb-cubic": "l4lb with congestion_control = \"cubic\" on the bulk service (bulk only)",
    "l4lb-tfo": "l4lb with backend_fast_open + defer_accept on the HTTP service (new conns only)",
    "l4lb-nogro": "l4lb with udp_gro = false on the UDP service (UDP 300k/s only)",
    "haproxy": "HAProxy (mode tcp, 1 thread, splice forced both ways)",
    "haproxy-auto": "HAProxy (mode tcp, 1 thread, option splice-auto)",
    "nginx": "nginx stream (1 worker)",
    "l4lb-ref": "l4lb with L4LB_NO_EXTENSIONS=1 (harness smoke test only, not an l4lb figure)",
}


@dataclass(frozen=True)
class Workload:
    """One kind of traffic."""

    name: str  # key in results, e.g. "bulk8"
    kind: str  # bulk | newconn | keepalive | udp | idle
    label: str  # human description
    streams: int = 0  # bulk: parallel TCP streams; http: concurrent connections; udp: flows
    rate: int = 0  # udp: offered datagrams per second
    count: int = 0  # idle: connections held


def workloads(quick: bool, udp_rates: tuple[int, ...], idle_conns: int) -> tuple[Workload, ...]:
    """The workloads of PERF.md, in block order (idle first)."""
    out = [
        Workload("idle", "idle", f"{idle_conns:,} idle TCP connections held", count=idle_conns),
        Workload("bulk1", "bulk", "bulk TCP, iperf3, 1 stream", streams=1),
        Workload("bulk8", "bulk", "bulk TCP, iperf3, 8 streams", streams=8),
        Workload("newconn", "newconn", "new connection per request (wrk, Connection: close)",
                 streams=50),
        Workload("keepalive", "keepalive", "persistent request/response (wrk keep-alive)",
                 streams=50),
    ]
    for rate in udp_rates:
        out.append(Workload(f"udp{rate // 1000}k", "udp",
                            f"UDP echo, 8 flows, 64 B, {rate // 1000}k datagrams/s offered",
                            streams=8, rate=rate))
    return tuple(out)


def supports(target: str, wl: Workload) -> bool:
    """Whether the target can run the workload at all (l4lb UDP is checked at run time)."""
    if target == "l4lb-cubic":
        return wl.kind == "bulk"  # the key only changes how the balancer's sockets send
    if target in TFO_TARGETS:
        return wl.kind == "newconn"  # Fast Open only changes how a backend connection opens
    if target == "l4lb-nogro":
        return wl.kind == "udp" and wl.rate == NOGRO_RATE
    if wl.kind == "idle":
        return target != "direct"  # nothing sits in between: nothing to measure
    if wl.kind == "udp":
        return not target.startswith("haproxy")  # HAProxy has no UDP proxying
    return True


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    quick: bool = False  # the short mode (< 3 minutes)
    reps: int = 3  # repetitions (>= 3 for reported figures)
    pins: tuple[str, ...] = ("pinned", "unpinned")  # pinning modes, in order
    targets: tuple[str, ...] = ("direct", "l4lb", "l4lb-cubic", "l4lb-tfo", "l4lb-nogro",
                                "haproxy", "haproxy-auto", "nginx")
    only: tuple[str, ...] = ()  # restrict to these workload names (empty: all)
    bulk_seconds: int = 4  # iperf3 -t
    http_seconds: int = 4  # wrk -d
    udp_ms: int = 4000  # offered period of each UDP run
    udp_rates: tuple[int, ...] = (100_000, 300_000)  # offered datagrams/s
    idle_conns: int = 9000  # connections held in the idle workload
    table_backends: tuple[int, ...] = (10, 100, 1000)  # forwarding-table sizes to rebuild
    table_reps: int = 7  # rebuilds per size and scheduler
    close_ns: float = 350.0  # vCPU probe round trip below which a run counts as "close"
    wait_quiet: float = 0.0  # before a block, wait up to this long for other load to subside

    @classmethod
    def for_mode(cls, quick: bool) -> Options:
        """The defaults of --quick (under 3 minutes) or of the full run (under 15)."""
        if quick:
            return cls(quick=True, reps=3, pins=("pinned",),
                       targets=("direct", "l4lb", "haproxy", "nginx"), bulk_seconds=2,
                       http_seconds=2, udp_ms=2000, udp_rates=(300_000,), table_reps=5)
        return cls(bulk_seconds=4, http_seconds=4, udp_ms=4000)


@dataclass(frozen=True)
class Step:
    """One measured run."""

    pin: str  # pinned | unpinned
    rep: int  # 0-based repetition
    target: str  # one of TARGETS
    workload: Workload  # what traffic


@dataclass(frozen=True)
class Block:
    """One lifetime of the target's balancer process."""

    pin: str  # pinned | unpinned
    rep: int  # 0-based repetition
    target: str  # one of TARGETS
    steps: tuple[Step, ...]  # in execution order


@dataclass(frozen=True)
class Plan:
    """The whole invocation."""

    options: Options  # what it was made from
    workloads: tuple[Workload, ...]  # the workloads selected
    blocks: tuple[Block, ...]  # in execution order
    table_sizes: tuple[int, ...] = field(default=())  # table rebuild sizes (empty: skipped)

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every run, in order."""
        return tuple(s for b in self.blocks for s in b.steps)

    def estimate_seconds(self) -> float:
        """A rough duration of the whole invocation (for the plan print-out)."""
        o = self.options
        per_kind = {"bulk": o.bulk_seconds + 0.2, "newconn": o.http_seconds + 0.2,
                    "keepalive": o.http_seconds + 0.2, "udp": o.udp_ms / 1000 + 0.5,
                    "idle": 2.0}
        total = 0.0
        for block in self.blocks:
            total += 1.2 if block.target.startswith("l4lb") else 0.4
            total += o.wait_quiet
            total += sum(per_kind[s.workload.kind] + 0.05 for s in block.steps)
        total += 1.0 * len(self.options.pins)  # backends start/stop
        if self.table_sizes:
            total += 2.0 + 0.05 * o.table_reps * len(self.table_sizes) * 2
        return total


def rotated(targets: tuple[str, ...], rep: int) -> tuple[str, ...]:
    """The target order of one repetition: the list rotated left by rep."""
    if not targets:
        return targets
    k = rep % len(targets)
    return targets[k:] + targets[:k]


def make_plan(options: Options) -> Plan:
    """Every block and run of the invocation, in execution order."""
    wls = workloads(options.quick, options.udp_rates, options.idle_conns)
    if options.only:
        unknown = set(options.only) - {w.name for w in wls} - {"table"}
        if unknown:
            raise ValueError(f"unknown workload(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(w.name for w in wls)}, table")
        wls = tuple(w for w in wls if w.name in options.only)
    for t in options.targets:
        if t not in TARGETS:
            raise ValueError(f"unknown target {t!r}; known: {', '.join(TARGETS)}")
    for p in options.pins:
        if p not in PIN_MODES:
            raise ValueError(f"unknown pinning mode {p!r}; known: {', '.join(PIN_MODES)}")
    if options.reps < 1:
        raise ValueError("reps must be >= 1")
    blocks: list[Block] = []
    for pin in options.pins:
        for rep in range(options.reps):
            for target in rotated(options.targets, rep):
                steps = tuple(Step(pin, rep, target, w) for w in wls if supports(target, w))
                if steps:
                    blocks.append(Block(pin, rep, target, steps))
    want_table = not options.only or "table" in options.only
    sizes = options.table_backends if want_table else ()
    return Plan(options=options, workloads=wls, blocks=tuple(blocks), table_sizes=sizes)
