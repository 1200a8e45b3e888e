"""Poll the backends' agents over TCP on the asyncio loop (HAProxy's agent-check).

Each polled backend has one small task: it sleeps until its next poll (the first at a random
point of its first interval, then `interval` x a factor in [1 - JITTER, 1 + JITTER] after the
previous poll STARTED, never before it ended), takes one of `max_in_flight` slots (handed out
fairly, l4lb.health.fairslots: answering agents before ones whose last poll failed, the
services in turn, so agents that hang cannot slow the others down), connects to
the agent, writes `send` if set, reads one line (l4lb.health.agentreply.scan: at most MAX_LINE
bytes, partial reads joined), all within `timeout`, and closes. No thread, no resolver (the
address is a literal). The health checker has its own scheduler and slots, so slow or dead
agents never delay a health probe; the poller's work per poll is one connect and one read.

What happens with the result:

- a valid reply goes through l4lb.health.dynamic.apply_reply; when it changes the backend's
  `Dynamic`, `on_change(key, old, new, reply)` is called on the loop (the daemon logs the line
  and re-publishes the table);
- a malformed reply (unknown word, bad percentage, an over-long or unterminated line) changes
  nothing; it is counted (`errors`) and shown (`last_error`), and logged when its text differs
  from the previous error;
- a failure to reach the agent (refused, timeout, reset, closed without a byte) changes
  nothing either (reachability is the health check's job); it is counted (`failures`,
  `consecutive_failures`) and logged once when the agent stops answering and once when it
  answers again.

`add()` of a key that is already polled keeps its state (a reload) and applies the new target
and settings from the next poll on; `remove()` drops the state.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from l4lb.config.model import AgentSettings, Endpoint
from l4lb.health.agentreply import MAX_LINE, AgentReply, scan
from l4lb.health.checker import subject as key_subject
from l4lb.health.dynamic import NEUTRAL, Dynamic, apply_reply
from l4lb.health.fairslots import FairSlots

log = logging.getLogger("l4lb.health")

K = TypeVar("K", bound=Hashable)

JITTER = 0.1  # each interval is scaled by a random factor in [1 - JITTER, 1 + JITTER]
MAX_IN_FLIGHT = 256  # polls (sockets) at once, all agents together


def _group(key: Hashable) -> Hashable:
    """The service of a (service, backend) key, whose polls share slots fairly with other
    services' (l4lb.health.fairslots); the key itself otherwise."""
    if isinstance(key, tuple) and len(key) == 2:
        service: Hashable = key[0]
        return service
    return key


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    if isinstance(exc, OSError) and exc.errno is not None:
        text = os.strerror(exc.errno).lower()
        return f"connect failed: {text}" if exc.errno in (
            errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL) else text
    return str(exc) or type(exc).__name__


def format_target(host: str, port: int) -> str:
    """host:port, [v6]:port for IPv6: the target as views and log lines show it."""
    return str(Endpoint(host, port))


class _Agent(Generic[K]):
    """One polled backend."""

    def __init__(self, key: K, host: str, port: int, settings: AgentSettings,
                 source: str | None) -> None:
        self.key = key
        self.host = host  # the agent's address
        self.port = port
        self.settings = settings
        self.source = source  # bound before connecting (health.source); None: the kernel's
        self.state: Dynamic = NEUTRAL  # what the agent has said
        self.task: asyncio.Task[None] | None = None
        self.polls = 0
        self.replies = 0
        self.errors = 0  # malformed replies
        self.failures = 0  # no reply
        self.consecutive_failures = 0
        self.last_reply: str | None = None  # the last valid reply line
        self.last_reply_at: float | None = None  # unix time
        self.last_error: str | None = None  # the last failure or malformed reply, and when
        self.last_error_at: float | None = None
        self.last_ok = True  # the last poll got a valid reply (or none happened yet)
        self.up_since: float | None = None  # monotonic time its agent last took back a down


class AgentPoller(Generic[K]):
    """Agent checks for any number of backends on the running asyncio loop."""

    def __init__(self, on_change: Callable[[K, Dynamic, Dynamic, AgentReply], None], *,
                 max_in_flight: int = MAX_IN_FLIGHT, rng: random.Random | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._on_change = on_change
        self._max_in_flight = max_in_flight
        self._rng = rng if rng is not None else random.Random()
        self._agents: dict[K, _Agent[K]] = {}
        self._slots: FairSlots | None = None  # made by start()
        self._running = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin polling on the running loop (agents may be added before or after)."""
        if self._running:
            return
        self._running = True
        self._slots = FairSlots(self._max_in_flight)
        for agent in self._agents.values():
            self._launch(agent, first=True)

    def stop(self) -> None:
        """Cancel every poll; the state stays (start() polls again). Idempotent."""
        self._running = False
        for agent in self._agents.values():
            if agent.task is not None:
                agent.task.cancel()
                agent.task = None

    # -- agents ----------------------------------------------------------------------------

    def add(self, key: K, host: str, port: int, settings: AgentSettings,
            source: str | None = None) -> None:
        """Poll the agent of `key` at host:port, from `source` if set (an address of the
        host's family, port 0: the service's health.source, as its probes). An existing key
        keeps what its agent said; a changed target or settings take effect from its next
        poll."""
        agent = self._agents.get(key)
        if agent is not None:
            if (agent.host, agent.port, agent.settings, agent.source) == \
                    (host, port, settings, source):
                return
            agent.host, agent.port, agent.settings = host, port, settings
            agent.source = source
            if agent.task is not None:
                agent.task.cancel()
                agent.task = None
            if self._running:
                self._launch(agent, first=True)
            return
        agent = _Agent(key, host, port, settings, source)
        self._agents[key] = agent
        if self._running:
            self._launch(agent, first=True)

    def remove(self, key: K) -> None:
        """Stop polling `key` and forget what its agent said. Unknown keys are ignored."""
        agent = self._agents.pop(key, None)
        if agent is not None and agent.task is not None:
            agent.task.cancel()

    def keys(self) -> list[K]:
        return list(self._agents)

    def states(self) -> dict[K, Dynamic]:
        """What every polled agent has said (a fresh dict)."""
        return {key: a.state for key, a in self._agents.items()}

    def state(self, key: K) -> Dynamic:
        return self._agents[key].state

    def up_since(self, key: K) -> float | None:
        """Monotonic time the agent of `key` last said `up` (or `ready`) after a `down`,
        `fail` or `stopped`: the start of a slow-start ramp; None if it never did (KeyError if
        unknown)."""
        return self._agents[key].up_since

    def views(self) -> dict[K, dict[str, Any]]:
        """For display (control API `agent` of each backend; docs/control-api.md)."""
        out: dict[K, dict[str, Any]] = {}
        for key, a in self._agents.items():
            s = a.state
            out[key] = {
                "target": format_target(a.host, a.port),
                "last_reply": a.last_reply, "last_reply_at": a.last_reply_at,
                "weight_percent": s.percent, "admin": s.admin, "health": s.health,
                "reason": s.reason,
                "polls": a.polls, "replies": a.replies, "errors": a.errors,
                "failures": a.failures, "consecutive_failures": a.consecutive_failures,
                "last_error": a.last_error, "last_error_at": a.last_error_at,
            }
        return out

    # -- polling ---------------------------------------------------------------------------

    def _launch(self, agent: _Agent[K], first: bool) -> None:
        agent.task = asyncio.get_running_loop().create_task(
            self._run(agent, first), name=f"agent {key_subject(agent.key)}")

    def _next_delay(self, agent: _Agent[K]) -> float:
        factor = 1.0 - JITTER + 2.0 * JITTER * self._rng.random()
        return agent.settings.interval * factor

    async def _run(self, agent: _Agent[K], first: bool) -> None:
        loop = asyncio.get_running_loop()
        delay = self._rng.uniform(0, agent.settings.interval) if first else 0.0
        while True:
            await asyncio.sleep(delay)
            started = loop.time()
            slots = self._slots
            assert slots is not None
            async with slots.slot(_group(agent.key), urgent=agent.consecutive_failures == 0):
                data, problem = await self._poll(agent)
            if self._agents.get(agent.key) is not agent:
                return  # removed meanwhile
            self._account(agent, data, problem)
            delay = max(0.0, started + self._next_delay(agent) - loop.time())

    async def _poll(self, agent: _Agent[K]) -> tuple[bytes, str | None]:
        """One poll: (the bytes read, None) once scan() has a reply, or (what was read, the
        failure) when the agent could not be reached or gave no complete reply in time."""
        settings = agent.settings
        data = b""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(settings.timeout):
                reader, writer = await asyncio.open_connection(
                    agent.host, agent.port,
                    local_addr=(agent.source, 0) if agent.source is not None else None)
                if settings.send:
                    writer.write(settings.send)
                    await writer.drain()
                while True:
                    chunk = await reader.read(MAX_LINE - len(data))
                    data += chunk
                    if not chunk and not data:
                        return data, "closed without a reply"
                    if scan(data, closed=not chunk) is not None:
                        return data, None
        except TimeoutError:
            return data, ("timeout" if not data else
                          f"timeout after {len(data)} bytes without a line end")
        except OSError as exc:
            return data, _failure_reason(exc)
        finally:
            if writer is not None:
                writer.transport.abort()  # no lingering close: the reply is all we wanted

    def _account(self, agent: _Agent[K], data: bytes, problem: str | None) -> None:
        now = time.time()
        agent.polls += 1
        subject = f"backend {key_subject(agent.key)}"
        if problem is not None:
            agent.failures += 1
            agent.consecutive_failures += 1
            if agent.last_ok or agent.last_error != problem:
                log.warning("%s: agent %s not answering: %s (its state is kept)", subject,
                            format_target(agent.host, agent.port), problem)
            agent.last_error, agent.last_error_at, agent.last_ok = problem, now, False
            return
        reply = scan(data, closed=True)
        assert reply is not None
        if not reply.ok:
            agent.errors += 1
            agent.consecutive_failures = 0
            if agent.last_ok or agent.last_error != reply.error:
                log.warning("%s: agent reply ignored: %s: %r", subject, reply.error, reply.text)
            agent.last_error, agent.last_error_at, agent.last_ok = reply.error, now, False
            return
        if not agent.last_ok:
            log.info("%s: agent %s answers again", subject,
                     format_target(agent.host, agent.port))
        agent.replies += 1
        agent.consecutive_failures = 0
        agent.last_ok = True
        agent.last_reply, agent.last_reply_at = reply.text, now
        old = agent.state
        new = apply_reply(old, reply)
        if new != old:
            agent.state = new
            if old.health != "up" and new.health == "up":
                agent.up_since = time.monotonic()
            try:
                self._on_change(agent.key, old, new, reply)
            except Exception:  # the poller must keep running whatever the callback does
                log.exception("%s: agent change callback failed", subject)
