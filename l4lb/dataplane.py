"""Choose the data plane: the compiled C module, or the pure-Python reference when asked for.

Both implement the `DataplaneAPI` protocol below; it is the whole boundary between the planes.
What crosses it is data only: listener fds, table blobs (docs/forwarding-table.md), and
snapshots of counters and sessions. No Python callback ever runs on a data-plane thread.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any, Protocol, overload

NO_EXTENSIONS_ENV = "L4LB_NO_EXTENSIONS"


class DataplaneUnavailable(RuntimeError):
    """The compiled data plane is missing and the reference one was not asked for."""


class DataplaneAPI(Protocol):
    """What `l4lb._dataplane.Dataplane` and `l4lb.refdp.Dataplane` both provide.

    Construction: `Dataplane(workers: int)` with workers >= 1. Nothing runs until `start()`.

    stats() returns:
        {"generation": int,
         "services": {service_id: {"conns_total", "conns_active", "rejected", "no_backend",
                                   "bytes_to_backend", "bytes_to_client", "accept_errors"}},
         "backends": {backend_id: {"conns_total", "conns_active", "connect_failures",
                                   "bytes_to_backend", "bytes_to_client"}}}
    with every value an int; ids that never saw traffic may be absent (the C module returns
    every key, TCP and UDP, in every dict it returns; the reference only those it counts).

    UDP services (protocol 1 in the table) get bound, nonblocking SOCK_DGRAM sockets through
    add_listener (the data plane sets IP_PKTINFO / IPV6_RECVPKTINFO itself on a wildcard
    address); their counters add, per service: datagrams_in, datagrams_out, flows_created,
    flows_expired (ended for any reason), flows_active, drops_max_flows, drops_no_backend,
    drops_truncated, drops_send, drops_max_udp_flows (the cap of set_udp_flow_cap); per
    backend: datagrams_to_backend, datagrams_to_client,
    flows_active, flows_total (bytes_* as for TCP; ICMP refusals count as connect_failures).
    A UDP socket must be bound (and nonblocking) or add_listener refuses it. On stop, UDP flows
    keep relaying replies until each has been idle for 250 ms or the deadline passes.
    flows() returns one dict per UDP flow: {"service_id", "backend_id", "client": (host, port),
    "started", "last_seen", and datagrams and bytes each way}.

    sessions() returns a list of dicts, one per open TCP session:
        {"service_id": int, "backend_id": int (-1 while none is chosen),
         "client": (host: str, port: int), "started": float (unix time),
         "bytes_to_backend": int, "bytes_to_client": int,
         "state": "connecting" | "established" | "half_closed",
         "peer": (host: str, port: int) | None}
    On a service with accept_proxy (set_accept_proxy) "client" is the address the client's
    PROXY protocol header named (the connection's own until the header is read, and for a
    LOCAL / UNKNOWN header), "peer" the connection's real peer (the balancer in front); "peer"
    is None on other services. A session waiting for its header is "connecting". TCP services
    count, per service, proxy_header_errors (clients reset before any backend was chosen: the
    header was missing, invalid or cut short by their FIN) and proxy_header_timeouts (not
    complete within the timeout).
    stats() also has the top-level key "connlog_dropped": int (connection-log records refused
    because a worker's ring was full, since the data plane was made).

    Connection log (off by default; set_connection_log). While on, every TCP session and every
    UDP flow that ends leaves one record in its worker's bounded ring (a single-producer ring:
    the worker never waits, locks or allocates for it; a full ring refuses the new record and
    counts it in connlog_dropped). TCP clients refused before they had a session (no_backend,
    rejected) leave a record too, with backend_id -1 and duration 0; a UDP datagram that could
    not open a flow leaves none. closed_sessions() takes records:
        {"protocol": "tcp" | "udp", "service_id": int, "backend_id": int (-1: none chosen;
         tcp connect_failed: the last backend tried), "client": (host: str, port: int),
         "started": float (unix time of accept / first datagram),
         "duration": float (seconds, >= 0), "bytes_to_backend": int, "bytes_to_client": int,
         "reason": str, "peer": (host: str, port: int) | None (as in sessions()),
         "queued": float (seconds it waited in the service's queue, 0 when it never did)}
    Close reasons (CLOSE_REASONS_TCP / CLOSE_REASONS_UDP below; the most specific one):
      tcp  client_closed   the client's FIN went through first and the session ended normally
           backend_closed  the backend's FIN went through first
           client_reset    the client reset (or vanished), also while the backend connected
           backend_reset   the backend reset
           connect_failed  every connect attempt failed (refused, unreachable, timed out, or
                           the backend's source address did not bind)
           no_backend      no eligible backend (or no table / no such tcp service)
           rejected        max_connections of the service, or of every weighted backend
           idle_timeout    idle for the service's idle_timeout_ms
           shutdown        still open at the stop() deadline, or closed by
                           close_backend_sessions() once stop() has begun
           drain_timeout   closed by close_backend_sessions() (before any stop()): a drain's
                           deadline
           backend_down    closed by close_backend_sessions(reason="backend_down") (before any
                           stop()): the health checks took the backend DOWN
           error           anything else (a local resource failure: no fd, no memory)
           proxy_header    accept_proxy: the client's PROXY protocol header was missing,
                           invalid or cut short; no backend was chosen (backend_id -1)
           proxy_header_timeout  accept_proxy: the header was not complete in time
           queue_timeout   waited queue_timeout_ms in the service's queue (every eligible
                           backend at its max_connections) and got no slot; backend_id -1
      udp  idle_timeout    no datagram either way for idle_timeout_ms
           responses       the service's `responses` count of backend datagrams was reached
           refused         an ICMP error (port unreachable, ...) on the flow's upstream socket
           moved           its backend went DOWN (or left the service); the next datagram
                           opened a new flow; also a flow that close_backend_sessions(
                           reason="backend_down") ended
           listener_gone   its listener was removed
           shutdown        ended by stop() (idle for 250 ms while stopping, or the deadline),
                           or by close_backend_sessions() once stop() has begun
           drain_timeout   ended by close_backend_sessions() (before any stop())
           error           anything else
    """

    workers: int

    def start(self) -> None:
        """Start the worker threads (each with its own poller)."""

    def add_listener(self, service_id: int, fd: int, worker: int) -> None:
        """Give a nonblocking socket (listening TCP, or bound UDP) to one worker.

        The caller keeps ownership of the fd and must not close it before remove_listener().
        The data plane polls that fd itself and takes no descriptor of its own for it, so
        adding a listener never fails for want of descriptors and puts none at or above the
        descriptor ceiling (set_fd_ceiling), however full the process is (a reload during a
        flood); neither remove_listener() nor stop() closes it.
        """

    def remove_listener(self, fd: int) -> None:
        """Stop accepting on fd; when this returns no worker polls it any more."""

    def publish(self, blob: bytes) -> int:
        """Validate and swap in a new forwarding table; returns its generation (1, 2, ...).

        Raises ValueError naming the first bad field; the old table then stays live.
        """

    @property
    def generation(self) -> int:
        """Generation of the live table, 0 before the first publish."""

    def stats(self) -> dict[str, Any]:
        """Counter snapshot summed over all workers (see the class docstring)."""

    def sessions(self) -> list[dict[str, Any]]:
        """Snapshot of the open TCP sessions (see the class docstring)."""

    def flows(self) -> list[dict[str, Any]]:
        """Snapshot of the UDP flows (see the class docstring)."""

    @overload
    def close_backend_sessions(self, backend_ids: int, reason: str = "drain_timeout") -> int:
        ...

    @overload
    def close_backend_sessions(self, backend_ids: Iterable[int],
                               reason: str = "drain_timeout") -> dict[int, int]:
        ...

    def close_backend_sessions(self, backend_ids: int | Iterable[int],
                               reason: str = "drain_timeout") -> int | dict[int, int]:
        """Close every open TCP session whose current backend is one of backend_ids
        (connecting, established or half-closed): reset both sides (SO_LINGER 0), free it,
        count it like any other close (conns_active goes down). End every UDP flow mapped to
        one of them (the client's next datagram opens a new flow). `reason` is the close
        reason they get: "drain_timeout" (a drain's deadline) or "backend_down" (the health
        checks took the backend DOWN; UDP flows get "moved"); "shutdown" once stop() has
        begun. Returns once every worker has done it.

        backend_ids is one id (an int: returns how many sessions + flows were closed, summed
        over all workers) or several (any iterable of ints, duplicates allowed, up to
        MAX_CLOSE_IDS: returns {id: how many closed} for each distinct id given, 0 included;
        an empty one asks nothing of the workers and returns {}). Several ids cost ONE round
        trip and one scan of each worker's sessions and flows, not one per id: close together
        what goes together. Unknown/unused id: 0. An id outside 0..65535, too many ids, or
        another reason: ValueError naming it; a non-int id: TypeError."""

    def reset_counters(self, *, service_id: int | None = None,
                       backend_id: int | None = None) -> bool:
        """Zero every counter of one service id or one backend id (exactly one) that has left
        the table, so that a new service or backend given that id starts from 0. Returns False
        and changes nothing while the live table still has the id, a session or UDP flow of any
        worker still counts on it (from the pick on, connecting included), or (service) one of
        its listeners is still registered. TableBuilder.release() follows a True."""

    def set_connection_log(self, enabled: bool, capacity: int = 16384) -> None:
        """Turn the connection log on or off (see the class docstring). On: each worker keeps
        up to `capacity` records (1..4194304, rounded up to a power of two; ValueError
        outside); a new capacity keeps the queued records that fit (the rest count as
        dropped). Off: closing costs nothing extra, no record is kept, and nothing already
        queued is discarded. Before or after start()."""

    def closed_sessions(self, max: int = 65536) -> list[dict[str, Any]]:
        """Take (remove) up to `max` queued records, oldest first within each worker. Never
        waits for a worker; concurrent callers are serialised. max < 0: ValueError."""

    def set_congestion_control(self, service_id: int, name: str | None) -> None:
        """Congestion control of the backend leg of TCP service service_id: the data plane
        sets TCP_CONGESTION `name` on each backend socket before connect(); None: the system
        default (no setsockopt at all). Applies to connect attempts that start afterwards (open
        sessions keep theirs); the client leg is the caller's: accepted sockets inherit the
        algorithm of their listener. The name is tried on a scratch socket first, so a refused
        one changes nothing. Before or after start(). Not part of the table blob.
        ValueError: service_id outside 0..1023, or name not 1..15 characters of
        [A-Za-z0-9_-]; OSError ENOENT: no such algorithm on this kernel; PermissionError
        (EPERM): not in net.ipv4.tcp_allowed_congestion_control and no CAP_NET_ADMIN; OSError
        ENOSPC: more than 64 distinct names over the data plane's life."""

    def congestion_control(self, service_id: int) -> str | None:
        """The backend-leg algorithm set for service_id, None when none is."""

    def set_fast_open(self, service_id: int, on: bool) -> None:
        """TCP Fast Open towards the backends of TCP service service_id (default off). On:
        when a client's first bytes already wait in its socket as a connect attempt starts
        (the first and each retry), the data plane peeks them and sends them in the SYN
        (sendto MSG_FASTOPEN on a fresh socket) instead of calling connect(); they leave the
        client socket only once that attempt has connected (then exactly the bytes the SYN
        carried are discarded), so a refused or timed-out attempt retries with them intact
        and failures count as without fast open. Nothing waiting: a plain connect(). No
        cookie for the backend yet: a plain SYN that asks for one. Applies to connect attempts
        that start afterwards. Before or after start(). Not part of the table blob.
        ValueError: service_id outside 0..1023; TypeError: on not a bool."""

    def fast_open(self, service_id: int) -> bool:
        """Whether fast open towards the backends is on for service_id."""

    def set_proxy_protocol(self, service_id: int, version: int) -> None:
        """PROXY protocol towards the backends of TCP service service_id: version 1 or 2
        writes that header (l4lb.proxyproto; the client's address and port and the address
        and port it connected to) to each backend connection before any byte of the client's,
        0 (the default) none. With fast open the header leads the SYN's data. A header the
        connected socket does not take whole is a local failure (the session is reset and
        counted in accept_errors). Applies to connect attempts that start afterwards. Before
        or after start(). Not part of the table blob. ValueError: service_id outside 0..1023
        or version not 0, 1 or 2."""

    def proxy_protocol(self, service_id: int) -> int:
        """The PROXY protocol version set for service_id, 0 for none."""

    def set_accept_proxy(self, service_id: int, timeout_ms: int) -> None:
        """PROXY protocol from the clients of TCP service service_id: timeout_ms != 0 makes
        every connection accepted from now on start with a version 1 or 2 header (told apart by
        its first byte), complete within timeout_ms; 0 (the default) expects none. No backend
        is chosen before the header is read; only its bytes are consumed, so the client's own
        first bytes reach the backend (and a fast-open SYN) untouched. Its addresses (PROXY
        command, TCP over IPv4 / IPv6) become the session's client and the address it
        connected to; LOCAL, UNKNOWN and families without TCP addresses keep the connection's
        own. A bad header resets the client (proxy_header_errors, close reason proxy_header),
        a late one too (proxy_header_timeouts, proxy_header_timeout); a FIN before any byte
        closes it quietly (client_closed: a plain TCP check of the balancer in front). Clients
        accepted before the call keep what they had. Before or after start(). Not part of the
        table blob. ValueError: service_id outside 0..1023; TypeError / ValueError: timeout_ms
        not an int in 0..4294967295."""

    def accept_proxy(self, service_id: int) -> int:
        """The header timeout set for service_id in ms, 0 when it expects no header."""

    def set_socket_buffers(self, service_id: int, sndbuf: int, rcvbuf: int) -> None:
        """Socket buffers of the backend leg of TCP service service_id: the data plane sets
        SO_SNDBUF `sndbuf` and SO_RCVBUF `rcvbuf` bytes on each backend socket before
        connect() (the window scale is fixed by the SYN); 0 leaves that buffer to the kernel's
        autotuning (no setsockopt at all). The kernel doubles a size; with CAP_NET_ADMIN the
        data plane uses SO_SNDBUFFORCE / SO_RCVBUFFORCE, so net.core.wmem_max / rmem_max do
        not cap it. The sizes are tried on a scratch socket first, so a refused one changes
        nothing; a backend socket that refuses one later is counted (socket_buffer_errors) and
        keeps the kernel's buffers. Applies to connect attempts that start afterwards (open
        sessions keep theirs); the client leg is the caller's: accepted sockets inherit the
        buffers of their listener. Before or after start(). Not part of the table blob.
        ValueError: service_id outside 0..1023, or a size not 0 nor 4096..1073741823;
        TypeError: a size not an int; OSError: the scratch socket refused it."""

    def socket_buffers(self, service_id: int) -> tuple[int, int]:
        """(sndbuf, rcvbuf) set for service_id's backend leg; 0 where the kernel autotunes."""

    def socket_buffer_errors(self, service_id: int) -> int:
        """Backend sockets of service_id that refused one of its buffer sizes (each refused
        option counts); zeroed with the service's counters (reset_counters)."""

    def set_udp_gro(self, service_id: int, on: bool) -> None:
        """GRO buffers for UDP service service_id (on by default): the data plane sets
        UDP_GRO on the service's listeners (now, and on those added later) and on the upstream
        socket of each later flow without `responses`, so that the kernel may hand it several
        datagrams of one sender in one read, which it relays as one GSO run with the same
        boundaries. Off: UDP_GRO off on the listeners; open flows keep what they have. A data
        plane (or kernel) that reads datagram by datagram accepts the call and stays as it is.
        Before or after start(). Not part of the table blob. ValueError: service_id outside
        0..1023; TypeError: on not a bool; OSError: a listener refused the option."""

    def udp_gro(self, service_id: int) -> bool:
        """Whether service_id's UDP sockets get GRO buffers (switched on, and the data plane
        and kernel use them)."""

    def set_udp_flow_cap(self, cap: int) -> None:
        """At most `cap` UDP flows open at once, all services and workers together (0, the
        default: no cap). Each flow holds a file descriptor; the cap keeps a flood of new UDP
        source ports from taking every descriptor the TCP relay needs. A datagram that would
        open one more flow is dropped and counted in its service's drops_max_udp_flows; open
        flows are never closed by it. Before or after start(). TypeError: not an int;
        ValueError: outside 0..4294967295."""

    def set_fd_ceiling(self, ceiling: int) -> None:
        """Leave the descriptors numbered `ceiling` and up to the rest of the process (the
        control plane: control socket, metrics, health probes, log files); 0 (the default):
        none. The kernel hands out the lowest free number, so a new descriptor at or above it
        means the process is nearly full: the data plane then acts as when it is out of
        descriptors (listeners pause, a pipe or UDP flow socket up there is closed again), and
        keeps sockets above it only for a session it has already accepted. Any time.
        TypeError: not an int; ValueError: outside 0..4294967295."""

    def fd_ceiling(self) -> int:
        """The descriptor ceiling set by set_fd_ceiling (0: none)."""

    def udp_flows(self) -> tuple[int, int]:
        """(cap, open): the cap set by set_udp_flow_cap (0: none) and the UDP flows open now,
        all services together."""

    def stop(self, timeout: float) -> None:
        """Stop accepting, let sessions finish for up to `timeout` seconds, close the rest,
        join the workers. Idempotent."""


CC_NAME_MAX = 15  # longest congestion control name (TCP_CA_NAME_MAX is 16 with the NUL)
CC_NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{CC_NAME_MAX}}}")  # what set_congestion_control takes


SOCKBUF_MIN = 4096  # smallest size set_socket_buffers takes (0 = the kernel's autotuning)
SOCKBUF_MAX = 2**30 - 1  # largest: the kernel doubles a size into an int


def check_u32(what: str, value: object) -> int:
    """`value` as a count or limit a data plane takes (set_udp_flow_cap, set_fd_ceiling): an
    int in 0..4294967295, else TypeError / ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what} {value} out of range 0..4294967295")
    return value


def congestion_control_name_ok(name: str) -> bool:
    """True when `name` has the form of a Linux congestion control name (whether this
    kernel has it is another question)."""
    return CC_NAME.fullmatch(name) is not None


CLOSE_REASONS_TCP = ("client_closed", "backend_closed", "client_reset", "backend_reset",
                     "connect_failed", "no_backend", "rejected", "idle_timeout", "shutdown",
                     "drain_timeout", "backend_down", "error", "proxy_header",
                     "proxy_header_timeout", "queue_timeout")
CLOSE_REASONS_UDP = ("idle_timeout", "responses", "refused", "moved", "listener_gone",
                     "shutdown", "drain_timeout", "error")


CLOSE_BACKEND_REASONS = ("drain_timeout", "backend_down")  # what close_backend_sessions takes
MAX_BACKEND_ID = 65535  # as the C core's DP_MAX_BACKENDS - 1
MAX_CLOSE_IDS = 65536  # ids one close_backend_sessions() call takes (C: DP_CLOSE_MAX_IDS)


def check_backend_ids(backend_ids: object) -> tuple[list[int], bool]:
    """close_backend_sessions()'s `backend_ids` as (the ids, in the order given, True when it
    was the one-int form); ValueError for an id out of range or more than MAX_CLOSE_IDS ids,
    TypeError for what is neither an int nor an iterable of ints."""
    if isinstance(backend_ids, int) and not isinstance(backend_ids, bool):
        ids, single = [backend_ids], True
    elif isinstance(backend_ids, (str, bytes, bytearray, bool)) or not isinstance(
            backend_ids, Iterable):
        raise TypeError("backend_ids must be an int or an iterable of ints, not "
                        f"{type(backend_ids).__name__}")
    else:
        ids, single = list(backend_ids), False
    if len(ids) > MAX_CLOSE_IDS:
        raise ValueError(f"backend_ids: {len(ids)} ids, at most {MAX_CLOSE_IDS} in one call")
    for bid in ids:
        if isinstance(bid, bool) or not isinstance(bid, int):
            raise TypeError(f"backend_id must be an int, not {type(bid).__name__}")
        if not 0 <= bid <= MAX_BACKEND_ID:
            raise ValueError(f"backend_id {bid} out of range 0..{MAX_BACKEND_ID}")
    return ids, single


def check_close_backend_reason(reason: object) -> str:
    """`reason` as close_backend_sessions() takes it (CLOSE_BACKEND_REASONS), else ValueError."""
    if not isinstance(reason, str) or reason not in CLOSE_BACKEND_REASONS:
        raise ValueError(f"reason {reason!r} is not one of {', '.join(CLOSE_BACKEND_REASONS)}")
    return reason


def reference_requested() -> bool:
    """True when L4LB_NO_EXTENSIONS asks for the pure-Python reference data plane."""
    return os.environ.get(NO_EXTENSIONS_ENV, "") not in ("", "0")


def compiled_available() -> bool:
    """True when the C extension was built and imports."""
    try:
        from l4lb import _dataplane  # noqa: F401
    except ImportError:
        return False
    return True


def load_dataplane_class() -> type[Any]:
    """Return the Dataplane class to use; never falls back silently.

    Raises DataplaneUnavailable with one line saying how to build the extension when the C module
    is missing and L4LB_NO_EXTENSIONS is not set.
    """
    if reference_requested():
        from l4lb.refdp import Dataplane as RefDataplane

        return RefDataplane
    try:
        from l4lb._dataplane import Dataplane as CDataplane
    except ImportError as exc:
        raise DataplaneUnavailable(
            "the compiled data plane l4lb._dataplane is not built "
            f"({exc}); build it with `pip install .` (needs gcc, Python headers and Cython 3), "
            f"or set {NO_EXTENSIONS_ENV}=1 to run the slow pure-Python reference"
        ) from exc
    cls: type[Any] = CDataplane
    return cls
