"""Rendered phrases kept per (voice, preset, text), so greetings and repeated prompts cost no synthesis.

Entries are whole utterances as 160-byte μ-law frames (already flushed and faded). The cache is an
LRU bounded by total bytes; concurrent requests for the same phrase share one rendering, which is
how the webhook's background pre-render and the call that needs the greeting meet.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PhraseKey:
    engine: str
    voice_id: str
    preset: str
    text: str


class PhraseCache:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_text_chars: int = 1000) -> None:
        self.max_bytes = max_bytes
        self.max_text_chars = max_text_chars
        self._entries: OrderedDict[PhraseKey, tuple[bytes, ...]] = OrderedDict()
        self._inflight: dict[PhraseKey, asyncio.Task[tuple[bytes, ...]]] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def cacheable(self, text: str) -> bool:
        return 0 < len(text) <= self.max_text_chars

    def peek(self, key: PhraseKey) -> tuple[bytes, ...] | None:
        """The frames if rendered, without waiting (and without counting a miss)."""
        frames = self._entries.get(key)
        if frames is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return frames

    def pending(self, key: PhraseKey) -> asyncio.Task[tuple[bytes, ...]] | None:
        return self._inflight.get(key)

    async def get_or_render(
        self, key: PhraseKey, render: Callable[[], Awaitable[list[bytes]]]
    ) -> tuple[bytes, ...]:
        """Cached frames, or render once (shared by every concurrent caller) and keep them."""
        frames = self.peek(key)
        if frames is not None:
            return frames
        task = self._inflight.get(key)
        if task is None:
            self.misses += 1
            task = asyncio.create_task(self._render(key, render), name=f"phrase:{key.text[:24]}")
            self._inflight[key] = task
        # shield: one waiter going away (a call hanging up) must not cancel the others' render.
        return await asyncio.shield(task)

    async def _render(
        self, key: PhraseKey, render: Callable[[], Awaitable[list[bytes]]]
    ) -> tuple[bytes, ...]:
        try:
            frames = tuple(await render())
            self._store(key, frames)
            return frames
        finally:
            self._inflight.pop(key, None)

    def put(self, key: PhraseKey, frames: list[bytes] | tuple[bytes, ...]) -> None:
        """Keep frames rendered elsewhere (a call that spoke a whole known text)."""
        self._store(key, tuple(frames))

    def _store(self, key: PhraseKey, frames: tuple[bytes, ...]) -> None:
        size = sum(len(f) for f in frames)
        if size > self.max_bytes:
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
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)

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
