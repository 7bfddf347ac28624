"""The renderer on its own: an utterance becomes typed items (segment start, frame batches, segment
end, then the tail), the same from the engine and from the phrase cache; the phrase path segments
the text once; a shared rendering that fails before any audio falls back to a live rendering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

import telephony.outbound.renderer as renderer_module
import tts_core.render as render_module
from telephony.outbound import AudioClip, Renderer, SpeakerHooks, SpeechQueue, Utterance
from tts_core.audio.telephony_format import FRAME_BYTES
from tts_core.engines.synthetic import SyntheticEngine
from tts_core.phrase_cache import PhraseCache
from tts_core.presets import load_presets
from tts_core.render import FrameBatch, RenderItem, SegmentEnd, SegmentStart
from tts_core.text.segmenter import segment_text

PRESET = load_presets().get("balanced")
PROMPT = "For billing, press one. For appointments, press two. To hear this again, press nine."


def make_renderer(cache: PhraseCache | None = None) -> Renderer:
    return Renderer(engine=SyntheticEngine(), voice_id="synthetic", preset=PRESET, voice=None,
                    phrase_cache=cache, deadline=lambda: None, hooks=SpeakerHooks())


def utterance(source: str | AsyncIterator[str] | AudioClip) -> Utterance:
    return SpeechQueue(SpeakerHooks()).create(source, interruptible=True, preemptible=False)


async def render(renderer: Renderer, utt: Utterance) -> list[RenderItem]:
    return [item async for item in renderer.items(utt)]


def outline(items: list[RenderItem]) -> list[str]:
    """Markers in order, with each run of frames as one "frames"."""
    out: list[str] = []
    for item in items:
        if isinstance(item, SegmentStart):
            out.append(f"start {item.index}: {item.text}")
        elif isinstance(item, SegmentEnd):
            out.append(f"end {item.index}")
        elif item.frames and (not out or out[-1] != "frames"):
            out.append("frames")
    return out


def frames(items: list[RenderItem]) -> list[bytes]:
    return [f for item in items if isinstance(item, FrameBatch) for f in item.frames]


async def test_a_text_renders_as_start_frames_end_per_segment_then_the_tail() -> None:
    items = await render(make_renderer(), utterance(PROMPT))
    segments = segment_text(PROMPT, PRESET.segmentation)
    expected: list[str] = []
    for index, text in enumerate(segments):
        expected += [f"start {index}: {text}", "frames", f"end {index}"]
    assert outline(items) == [*expected, "frames"]  # the flushed tail comes last
    assert all(len(f) == FRAME_BYTES for f in frames(items))


async def test_a_cached_phrase_yields_the_same_items_as_a_live_rendering() -> None:
    live = await render(make_renderer(), utterance(PROMPT))
    cache = PhraseCache()
    renderer = make_renderer(cache)
    first = utterance(PROMPT)
    await render(renderer, first)  # renders it into the cache
    again = utterance(PROMPT)
    cached = await render(renderer, again)
    assert not first.from_cache and again.from_cache
    assert outline(cached) == outline(live)
    assert frames(cached) == frames(live)


async def test_the_phrase_path_segments_the_text_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counting(text: str, config):  # type: ignore[no-untyped-def]
        calls.append(text)
        return segment_text(text, config)

    monkeypatch.setattr(render_module, "segment_text", counting)
    monkeypatch.setattr(renderer_module, "segment_text", counting)
    items = await render(make_renderer(PhraseCache()), utterance(PROMPT))
    assert calls == [PROMPT]
    assert sum(isinstance(item, SegmentEnd) for item in items) == 3


async def test_a_shared_rendering_that_fails_before_any_audio_falls_back_to_live() -> None:
    cache = PhraseCache()
    renderer = make_renderer(cache)
    release = asyncio.Event()

    async def doomed() -> AsyncIterator[RenderItem]:
        yield SegmentStart(0, "For billing, press one.")  # a marker, then nothing audible
        await release.wait()
        raise RuntimeError("the other call's engine fell over")

    assert cache.start(renderer.cache_key(PROMPT), doomed)  # another call started it
    utt = utterance(PROMPT)
    rendering = asyncio.ensure_future(render(renderer, utt))
    await asyncio.sleep(0)
    release.set()
    items = await asyncio.wait_for(rendering, 5)
    assert not utt.from_cache
    assert outline(items) == outline(await render(make_renderer(), utterance(PROMPT)))


async def test_streamed_text_is_segmented_as_it_arrives() -> None:
    async def tokens() -> AsyncIterator[str]:
        for token in ["Hello there", ", how are", " you today? ", "Fine."]:
            yield token

    utt = utterance(tokens())
    items = await render(make_renderer(), utt)
    assert utt.text == "Hello there, how are you today? Fine."
    starts = [item.text for item in items if isinstance(item, SegmentStart)]
    assert " ".join(starts) == utt.text
    assert utt.first_segment_at is not None and utt.engine_first_chunk_ms is not None


async def test_a_clip_loop_is_the_same_buffer_through_one_encoder() -> None:
    rate = 16000
    audio = (0.1 * np.sin(np.arange(rate // 2) / 10)).astype(np.float32)  # 0.5 s
    items = await render(make_renderer(), utterance(AudioClip(audio, rate, "beep", loops=3)))
    assert 74 <= len(frames(items)) <= 76  # 3 x 0.5 s of 20 ms frames
    assert not any(isinstance(item, SegmentStart | SegmentEnd) for item in items)
