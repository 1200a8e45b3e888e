"""Hand out a bounded number of slots fairly: answering agents first, services in turn.

The agent poller (l4lb.health.agent) takes one slot per poll, so at most `size` sockets are
open at once. A single FIFO queue let agents that hang (each holds its slot for the whole
timeout) push every other poll back: 1,500 hanging agents with a 1 s timeout behind 256 slots
made healthy agents of another service wait seconds per poll. So a slot that frees goes to

1. a waiter whose agent answered its last poll (or has not been polled yet) before one whose
   agent did not (`urgent`): an agent that hangs waits for spare slots, an answering one only
   for the next slot to free;
2. within that class, to the services in turn (round robin over the groups with waiters),
   so an agent that starts hanging, while still in the first class, delays other services
   by at most one slot per service and round;
3. within a service, in the order of arrival.

A waiter that is cancelled leaves its queue, or gives back the slot it was just handed.
No clock, no sockets: the tests drive it with plain tasks.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class FairSlots:
    """At most `size` holders at once, handed out as the module docstring says."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._free = size
        # class (0: urgent, 1: not) -> group -> its waiters in arrival order
        self._waiting: tuple[OrderedDict[Hashable, deque[asyncio.Future[None]]], ...] = (
            OrderedDict(), OrderedDict())

    @property
    def free(self) -> int:
        return self._free

    def waiting(self) -> int:
        return sum(len(q) for cls in self._waiting for q in cls.values())

    async def acquire(self, group: Hashable, urgent: bool = True) -> None:
        if self._free > 0 and not self.waiting():
            self._free -= 1
            return
        queues = self._waiting[0 if urgent else 1]
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queues.setdefault(group, deque()).append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot in the same instant: pass it on
            else:
                queue = queues.get(group)
                if queue is not None and fut in queue:
                    queue.remove(fut)
                    if not queue:
                        del queues[group]
            raise

    def release(self) -> None:
        for queues in self._waiting:
            while queues:
                group, queue = next(iter(queues.items()))
                fut = queue.popleft()
                if queue:
                    queues.move_to_end(group)  # its next waiter after the other groups'
                else:
                    del queues[group]
                if not fut.done():
                    fut.set_result(None)
                    return
        self._free += 1

    @asynccontextmanager
    async def slot(self, group: Hashable, urgent: bool = True) -> AsyncIterator[None]:
        await self.acquire(group, urgent)
        try:
            yield
        finally:
            self.release()
