"""Rendered phrases kept per (engine, voice, preset, text), so greetings and repeated prompts cost no
synthesis.

Entries are whole utterances as 160-byte μ-law frames (already flushed and faded), in an LRU bounded
by total bytes. A phrase being rendered is shared: every caller that asks for it while it renders
follows the same rendering, frame batch by frame batch, so a call that starts while its greeting
is still being pre-rendered hears the first words as soon as they exist, not when the whole
greeting is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PhraseKey:
    engine: str
    voice_id: str
    preset: str
    text: str


@dataclass(eq=False)
class _Rendering:
    frames: list[bytes] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class PhraseCache:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_text_chars: int = 1000) -> None:
        self.max_bytes = max_bytes
        self.max_text_chars = max_text_chars
        self._entries: OrderedDict[PhraseKey, tuple[bytes, ...]] = OrderedDict()
        self._inflight: dict[PhraseKey, _Rendering] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def cacheable(self, text: str) -> bool:
        return 0 < len(text) <= self.max_text_chars and self.max_bytes > 0

    def peek(self, key: PhraseKey) -> tuple[bytes, ...] | None:
        """The frames if fully rendered, without waiting."""
        frames = self._entries.get(key)
        if frames is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return frames

    def rendering(self, key: PhraseKey) -> bool:
        return key in self._inflight

    def has(self, key: PhraseKey) -> bool:
        """Cached or being rendered (does not count as a hit)."""
        return key in self._entries or key in self._inflight

    def start(self, key: PhraseKey, render: Callable[[], AsyncIterator[list[bytes]]]) -> bool:
        """Begin rendering ``key`` in the background unless it is cached or already rendering."""
        if key in self._entries or key in self._inflight:
            return False
        self.misses += 1
        state = _Rendering()
        self._inflight[key] = state
        state.task = asyncio.create_task(self._render(key, state, render),
                                         name=f"phrase:{key.text[:24]}")
        return True

    async def follow(self, key: PhraseKey) -> AsyncIterator[list[bytes]]:
        """Frame batches of a rendering in progress (or of the cached entry), as they appear.

        Raises the renderer's error if it fails. Leaving early does not stop the rendering.
        """
        cached = self.peek(key)
        if cached is not None:
            yield list(cached)
            return
        state = self._inflight.get(key)
        if state is None:
            raise KeyError(key)
        self.hits += 1
        sent = 0
        while True:
            if sent < len(state.frames):
                batch = state.frames[sent:]
                sent += len(batch)
                yield batch
                continue
            if state.error is not None:
                raise state.error
            if state.done:
                return
            state.changed.clear()
            await state.changed.wait()

    async def get_or_render(
        self, key: PhraseKey, render: Callable[[], AsyncIterator[list[bytes]]]
    ) -> tuple[bytes, ...]:
        """The whole phrase, rendering it once if needed (shared by concurrent callers)."""
        self.start(key, render)
        frames: list[bytes] = []
        async for batch in self.follow(key):
            frames.extend(batch)
        return tuple(frames)

    async def _render(self, key: PhraseKey, state: _Rendering,
                      render: Callable[[], AsyncIterator[list[bytes]]]) -> None:
        try:
            async for batch in render():
                state.frames.extend(batch)
                state.changed.set()
            self._store(key, tuple(state.frames))
        except BaseException as exc:  # followers must learn of a failure or a cancellation
            state.error = exc if isinstance(exc, Exception) else RuntimeError("rendering cancelled")
            if not isinstance(exc, Exception):
                raise
        finally:
            state.done = True
            state.changed.set()
            self._inflight.pop(key, None)

    def put(self, key: PhraseKey, frames: list[bytes] | tuple[bytes, ...]) -> None:
        """Keep frames rendered elsewhere (a call that spoke a whole known text)."""
        self._store(key, tuple(frames))

    def _store(self, key: PhraseKey, frames: tuple[bytes, ...]) -> None:
        size = sum(len(f) for f in frames)
        if size > self.max_bytes or not frames:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= sum(len(f) for f in old)
        self._entries[key] = frames
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= sum(len(f) for f in evicted)
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
            "rendering": len(self._inflight),
        }
