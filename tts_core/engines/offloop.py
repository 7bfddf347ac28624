"""Running blocking inference off the event loop, with bounded concurrency and prompt cancellation.

Engines such as Piper (onnxruntime) and in-process PyTorch models block while they compute. Each
``next()`` of their chunk generator runs in a worker thread; a semaphore bounds how many utterances
compute at once. When the consumer goes away, the chunk in flight is allowed to finish in its
thread (a running kernel cannot be interrupted), no further chunk is started, and the slot is
released the moment that thread returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import math
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from enum import Enum
from typing import Final, TypeAlias, TypeVar

T = TypeVar("T")


class Done(Enum):
    """What ``next_or_done`` answers once a generator is exhausted (a sentinel with its own type)."""

    DONE = "done"


DONE: Final = Done.DONE


def next_or_done(gen: Iterator[T]) -> T | Done:
    """``next(gen, DONE)``: one step of a blocking generator, run in a worker thread."""
    return next(gen, DONE)


Step: TypeAlias = "concurrent.futures.Future[Iterator[T]] | concurrent.futures.Future[T | Done]"
"""The job in flight for a generator: its factory call, or one of its steps."""


class OffloopRunner:
    """A thread pool plus a slot count for one engine."""

    def __init__(self, max_concurrency: int, name: str = "engine") -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.max_concurrency = max_concurrency
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrency, thread_name_prefix=f"{name}-infer"
        )
        # Slots are counted on the event loop side and released from the worker thread through
        # call_soon_threadsafe, so a waiter never blocks the loop on a thread primitive.
        self._slots: PrioritySlots | None = None
        self._busy = 0
        self._lock = threading.Lock()

    @property
    def busy(self) -> int:
        """Slots held, including by a chunk still finishing after its consumer was cancelled."""
        return self._busy

    async def run(self, fn: Callable[[], T]) -> T:
        """Run one blocking call in the pool (for loading and one-shot work)."""
        return await asyncio.wrap_future(self._executor.submit(fn))

    async def iterate(
        self, factory: Callable[[threading.Event], Iterator[T]], *,
        deadline: float | Callable[[], float | None] | None = None,
    ) -> AsyncGenerator[T, None]:
        """Yield items of ``factory(cancel_event)``, computing each in a worker thread.

        When slots are contended, the waiter with the earliest ``deadline`` (monotonic time by which
        its audio is needed; default now) gets the next free slot. A callable deadline is asked
        again whenever a slot frees (a pre-render a caller starts following becomes urgent), and a
        background request (deadline +inf) steps aside between two items for any live waiter.
        """
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = PrioritySlots(self.max_concurrency)
        slots = self._slots
        priority = slot_priority(deadline)
        await slots.acquire(priority)
        with self._lock:
            self._busy += 1
        holding = True
        cancel = threading.Event()
        gen: Iterator[T] | None = None
        pending: Step[T] | None = None

        def release() -> None:
            with self._lock:
                self._busy -= 1
            try:
                loop.call_soon_threadsafe(slots.release)
            except RuntimeError:  # loop already closed at shutdown: nobody is waiting
                pass

        try:
            started = self._executor.submit(factory, cancel)
            pending = started
            gen = await asyncio.wrap_future(started)
            while True:
                step = self._executor.submit(next_or_done, gen)
                pending = step
                item = await asyncio.wrap_future(step)
                if item is DONE:
                    break
                yield item
                if slots.outranked(priority):  # no chunk in flight: hand the slot over, queue again
                    holding = False
                    with self._lock:
                        self._busy -= 1
                    slots.release()
                    await slots.acquire(priority)
                    with self._lock:
                        self._busy += 1
                    holding = True
        finally:
            cancel.set()
            if not holding:  # cancelled while queueing again: no chunk in flight, no slot held
                _close_generator(gen)
            elif pending is not None and not pending.done():
                # A running kernel cannot be interrupted: let the chunk in flight finish in its
                # thread, start no other, and free the slot the moment the thread returns.
                def finish(fut: Step[T], gen: object = gen) -> None:
                    _close_generator(gen if gen is not None else _result_or_none(fut))
                    release()

                pending.add_done_callback(finish)
            else:
                _close_generator(gen)
                release()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def slot_priority(deadline: float | Callable[[], float | None] | None
                  ) -> float | Callable[[], float]:
    """A PrioritySlots priority for a request's deadline (None, or a callable answering None,
    means "needed now")."""
    if deadline is None:
        return time.monotonic()
    if callable(deadline):
        def current(ask: Callable[[], float | None] = deadline) -> float:
            value = ask()
            return time.monotonic() if value is None else value

        return current
    return deadline


class PrioritySlots:
    """A counting semaphore that serves waiters by priority (smallest first, then arrival order).

    Why not asyncio.Semaphore: its FIFO order hands an engine slot to a call that still has seconds
    of audio queued while another call's caller is about to hear silence. Ordering by the time each
    call's buffered audio runs out turns the same engine capacity into fewer underruns.

    A priority may be a callable, asked each time a slot frees: a background pre-render waits at
    +inf (it takes only a slot no live utterance wants) until a call starts following it, and from
    then on competes with that call's deadline. Waiters are few (one per request in flight), so a
    scan per release costs less than keeping a heap of changing keys in order.
    """

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiters: list[tuple[float | Callable[[], float], int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, priority: float | Callable[[], float]) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (priority, next(self._order), granted)
        self._waiters.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # the slot arrived just as we were cancelled: pass it on
            elif entry in self._waiters:
                self._waiters.remove(entry)
            raise

    def outranked(self, priority: float | Callable[[], float]) -> bool:
        """Whether a holder of ``priority`` that is background work (now +inf) should hand its
        slot to a waiter with a finite priority at the next point it can (between two chunks).
        Live holders never step aside: a running utterance is not preempted by another call."""
        if not self._waiters:
            return False
        mine = priority() if callable(priority) else priority
        return math.isinf(mine) and any(not math.isinf(self._key(i)[0])
                                        for i in range(len(self._waiters)))

    def release(self) -> None:
        while self._waiters:
            best = min(range(len(self._waiters)), key=self._key)
            _, _, granted = self._waiters.pop(best)
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1

    def _key(self, index: int) -> tuple[float, int]:
        priority, order, _ = self._waiters[index]
        return (priority() if callable(priority) else priority, order)


def _close_generator(gen: object) -> None:
    close = getattr(gen, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # closing a failed generator must not mask the original error
            pass


def _result_or_none(fut: Step[T]) -> object:
    try:
        result = fut.result()
    except BaseException:
        return None
    return result if hasattr(result, "close") else None
