"""Engine audio to telephony frames for one piece of text: the shared engine -> encoder step.

What a rendering yields is a stream of typed items, so a consumer never has to guess what a value
means: ``SegmentStart`` (a text segment goes to the engine), ``FrameBatch`` (μ-law frames in
playback order) and ``SegmentEnd`` (that segment's audio is complete; a listener puts its mark
here). The phrase cache stores and replays these same items, so a cached phrase and a live one carry
their segments identically, and nobody segments the text a second time to learn where they are.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from tts_core.audio import MulawFrameEncoder
from tts_core.engines.base import Engine, SpeechRequest
from tts_core.presets import Preset
from tts_core.text.segmenter import segment_text
from tts_core.voices import Voice


@dataclass(frozen=True, slots=True)
class SegmentStart:
    """Segment ``index`` of an utterance (its ``text``) starts here; its frames follow."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class FrameBatch:
    """160-byte μ-law frames in playback order. The list is shared (a cached phrase hands the same
    batch to every call that plays it): readers slice it, nobody mutates it."""

    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class SegmentEnd:
    """Segment ``index``'s audio is complete: every frame of it came before this item (the
    encoder's tail of it may still come with the next segment's first batch: segments are seamless)."""

    index: int


RenderItem = SegmentStart | FrameBatch | SegmentEnd
"""What a rendering yields, in order: per segment a start, its frame batches, its end; then the
flushed tail of the utterance as a last ``FrameBatch`` (if any)."""


async def frames_for_segment(
    engine: Engine, encoder: MulawFrameEncoder, request: SpeechRequest
) -> AsyncGenerator[list[bytes], None]:
    """Push one segment's engine chunks through ``encoder``; yields frame batches as they complete.

    The encoder is not flushed: consecutive segments of one utterance stay seamless.
    """
    async with aclosing(engine.stream(request)) as chunks:
        async for chunk in chunks:
            frames = encoder.push(chunk)
            if frames:
                yield frames


async def segment_items(
    engine: Engine, encoder: MulawFrameEncoder, request: SpeechRequest, index: int
) -> AsyncGenerator[RenderItem, None]:
    """One segment as items: its start, its frame batches, its end (the encoder is not flushed)."""
    yield SegmentStart(index, request.text)
    async with aclosing(frames_for_segment(engine, encoder, request)) as batches:
        async for frames in batches:
            yield FrameBatch(frames)
    yield SegmentEnd(index)


async def utterance_frames(
    engine: Engine,
    text: str,
    *,
    voice_id: str,
    preset: Preset,
    voice: Voice | None = None,
    deadline: Callable[[], float | None] | None = None,
) -> AsyncGenerator[RenderItem, None]:
    """A whole utterance as render items, flushed at the end (phrase cache, warmup, tools).

    The text is segmented here, once; each segment's items carry its text. ``deadline`` is asked
    before each segment for the engine's scheduling deadline, and again while a segment waits for
    an engine slot.
    """
    encoder = MulawFrameEncoder(engine.sample_rate)
    for index, segment in enumerate(segment_text(text, preset.segmentation)):
        request = SpeechRequest(segment, voice_id, preset, voice, first_in_turn=index == 0,
                                deadline=deadline() if deadline is not None else None,
                                deadline_fn=deadline)
        async with aclosing(segment_items(engine, encoder, request, index)) as items:
            async for item in items:
                yield item
    tail = encoder.flush()
    if tail:
        yield FrameBatch(tail)


async def render_utterance(
    engine: Engine, text: str, *, voice_id: str, preset: Preset, voice: Voice | None = None
) -> list[bytes]:
    """Render a whole utterance to μ-law frames."""
    frames: list[bytes] = []
    async with aclosing(utterance_frames(engine, text, voice_id=voice_id, preset=preset,
                                         voice=voice)) as items:
        async for item in items:
            if isinstance(item, FrameBatch):
                frames.extend(item.frames)
    return frames


__all__ = [
    "FrameBatch",
    "RenderItem",
    "SegmentEnd",
    "SegmentStart",
    "frames_for_segment",
    "render_utterance",
    "segment_items",
    "utterance_frames",
]
