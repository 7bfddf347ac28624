"""Rendered phrases kept per (engine, voice, preset, text), so greetings and repeated prompts cost no
synthesis, and one rendering serves every call that asks for the same phrase at once.

Entries are whole utterances as the renderer's typed items (``tts_core/render.py``: each segment's
start with its text, its 160-byte μ-law frames, its end; the flushed and faded tail), compacted to
one frame batch per segment, in an LRU bounded by total bytes. Followers receive those same item
objects: nothing is copied per call. A phrase being rendered is
shared: every caller that asks for it while it renders follows the same rendering, piece by piece,
so a call that starts while its greeting is still being pre-rendered hears the first words as soon
as they exist, and a hundred IVR calls reaching the same prompt together cost one synthesis, not a
hundred. A rendering that every follower has left (barge-in, hang-up) is cancelled: nobody would
hear the rest, and the engine slot is worth more to the next request.

Pre-renders (the webhook's greeting, before any call listens) are background work, and a burst of
webhooks (a hundred calls ringing at once, or an attacker) must not take the engine from calls
already talking. So a pre-render:

* asks the engine for a slot at priority +inf (``deadline(key, idle=inf)``) while nobody follows it:
  it takes only a slot no live utterance wants;
* is admitted only ``max_prerenders`` at a time, with at most ``max_prerender_queue`` more waiting;
  beyond that it is skipped (counted), and the call renders its greeting live when it starts, with
  a live call's priority. This bounds the work and the memory a burst can claim;
* is cancelled when no call has followed it ``prerender_timeout_s`` after the webhook (the stream
  never came: its token was never redeemed);
* becomes live work the moment a call follows it: it leaves the pre-render queue and count at once,
  and its engine requests carry the follower's deadline from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

from tts_core.errors import UpstreamFailed
from tts_core.prerender_gate import PrerenderGate, PrerenderTicket
from tts_core.render import FrameBatch, RenderItem

Renderer = Callable[[], AsyncIterator[RenderItem]]
"""Yields one utterance's render items (segment starts, frame batches, segment ends)."""


class RenderingCancelled(UpstreamFailed, RuntimeError):
    """The shared rendering a follower waited on was cancelled (shutdown, or never admitted)."""


@dataclass(frozen=True)
class PhraseKey:
    engine: str
    voice_id: str
    preset: str
    text: str


@dataclass(frozen=True)
class _Phrase:
    items: tuple[RenderItem, ...]
    """Compacted: one ``FrameBatch`` between segment markers, so a hit is a few items, not hundreds."""
    size: int


@dataclass(eq=False)
class _Rendering:
    items: list[RenderItem] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    followers: int = 0
    deadlines: list[Callable[[], float | None]] = field(default_factory=list)
    prerender: PrerenderTicket | None = None
    """A background pre-render's place at the gate (``background`` until a call follows it)."""
    expiry: asyncio.TimerHandle | None = None

    async def run(self, render: Renderer) -> bool:
        """Render into ``items``, waking followers at each; True if it completed. A failure or a
        cancellation is kept in ``error`` for the followers (a cancellation is raised on too)."""
        try:
            items = render()
            try:
                async for item in items:
                    self.items.append(item)
                    self.changed.set()
            finally:
                await _aclose(items)
            return True
        except BaseException as exc:  # followers must learn of a failure or a cancellation
            self.error = exc if isinstance(exc, Exception) else RenderingCancelled("rendering cancelled")
            if not isinstance(exc, Exception):
                raise
            return False
        finally:
            self.finish()

    def finish(self, *, cancelled: bool = False) -> None:
        """No more items will come; ``cancelled``: unless it finished, it never ran to the end."""
        if not self.done:
            if cancelled and self.error is None:
                self.error = RenderingCancelled("rendering cancelled")
            self.done = True
            self.changed.set()

    async def follow(self) -> AsyncGenerator[RenderItem, None]:
        """Every item, those rendered so far at once and the rest as they come; then its error."""
        taken = 0
        while True:
            if taken < len(self.items):  # the rendering may move on while an item is taken
                taken += 1
                yield self.items[taken - 1]
                continue
            if self.error is not None:
                raise self.error
            if self.done:
                return
            self.changed.clear()
            await self.changed.wait()


class _PhraseStore:
    """Rendered phrases, least recently used first, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict[PhraseKey, _Phrase] = OrderedDict()

    def __contains__(self, key: PhraseKey) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def use(self, key: PhraseKey) -> tuple[RenderItem, ...] | None:
        """The phrase's items, now the most recently used; None if not stored."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.items

    def peek(self, key: PhraseKey) -> tuple[bytes, ...] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        return tuple(frame for item in entry.items if isinstance(item, FrameBatch) for frame in item.frames)

    def store(self, key: PhraseKey, items: list[RenderItem]) -> None:
        compacted = _compact(items)
        size = sum(len(f) for item in compacted if isinstance(item, FrameBatch) for f in item.frames)
        if size > self.max_bytes or size == 0:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self._entries[key] = _Phrase(compacted, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size
            self.evictions += 1


class PhraseCache:
    """Rendered phrases and renderings in progress, shared by every call (see the module doc)."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_text_chars: int = 1000, *,
                 max_prerenders: int = 1, max_prerender_queue: int = 16,
                 prerender_timeout_s: float = 15.0) -> None:
        self.max_text_chars = max_text_chars
        self.prerender_timeout_s = prerender_timeout_s
        self._gate = PrerenderGate(max_prerenders, max_prerender_queue)
        self.prerenders = 0
        self.prerender_skipped = 0
        self.prerender_expired = 0
        self._entries = _PhraseStore(max_bytes)
        self._inflight: dict[PhraseKey, _Rendering] = {}
        self.hits = 0
        self.misses = 0
        self.abandoned = 0

    @property
    def max_bytes(self) -> int:
        return self._entries.max_bytes

    def cacheable(self, text: str) -> bool:
        return 0 < len(text) <= self.max_text_chars and self.max_bytes > 0

    def peek(self, key: PhraseKey) -> tuple[bytes, ...] | None:
        """The frames if fully rendered, without waiting (not counted as a hit)."""
        return self._entries.peek(key)

    def rendering(self, key: PhraseKey) -> bool:
        return key in self._inflight

    def has(self, key: PhraseKey) -> bool:
        """Cached or being rendered."""
        return key in self._entries or key in self._inflight

    def start(self, key: PhraseKey, render: Renderer) -> bool:
        """Begin rendering ``key`` in the background unless it is cached or already rendering
        (the webhook's greeting pre-render). True if this call started it."""
        if key in self._entries or key in self._inflight:
            return False
        self.misses += 1
        state = _Rendering()
        self._inflight[key] = state
        state.task = asyncio.create_task(self._render(key, state, render),
                                         name=f"phrase:{key.text[:24]}")
        state.task.add_done_callback(lambda _: self._settle(key, state))
        return True

    def deadline(self, key: PhraseKey, idle: float | None = None) -> float | None:
        """When the rendering of ``key`` is needed: the most urgent of its followers' deadlines
        (None, "now", if any follower says so), or ``idle`` while no follower has one (a
        pre-render passes +inf)."""
        state = self._inflight.get(key)
        if state is None or not state.deadlines:
            return idle if state is None or state.followers == 0 else None
        values = [deadline() for deadline in state.deadlines]
        return None if None in values else min(v for v in values if v is not None)

    async def follow(
        self, key: PhraseKey, render: Renderer | None = None, *,
        deadline: Callable[[], float | None] | None = None,
    ) -> AsyncGenerator[RenderItem, None]:
        """The phrase item by item: from the cache, from a rendering in progress, or, given
        ``render``, from a rendering started now and shared with whoever asks next.

        Raises the renderer's error if it fails, and ``KeyError`` for an unknown phrase with no
        ``render``. Leaving early cancels the rendering once no one else follows it. ``deadline``
        says when this follower needs the audio; a shared rendering asks ``deadline(key)``.
        """
        stored = self._entries.use(key)
        if stored is not None:
            self.hits += 1
            for item in stored:
                yield item
            return
        state = self._inflight.get(key)
        if state is not None:
            self.hits += 1
        elif render is not None:
            self.start(key, render)
            state = self._inflight[key]
        else:
            raise KeyError(key)
        state.followers += 1
        if deadline is not None:
            state.deadlines.append(deadline)
        if state.prerender is not None and state.prerender.background:
            self._gate.promote(state.prerender)
        try:
            async with contextlib.aclosing(state.follow()) as items:
                async for item in items:
                    yield item
        finally:
            state.followers -= 1
            if deadline is not None:
                state.deadlines.remove(deadline)
            if state.followers == 0 and not state.done and state.task is not None:
                self._abandon(key, state)

    # ---- pre-renders --------------------------------------------------------------------------
    def prerender(self, key: PhraseKey,
                  render: Callable[[Callable[[], float | None]], AsyncIterator[RenderItem]]) -> bool:
        """Render ``key`` in the background for a call expected soon (the webhook's greeting).

        ``render(deadline)`` makes the renderer; it must pass ``deadline`` to the engine (+inf while
        nobody follows, the followers' deadline after). False if cached, already rendering, too
        long, or skipped because ``max_prerenders`` run and ``max_prerender_queue`` wait already.
        """
        if not self.cacheable(key.text) or key in self._entries or key in self._inflight:
            return False
        ticket = self._gate.ticket()
        if ticket is None:
            self.prerender_skipped += 1
            return False
        self.prerenders += 1
        self.misses += 1
        state = _Rendering(prerender=ticket)
        self._inflight[key] = state

        def deadline() -> float | None:
            return self.deadline(key, idle=math.inf) if self._inflight.get(key) is state else math.inf

        state.task = asyncio.create_task(self._prerender(key, state, ticket, lambda: render(deadline)),
                                         name=f"prerender:{key.text[:24]}")
        state.task.add_done_callback(lambda _: self._settle(key, state))
        state.expiry = asyncio.get_running_loop().call_later(self.prerender_timeout_s, self._expire,
                                                             key, state)
        return True

    async def _prerender(self, key: PhraseKey, state: _Rendering, ticket: PrerenderTicket,
                         render: Renderer) -> None:
        await self._gate.admit(ticket)
        try:
            await self._render(key, state, render)
        finally:
            self._gate.release(ticket)

    def _expire(self, key: PhraseKey, state: _Rendering) -> None:
        """No call came for this pre-render in time: stop spending the engine on it."""
        if state.followers == 0 and not state.done and state.task is not None \
                and self._inflight.get(key) is state:
            self.prerender_expired += 1
            self._abandon(key, state)

    def _abandon(self, key: PhraseKey, state: _Rendering) -> None:
        if self._inflight.get(key) is state:
            del self._inflight[key]  # whoever asks next starts afresh, not from a cancelled rendering
        self.abandoned += 1
        assert state.task is not None
        state.task.cancel()

    def _settle(self, key: PhraseKey, state: _Rendering) -> None:
        """Wake followers of a rendering cancelled before it ever ran (its own ``finally`` did not)."""
        if state.prerender is not None:
            self._gate.release(state.prerender)
        if state.expiry is not None:  # done: the timer must not keep its frames alive
            state.expiry.cancel()
            state.expiry = None
        state.finish(cancelled=True)
        if self._inflight.get(key) is state:
            del self._inflight[key]

    async def _render(self, key: PhraseKey, state: _Rendering, render: Renderer) -> None:
        try:
            if await state.run(render):
                self._entries.store(key, state.items)
        finally:
            if self._inflight.get(key) is state:
                del self._inflight[key]

    async def aclose(self) -> None:
        tasks = [s.task for s in self._inflight.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self._entries.bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self._entries.evictions,
            "abandoned": self.abandoned,
            "rendering": len(self._inflight),
            "prerenders": self.prerenders,
            "prerendering": self._gate.running,
            "prerender_queued": self._gate.queued,
            "prerender_skipped": self.prerender_skipped,
            "prerender_expired": self.prerender_expired,
        }


async def _aclose(items: AsyncIterator[RenderItem]) -> None:
    """Close a rendering now (an async generator's engine stream and slot are released at once,
    not whenever the generator is collected); a plain iterator has nothing to close."""
    if isinstance(items, AsyncGenerator):
        await items.aclose()


def _compact(items: list[RenderItem]) -> tuple[RenderItem, ...]:
    """``items`` with each run of frame batches merged into one (done once, when stored)."""
    out: list[RenderItem] = []
    frames: list[bytes] = []
    for item in items:
        if isinstance(item, FrameBatch):
            frames.extend(item.frames)
            continue
        if frames:
            out.append(FrameBatch(frames))
            frames = []
        out.append(item)
    if frames:
        out.append(FrameBatch(frames))
    return tuple(out)
