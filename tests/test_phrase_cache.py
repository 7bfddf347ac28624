"""The phrase cache: one rendering per phrase however many calls ask at once, progressive delivery,
segment boundaries kept, a byte-bounded LRU, failures passed on, abandoned renderings cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import eventually
from tts_core.phrase_cache import PhraseCache, PhraseKey
from tts_core.render import FrameBatch, RenderItem, SegmentEnd, SegmentStart

FRAME = b"\xff" * 160


def key(text: str = "Welcome to the clinic.") -> PhraseKey:
    return PhraseKey("synthetic", "joe", "balanced", text)


class Renderer:
    """Yields ``segments`` segments of ``frames_per_segment`` frames, in batches, when released."""

    def __init__(self, segments: int = 2, frames_per_segment: int = 4, batch: int = 2,
                 fail_after: int | None = None) -> None:
        self.segments = segments
        self.frames_per_segment = frames_per_segment
        self.batch = batch
        self.fail_after = fail_after
        self.runs = 0
        self.cancelled = 0
        self.sent = 0
        self.release = asyncio.Event()
        self.release.set()
        self.held = asyncio.Event()
        """Set when the renderer waits for ``release``: nothing can have been rendered past there."""

    async def __call__(self) -> AsyncIterator[RenderItem]:
        self.runs += 1
        sent = 0
        try:
            for index in range(self.segments):
                yield SegmentStart(index, f"segment {index}")
                for _ in range(0, self.frames_per_segment, self.batch):
                    if not self.release.is_set():
                        self.held.set()
                    await self.release.wait()
                    if self.fail_after is not None and sent >= self.fail_after:
                        raise RuntimeError("engine fell over")
                    sent += self.batch
                    self.sent += self.batch
                    yield FrameBatch([FRAME] * self.batch)
                    await asyncio.sleep(0)
                yield SegmentEnd(index)
            yield FrameBatch([FRAME])  # the flushed tail
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def collect(items: AsyncIterator[RenderItem]) -> list[RenderItem]:
    return [item async for item in items]


def shape(items: list[RenderItem]) -> list[tuple[int, bool]]:
    """Merge batches between segment ends: [(frames in the segment, ends a segment), ...]; every
    segment end follows its own segment's start."""
    out: list[tuple[int, bool]] = []
    count = 0
    started: list[int] = []
    for item in items:
        if isinstance(item, SegmentStart):
            started.append(item.index)
        elif isinstance(item, FrameBatch):
            count += len(item.frames)
        else:
            assert started and started[-1] == item.index, (started, item)
            out.append((count, True))
            count = 0
    if count:
        out.append((count, False))
    return out


async def test_concurrent_requests_for_one_phrase_share_one_rendering() -> None:
    cache, render = PhraseCache(), Renderer()
    results = await asyncio.gather(*(collect(cache.follow(key(), render)) for _ in range(50)))
    assert render.runs == 1
    assert all(shape(r) == [(4, True), (4, True), (1, False)] for r in results)
    assert cache.stats()["misses"] == 1 and cache.stats()["hits"] == 49


async def test_a_cached_phrase_is_served_whole_with_its_segment_ends_and_costs_no_rendering() -> None:
    cache, render = PhraseCache(), Renderer(segments=3)
    await collect(cache.follow(key(), render))
    again = await collect(cache.follow(key(), render))
    assert render.runs == 1
    assert shape(again) == [(4, True), (4, True), (4, True), (1, False)]
    assert cache.peek(key()) == (FRAME,) * 13


async def test_a_follower_gets_frames_as_they_are_rendered_not_when_the_phrase_is_done() -> None:
    cache, render = PhraseCache(), Renderer(frames_per_segment=8)
    render.release.clear()
    follower = cache.follow(key(), render)
    assert await asyncio.wait_for(follower.__anext__(), 1) == SegmentStart(0, "segment 0")
    first = asyncio.ensure_future(follower.__anext__())
    await asyncio.wait_for(render.held.wait(), 1)
    assert not first.done()
    render.release.set()
    batch = await asyncio.wait_for(first, 1)
    assert isinstance(batch, FrameBatch) and len(batch.frames) == 2
    await follower.aclose()


async def test_a_late_follower_catches_up_cut_at_the_same_segment_ends() -> None:
    cache, render = PhraseCache(), Renderer(segments=3, frames_per_segment=4, batch=1)
    early = asyncio.ensure_future(collect(cache.follow(key(), render)))
    await eventually(lambda: render.sent >= 5)  # part of the phrase renders before the second call asks
    late = await collect(cache.follow(key(), render))
    assert shape(late) == shape(await early) == [(4, True), (4, True), (4, True), (1, False)]
    assert render.runs == 1


async def test_a_failure_reaches_every_follower_and_nothing_is_cached() -> None:
    cache, render = PhraseCache(), Renderer(fail_after=2)
    results = await asyncio.gather(*(collect(cache.follow(key(), render)) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "fell over" in str(r) for r in results)
    assert cache.peek(key()) is None and not cache.has(key())


async def test_when_the_last_follower_leaves_the_rendering_is_cancelled_and_not_cached() -> None:
    cache, render = PhraseCache(), Renderer(frames_per_segment=100, batch=1)
    follower = cache.follow(key(), render)
    await follower.__anext__()
    await follower.aclose()  # the caller barged in
    await eventually(lambda: render.cancelled == 1, what="the rendering cancelled")
    assert not cache.has(key()) and cache.stats()["abandoned"] == 1
    # The next request starts a fresh rendering rather than inheriting the cancelled one.
    assert shape(await collect(cache.follow(key(), render))) == [(100, True), (100, True), (1, False)]
    assert render.runs == 2


async def test_a_rendering_goes_on_while_anyone_still_follows_it() -> None:
    cache, render = PhraseCache(), Renderer(frames_per_segment=20, batch=1)
    leaver = cache.follow(key(), render)
    stayer = asyncio.ensure_future(collect(cache.follow(key(), render)))
    await leaver.__anext__()
    await leaver.aclose()
    assert shape(await stayer) == [(20, True), (20, True), (1, False)]
    assert render.cancelled == 0 and cache.peek(key()) is not None


async def test_a_prerender_nobody_follows_yet_runs_to_completion() -> None:
    cache, render = PhraseCache(), Renderer()
    assert cache.start(key(), render) is True
    assert cache.start(key(), render) is False  # already rendering
    await eventually(lambda: cache.peek(key()) is not None, what="the phrase cached")
    assert cache.peek(key()) == (FRAME,) * 9


async def test_an_unknown_phrase_without_a_renderer_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        await collect(PhraseCache().follow(key()))


async def test_the_cache_is_bounded_in_bytes_least_recently_used_first() -> None:
    cache = PhraseCache(max_bytes=160 * 9 * 2)  # room for two 9-frame phrases
    for text in ("one", "two"):
        await collect(cache.follow(key(text), Renderer()))
    await collect(cache.follow(key("one")))  # "one" is now the most recently used
    await collect(cache.follow(key("three"), Renderer()))
    assert cache.peek(key("one")) is not None and cache.peek(key("three")) is not None
    assert cache.peek(key("two")) is None
    assert cache.stats()["evictions"] == 1 and cache.stats()["bytes"] == 160 * 9 * 2


def test_only_non_empty_texts_up_to_the_limit_are_cacheable() -> None:
    cache = PhraseCache(max_text_chars=10)
    assert cache.cacheable("Hello.") and not cache.cacheable("") and not cache.cacheable("x" * 11)
    assert not PhraseCache(max_bytes=0).cacheable("Hello.")


async def test_aclose_cancels_renderings_in_progress() -> None:
    cache, render = PhraseCache(), Renderer()
    render.release.clear()
    cache.start(key(), render)
    await asyncio.sleep(0)
    await cache.aclose()
    assert render.cancelled == 1 and not cache.has(key())


async def test_a_follower_is_released_when_the_cache_closes_before_the_rendering_starts() -> None:
    cache, render = PhraseCache(), Renderer()
    follower = asyncio.ensure_future(collect(cache.follow(key(), render)))
    await asyncio.sleep(0)  # the follower started the rendering; the rendering has not run yet
    await cache.aclose()
    with pytest.raises(RuntimeError, match="cancelled"):
        await asyncio.wait_for(follower, 2)


async def test_a_shared_rendering_is_due_when_its_most_urgent_follower_needs_it() -> None:
    cache, render = PhraseCache(), Renderer(frames_per_segment=50, batch=1)
    relaxed = cache.follow(key(), render, deadline=lambda: 100.0)
    await relaxed.__anext__()
    assert cache.deadline(key()) == 100.0
    urgent = cache.follow(key(), render, deadline=lambda: 5.0)
    await urgent.__anext__()
    assert cache.deadline(key()) == 5.0
    await urgent.aclose()
    assert cache.deadline(key()) == 100.0
    await relaxed.aclose()
