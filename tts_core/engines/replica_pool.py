"""Model replicas checked out one synthesis at a time, each driven from its own thread.

Why not ``OffloopRunner``: a stateful PyTorch model needs two guarantees a shared thread pool does
not give.

* **One synthesis per replica.** Chatterbox keeps the voice conditioning as mutable state on the
  model (``model.conds``); two utterances on one model at once would speak with each other's voice.
  A replica is checked out for a whole utterance and only then handed to the next waiter.
* **One thread per replica.** ``generate_stream`` runs inside ``torch.inference_mode()``, and grad
  mode is thread-local: resuming the generator on a different pool thread would run the rest of the
  utterance with autograd on (memory, speed) and restore the wrong thread's mode on exit. Every
  step of a replica's generator, and its closing, runs on that replica's single worker thread.

Waiters are served by deadline like ``PrioritySlots`` (the call whose buffered audio runs out first
goes first); a waiter may also ask for one particular replica (warmup runs on each in turn). When
the consumer goes away mid-utterance, the chunk in flight finishes on its thread (a running kernel
cannot be interrupted), the generator is closed on that same thread, and only then is the replica
handed on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tts_core.engines.offloop import DONE, Step, next_or_done

T = TypeVar("T")
ModelT = TypeVar("ModelT")
"""The model a replica holds (the engine's Protocol for it)."""
CondsT = TypeVar("CondsT")
"""The model's prepared voice conditioning."""


@dataclass(eq=False)
class Replica(Generic[ModelT, CondsT]):
    """One model copy on one device, with the thread that drives it."""

    index: int
    device: str
    model: ModelT | None = None
    executor: concurrent.futures.ThreadPoolExecutor = field(init=False)
    last_warmup_ms: float | None = None
    builtin_conds: CondsT | None = None
    info: dict[str, frozenset[str] | None] = field(default_factory=dict)
    """What the adapter learned about this model (its method signatures): per method, the keyword
    names it takes (None: it takes ``**kwargs``); a method it lacks maps to None as well."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held by the replica's thread for a whole synthesis: a pool bug becomes an error, not mixed voices."""

    def __post_init__(self) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"replica-{self.name}")

    @property
    def name(self) -> str:
        return f"{self.device}#{self.index}"


class ReplicaPool(Generic[ModelT, CondsT]):
    """Deadline-ordered, exclusive checkout of replicas."""

    def __init__(self, replicas: list[Replica[ModelT, CondsT]]) -> None:
        if not replicas:
            raise ValueError("a pool needs at least one replica")
        self.replicas = list(replicas)
        self._free: list[Replica[ModelT, CondsT]] = list(replicas)
        self._waiters: list[tuple[float, int, Replica[ModelT, CondsT] | None,
                                  asyncio.Future[Replica[ModelT, CondsT]]]] = []
        self._order = itertools.count()
        self._busy = 0
        self._busy_lock = threading.Lock()

    @property
    def busy(self) -> int:
        """Replicas checked out, including one still finishing a chunk for a consumer that left."""
        return self._busy

    async def run(self, replica: Replica[ModelT, CondsT], fn: Callable[[], T]) -> T:
        """Run a blocking call on the replica's thread (loading); no checkout."""
        return await asyncio.wrap_future(replica.executor.submit(fn))

    # ---- checkout --------------------------------------------------------------------------------
    async def acquire(self, priority: float, want: Replica[ModelT, CondsT] | None = None
                      ) -> Replica[ModelT, CondsT]:
        """A free replica (``want`` if given), waiting by ``priority`` (smaller first)."""
        replica = self._take_free(want)
        if replica is None:
            granted: asyncio.Future[Replica[ModelT, CondsT]] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (priority, next(self._order), want, granted))
            try:
                replica = await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self.release(granted.result())  # it arrived as we were cancelled: pass it on
                raise
        with self._busy_lock:
            self._busy += 1
        return replica

    def _take_free(self, want: Replica[ModelT, CondsT] | None) -> Replica[ModelT, CondsT] | None:
        if want is not None:
            if want in self._free:
                self._free.remove(want)
                return want
            return None
        if not self._free:
            return None
        # Spread work over devices: the free replica whose device is least busy.
        in_use: dict[str, int] = {}
        for r in self.replicas:
            if r not in self._free:
                in_use[r.device] = in_use.get(r.device, 0) + 1
        best = min(self._free, key=lambda r: in_use.get(r.device, 0))
        self._free.remove(best)
        return best

    def release(self, replica: Replica[ModelT, CondsT]) -> None:
        """Hand the replica to the most urgent waiter that can take it (event loop thread only)."""
        for entry in sorted(self._waiters):
            _, _, want, granted = entry
            if granted.done():
                self._waiters.remove(entry)
                continue
            if want is None or want is replica:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
                granted.set_result(replica)
                return
        heapq.heapify(self._waiters)
        self._free.append(replica)

    def _checkin(self, replica: Replica[ModelT, CondsT]) -> None:
        with self._busy_lock:
            self._busy -= 1
        self.release(replica)

    # ---- streaming ---------------------------------------------------------------------------------
    async def iterate(
        self,
        factory: Callable[[Replica[ModelT, CondsT], threading.Event], Iterator[T]],
        *,
        deadline: float | None = None,
        replica: Replica[ModelT, CondsT] | None = None,
    ) -> AsyncGenerator[T, None]:
        """Yield the items of ``factory(replica, cancel_event)``, every step on the replica's thread."""
        loop = asyncio.get_running_loop()
        rep = await self.acquire(time.monotonic() if deadline is None else deadline, replica)
        cancel = threading.Event()
        gen: Iterator[T] | None = None
        pending: Step[T] | None = None

        def checkin(_: object = None) -> None:
            try:
                loop.call_soon_threadsafe(self._checkin, rep)
            except RuntimeError:  # loop closed at shutdown: nobody waits any more
                pass

        try:
            started = rep.executor.submit(factory, rep, cancel)
            pending = started
            gen = await asyncio.wrap_future(started)
            while True:
                step = rep.executor.submit(next_or_done, gen)
                pending = step
                item = await asyncio.wrap_future(step)
                if item is DONE:
                    break
                yield item
        finally:
            cancel.set()
            if _finished(pending):
                self._checkin(rep)  # nothing in flight, nothing to close: free it now
            else:
                self._close_then_checkin(rep, gen, pending, checkin)

    @staticmethod
    def _close_then_checkin(rep: Replica[ModelT, CondsT], gen: Iterator[T] | None,
                            pending: Step[T] | None,
                            checkin: Callable[..., None]) -> None:
        # The replica's single thread runs jobs in order: this close runs after the chunk in
        # flight (if any), on the thread the generator started on, then the replica is free.
        try:
            closing = rep.executor.submit(_close, gen, pending)
        except RuntimeError:  # executor shut down (engine closed)
            checkin()
        else:
            closing.add_done_callback(checkin)

    def shutdown(self) -> None:
        for replica in self.replicas:
            replica.executor.shutdown(wait=False, cancel_futures=True)


def _finished(pending: Step[T] | None) -> bool:
    """The last job ended the generator (exhausted or raised), or the factory itself failed."""
    if pending is None or not pending.done() or pending.cancelled():
        return False
    return pending.exception() is not None or pending.result() is DONE


def _close(gen: object, pending: Step[T] | None) -> None:
    if gen is None and pending is not None and pending.done() and not pending.cancelled():
        if pending.exception() is None:
            gen = pending.result()  # the factory finished after its consumer left
    close = getattr(gen, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # closing a failed generator must not mask the original error
            pass


__all__ = ["Replica", "ReplicaPool"]
