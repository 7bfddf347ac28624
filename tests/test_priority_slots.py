"""Engine slots go to the call whose audio runs out first, not to whoever asked first."""

from __future__ import annotations

import asyncio

from tts_core.engines.offloop import PrioritySlots


async def test_free_slots_are_taken_at_once() -> None:
    slots = PrioritySlots(2)
    await asyncio.wait_for(slots.acquire(5.0), 0.1)
    await asyncio.wait_for(slots.acquire(1.0), 0.1)


async def test_a_released_slot_goes_to_the_earliest_deadline() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(0.0)
    order: list[str] = []

    async def wait(name: str, deadline: float) -> None:
        await slots.acquire(deadline)
        order.append(name)

    tasks = [asyncio.create_task(wait("has 3 s queued", 3.0)),
             asyncio.create_task(wait("runs dry in 0.1 s", 0.1)),
             asyncio.create_task(wait("has 1 s queued", 1.0))]
    await asyncio.sleep(0)
    for _ in range(3):
        slots.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["runs dry in 0.1 s", "has 1 s queued", "has 3 s queued"]


async def test_a_cancelled_waiter_does_not_swallow_the_slot() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(0.0)
    first = asyncio.create_task(slots.acquire(0.0))
    second = asyncio.create_task(slots.acquire(1.0))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    slots.release()
    await asyncio.wait_for(second, 0.5)  # the slot skipped the cancelled waiter
