"""l4lb.health.fairslots: the bound, answering agents before failing ones, services in turn,
arrival order within a service, and cancellation (a waiter leaves, a slot handed to a waiter
cancelled at that moment goes on). Plain tasks on a loop, no clock."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from l4lb.health.fairslots import FairSlots


async def spin() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run_order(size: int, waiters: list[tuple[str, Hashable, bool]]) -> list[str]:
    """Every slot is held; the waiters queue in this order; then the holders release one at
    a time. Returns the order the waiters got their slot."""
    async def go() -> list[str]:
        slots = FairSlots(size)
        for _ in range(size):
            await slots.acquire("holder")
        got: list[str] = []

        async def wait(name: str, group: Hashable, urgent: bool) -> None:
            await slots.acquire(group, urgent)
            got.append(name)

        tasks = []
        for name, group, urgent in waiters:
            tasks.append(asyncio.create_task(wait(name, group, urgent)))
            await spin()
        assert got == [] and slots.waiting() == len(waiters)
        for _ in waiters:
            slots.release()
            await spin()
        await asyncio.gather(*tasks)
        return got
    return asyncio.run(go())


def test_answering_agents_before_failing_ones_services_in_turn() -> None:
    order = run_order(1, [
        ("hang1", "a", False), ("hang2", "a", False),
        ("a1", "a", True), ("a2", "a", True), ("a3", "a", True),
        ("b1", "b", True), ("c1", "c", True), ("b2", "b", True),
    ])
    # the urgent class first, round robin a, b, c, a, b, a; then the failing ones
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3", "hang1", "hang2"]


def test_a_single_fifo_when_all_are_alike() -> None:
    assert run_order(2, [(str(i), "a", True) for i in range(5)]) == [str(i) for i in range(5)]


def test_the_bound_and_the_context_manager() -> None:
    async def go() -> None:
        slots = FairSlots(2)
        inside, peak = 0, 0

        async def poll() -> None:
            nonlocal inside, peak
            async with slots.slot("s"):
                inside += 1
                peak = max(peak, inside)
                await spin()
                inside -= 1
        await asyncio.gather(*(poll() for _ in range(10)))
        assert peak == 2 and slots.free == 2 and slots.waiting() == 0
    asyncio.run(go())
    with pytest.raises(ValueError):
        FairSlots(0)


def test_cancelled_waiters_leave_and_hand_on_their_slot() -> None:
    async def go() -> None:
        slots = FairSlots(1)
        await slots.acquire("holder")
        first = asyncio.create_task(slots.acquire("a"))
        second = asyncio.create_task(slots.acquire("b"))
        await spin()
        first.cancel()  # waiting: it leaves its queue
        await spin()
        assert slots.waiting() == 1
        slots.release()  # to `second`...
        second.cancel()  # ...cancelled in the same instant: the slot must not be lost
        await spin()
        assert second.cancelled() and slots.free == 1 and slots.waiting() == 0
    asyncio.run(go())
