"""Counters of one worker, per service id and per backend id, and the sum that stats() returns.

Each worker owns its Counters and is the only thread that writes them; stats() asks every
worker for a copy (through the worker's command queue) and adds the copies up, so no lock is
needed. Counters are keyed by the stable ids of the table, so they survive table swaps.

What each counter means (the C core, src_ext/core/dp.h, keeps the same ones):
  service  conns_total       connections admitted (accepted and not rejected), counted at the
                             first pick: not an accept_proxy client ended before its header
           conns_active      admitted connections still open (connecting included)
           rejected          closed at once for capacity: the service's max_connections was
                             reached, or the first pick found every weighted backend at its
                             max_connections
           no_backend        closed with RST because no backend could be connected: no table,
                             no such service, none eligible, or every candidate failed
           bytes_to_backend  bytes written to backends
           bytes_to_client   bytes written to clients
           accept_errors     accept() failures other than "nothing to accept", and local
                             resource failures (no fd for the backend socket or for a pipe;
                             udp: no fd for a flow's upstream socket, the datagram is dropped)
  udp service datagrams_in   datagrams read from clients (dropped ones included)
           datagrams_out     datagrams sent to clients
           flows_created     flows opened (a flow moved off a DOWN backend counts again)
           flows_expired     flows ended, for any reason (idle, responses, refusal, moved, stop)
           flows_active      flows open now: flows_created - flows_expired
           drops_max_flows   datagrams that would have opened a flow beyond max_flows
           drops_no_backend  datagrams that would have opened a flow but found no table, no such
                             udp service or no eligible backend
           drops_truncated   datagrams larger than the receive buffer (either way), never sent
           drops_send        datagrams the kernel refused to send (full buffer, refusal, ...)
           drops_max_udp_flows  datagrams that would have opened a flow while the flows of all
                             services together were at the data plane's cap (set_udp_flow_cap)
  tcp service (accept_proxy)
           proxy_header_errors    clients reset before any backend was chosen: their PROXY
                             protocol header was missing, invalid, or cut short by their FIN
           proxy_header_timeouts  clients reset because the header was not complete in time
           proxy_direct      (with accept_proxy_from) clients outside every listed prefix,
                             relayed without a header
  tcp service (queue_timeout)
           queued_now        clients waiting now for a backend slot
           queued_total      clients that ever waited (each once)
           queue_timeouts    waiting clients reset at queue_timeout
           queue_wait_ms     ms waited by clients that left the queue, summed
  backend  conns_total       sessions whose connect to this backend succeeded
           conns_active      sessions assigned to it and still open (connecting or established)
           connect_failures  connects refused, unreachable or timed out; udp: flows ended by
                             an ICMP refusal (ECONNREFUSED on the upstream socket)
           bytes_to_backend, bytes_to_client  as above, for this backend
  udp backend datagrams_to_backend, datagrams_to_client  datagrams sent to / relayed from it
           flows_active      flows assigned to it now
           flows_total       flows ever assigned to it
  worker   connlog_dropped   connection-log records refused because the worker's queue was full
           listener_pauses   times its TCP listeners paused (out of fds, or at the descriptor
                             ceiling); stats() reports the sums of both as top-level keys
"""

from __future__ import annotations

from typing import Any

SERVICE_FIELDS = ("conns_total", "conns_active", "rejected", "no_backend",
                  "bytes_to_backend", "bytes_to_client", "accept_errors",
                  "datagrams_in", "datagrams_out", "flows_created", "flows_expired",
                  "flows_active", "drops_max_flows", "drops_no_backend", "drops_truncated",
                  "drops_send", "drops_max_udp_flows", "proxy_header_errors",
                  "proxy_header_timeouts", "proxy_direct", "queued_now", "queued_total",
                  "queue_timeouts", "queue_wait_ms")
BACKEND_FIELDS = ("conns_total", "conns_active", "connect_failures",
                  "bytes_to_backend", "bytes_to_client",
                  "datagrams_to_backend", "datagrams_to_client", "flows_active", "flows_total")


class Counters:
    """Per-id counter dicts of one worker."""

    def __init__(self) -> None:
        self.services: dict[int, dict[str, int]] = {}  # service_id -> SERVICE_FIELDS
        self.backends: dict[int, dict[str, int]] = {}  # backend_id -> BACKEND_FIELDS
        self.splice_fallbacks = 0  # relay directions that had to copy instead of splice
        self.connlog_dropped = 0  # connection-log records refused: the queue was full
        self.listener_pauses = 0  # times the TCP listeners paused: out of fds, or at the
        #                           descriptor ceiling (stats() reports the sum)
        self.sockbuf_errors: dict[int, int] = {}  # service_id -> backend sockets that refused
        #                     one of its buffer sizes (each refused option counts)

    def service(self, service_id: int) -> dict[str, int]:
        """The counters of one service, created at zero on first use."""
        found = self.services.get(service_id)
        if found is None:
            found = self.services[service_id] = dict.fromkeys(SERVICE_FIELDS, 0)
        return found

    def backend(self, backend_id: int) -> dict[str, int]:
        """The counters of one backend, created at zero on first use."""
        found = self.backends.get(backend_id)
        if found is None:
            found = self.backends[backend_id] = dict.fromkeys(BACKEND_FIELDS, 0)
        return found

    def copy(self) -> Counters:
        """An independent copy (taken on the worker's own thread)."""
        other = Counters()
        other.services = {k: dict(v) for k, v in self.services.items()}
        other.backends = {k: dict(v) for k, v in self.backends.items()}
        other.splice_fallbacks = self.splice_fallbacks
        other.connlog_dropped = self.connlog_dropped
        other.listener_pauses = self.listener_pauses
        other.sockbuf_errors = dict(self.sockbuf_errors)
        return other


def sum_counters(parts: list[Counters], generation: int) -> dict[str, Any]:
    """The stats() dict: every worker's counters added up."""
    services: dict[int, dict[str, int]] = {}
    backends: dict[int, dict[str, int]] = {}
    for part in parts:
        for sid, values in part.services.items():
            into = services.setdefault(sid, dict.fromkeys(SERVICE_FIELDS, 0))
            for key, value in values.items():
                into[key] += value
        for bid, values in part.backends.items():
            into = backends.setdefault(bid, dict.fromkeys(BACKEND_FIELDS, 0))
            for key, value in values.items():
                into[key] += value
    return {"generation": generation, "services": services, "backends": backends,
            "connlog_dropped": sum(part.connlog_dropped for part in parts),
            "listener_pauses": sum(part.listener_pauses for part in parts)}
