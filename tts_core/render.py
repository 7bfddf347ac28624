"""Engine audio to telephony frames for one piece of text: the shared engine -> encoder step."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from tts_core.audio import MulawFrameEncoder
from tts_core.engines.base import Engine, SpeechRequest
from tts_core.presets import Preset
from tts_core.text.segmenter import segment_text
from tts_core.voices import Voice


async def frames_for_segment(
    engine: Engine, encoder: MulawFrameEncoder, request: SpeechRequest
) -> AsyncIterator[list[bytes]]:
    """Push one segment's engine chunks through ``encoder``; yields frame batches as they complete.

    The encoder is not flushed: consecutive segments of one utterance stay seamless.
    """
    async with aclosing(engine.stream(request)) as chunks:
        async for chunk in chunks:
            frames = encoder.push(chunk)
            if frames:
                yield frames


async def utterance_frames(
    engine: Engine,
    text: str,
    *,
    voice_id: str,
    preset: Preset,
    voice: Voice | None = None,
    deadline: Callable[[], float | None] | None = None,
) -> AsyncIterator[list[bytes]]:
    """A whole utterance as frame batches, flushed at the end (phrase cache, warmup, tools).

    An empty batch follows each text segment of ``segment_text``, so a listener can mark where it
    ends. ``deadline`` is asked before each segment for the engine's scheduling deadline, and
    again while a segment waits for an engine slot.
    """
    encoder = MulawFrameEncoder(engine.sample_rate)
    for index, segment in enumerate(segment_text(text, preset.segmentation)):
        request = SpeechRequest(segment, voice_id, preset, voice, first_in_turn=index == 0,
                                deadline=deadline() if deadline is not None else None,
                                deadline_fn=deadline)
        async for batch in frames_for_segment(engine, encoder, request):
            yield batch
        yield []
    tail = encoder.flush()
    if tail:
        yield tail


async def render_utterance(
    engine: Engine, text: str, *, voice_id: str, preset: Preset, voice: Voice | None = None
) -> list[bytes]:
    """Render a whole utterance to μ-law frames."""
    frames: list[bytes] = []
    async for batch in utterance_frames(engine, text, voice_id=voice_id, preset=preset, voice=voice):
        frames.extend(batch)
    return frames
