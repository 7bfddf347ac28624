"""Rendered phrases kept per (engine, voice, preset, text), so greetings and repeated prompts cost no
synthesis, and one rendering serves every call that asks for the same phrase at once.

Entries are whole utterances as 160-byte μ-law frames (already flushed and faded) with the frame
index where each text segment ends, in an LRU bounded by total bytes. A phrase being rendered is
shared: every caller that asks for it while it renders follows the same rendering, piece by piece,
so a call that starts while its greeting is still being pre-rendered hears the first words as soon
as they exist, and a hundred IVR calls reaching the same prompt together cost one synthesis, not a
hundred. A rendering that every follower has left (barge-in, hang-up) is cancelled: nobody would
hear the rest, and the engine slot is worth more to the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

Renderer = Callable[[], AsyncIterator[list[bytes]]]
"""Yields frame batches of one utterance; an empty batch marks the end of a text segment."""


@dataclass(frozen=True)
class PhraseKey:
    engine: str
    voice_id: str
    preset: str
    text: str


@dataclass(frozen=True)
class PhrasePiece:
    """Frames in playback order; ``ends_segment`` when the text segment ends right after them."""

    frames: list[bytes]
    ends_segment: bool


@dataclass(frozen=True)
class _Phrase:
    frames: tuple[bytes, ...]
    segment_ends: tuple[int, ...]
    size: int


@dataclass(eq=False)
class _Rendering:
    frames: list[bytes] = field(default_factory=list)
    segment_ends: list[int] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    followers: int = 0
    deadlines: list[Callable[[], float | None]] = field(default_factory=list)


class PhraseCache:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_text_chars: int = 1000) -> None:
        self.max_bytes = max_bytes
        self.max_text_chars = max_text_chars
        self._entries: OrderedDict[PhraseKey, _Phrase] = OrderedDict()
        self._inflight: dict[PhraseKey, _Rendering] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.abandoned = 0

    def cacheable(self, text: str) -> bool:
        return 0 < len(text) <= self.max_text_chars and self.max_bytes > 0

    def peek(self, key: PhraseKey) -> tuple[bytes, ...] | None:
        """The frames if fully rendered, without waiting (not counted as a hit)."""
        entry = self._entries.get(key)
        return None if entry is None else entry.frames

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

    def deadline(self, key: PhraseKey) -> float | None:
        """When the rendering of ``key`` is needed: the most urgent of its followers' deadlines
        (None, "now", if any follower says so or none has one)."""
        state = self._inflight.get(key)
        if state is None or not state.deadlines:
            return None
        values = [deadline() for deadline in state.deadlines]
        return None if None in values else min(v for v in values if v is not None)

    async def follow(
        self, key: PhraseKey, render: Renderer | None = None, *,
        deadline: Callable[[], float | None] | None = None,
    ) -> AsyncIterator[PhrasePiece]:
        """The phrase piece by piece: from the cache, from a rendering in progress, or, given
        ``render``, from a rendering started now and shared with whoever asks next.

        Raises the renderer's error if it fails, and ``KeyError`` for an unknown phrase with no
        ``render``. Leaving early cancels the rendering once no one else follows it. ``deadline``
        says when this follower needs the audio; a shared rendering asks ``deadline(key)``.
        """
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            for piece in _pieces(entry.frames, entry.segment_ends, 0, 0)[0]:
                yield piece
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
        try:
            sent = segments = 0
            while True:
                pieces, sent, segments = _pieces(state.frames, state.segment_ends, sent, segments)
                for piece in pieces:
                    yield piece
                if pieces:
                    continue  # the rendering may have moved on while the pieces were taken
                if state.error is not None:
                    raise state.error
                if state.done:
                    return
                state.changed.clear()
                await state.changed.wait()
        finally:
            state.followers -= 1
            if deadline is not None:
                state.deadlines.remove(deadline)
            if state.followers == 0 and not state.done and state.task is not None:
                self._abandon(key, state)

    def _abandon(self, key: PhraseKey, state: _Rendering) -> None:
        if self._inflight.get(key) is state:
            del self._inflight[key]  # whoever asks next starts afresh, not from a cancelled rendering
        self.abandoned += 1
        assert state.task is not None
        state.task.cancel()

    def _settle(self, key: PhraseKey, state: _Rendering) -> None:
        """Wake followers of a rendering cancelled before it ever ran (its own ``finally`` did not)."""
        if not state.done:
            state.error = state.error or RuntimeError("rendering cancelled")
            state.done = True
            state.changed.set()
        if self._inflight.get(key) is state:
            del self._inflight[key]

    async def _render(self, key: PhraseKey, state: _Rendering, render: Renderer) -> None:
        try:
            async with contextlib.aclosing(render()) as batches:
                async for batch in batches:
                    if batch:
                        state.frames.extend(batch)
                    else:
                        state.segment_ends.append(len(state.frames))
                    state.changed.set()
            self._store(key, tuple(state.frames), tuple(state.segment_ends))
        except BaseException as exc:  # followers must learn of a failure or a cancellation
            state.error = exc if isinstance(exc, Exception) else RuntimeError("rendering cancelled")
            if not isinstance(exc, Exception):
                raise
        finally:
            state.done = True
            state.changed.set()
            if self._inflight.get(key) is state:
                del self._inflight[key]

    def _store(self, key: PhraseKey, frames: tuple[bytes, ...], segment_ends: tuple[int, ...]) -> None:
        size = sum(len(f) for f in frames)
        if size > self.max_bytes or not frames:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[key] = _Phrase(frames, segment_ends, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
            self.evictions += 1

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
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "abandoned": self.abandoned,
            "rendering": len(self._inflight),
        }


def _pieces(
    frames: list[bytes] | tuple[bytes, ...], segment_ends: list[int] | tuple[int, ...], sent: int,
    segments: int,
) -> tuple[list[PhrasePiece], int, int]:
    """What a follower at frame ``sent`` with ``segments`` segment ends behind it has not had yet,
    cut at segment ends, and the follower's position after taking it."""
    out: list[PhrasePiece] = []
    while segments < len(segment_ends):
        end = segment_ends[segments]
        segments += 1
        out.append(PhrasePiece(list(frames[sent:end]), True))
        sent = end
    if sent < len(frames):
        out.append(PhrasePiece(list(frames[sent:]), False))
        sent = len(frames)
    return out, sent, segments
