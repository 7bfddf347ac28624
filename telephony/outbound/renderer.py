"""What an utterance sounds like: its source turned into typed render items.

Text goes to the engine one speakable segment at a time (streamed text is cut as it arrives), whole
known texts through the phrase cache when they fit, clips through their own resampling encoder.
Either way the result is the same stream of ``SegmentStart`` / ``FrameBatch`` / ``SegmentEnd``
items (tts_core/render.py), so the pacer places marks identically for a cached phrase and a live
one. The renderer never waits for room itself: the pacer's bounded queue pulls items as fast as it
takes them, which keeps the engine only a few seconds ahead of what the caller hears.

One μ-law encoder serves the call's text utterances in turn: it is flushed at the end of each (the
fade-out and padding of the last frame) and reset on a cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing

from telephony.outbound.hooks import SpeakerHooks
from telephony.outbound.utterance import AudioClip, Utterance
from tts_core.audio import MulawFrameEncoder
from tts_core.engines.base import Engine, EngineError, SpeechRequest
from tts_core.phrase_cache import PhraseCache, PhraseKey
from tts_core.presets import Preset
from tts_core.render import FrameBatch, RenderItem, segment_items, utterance_frames
from tts_core.text.segmenter import TextSegmenter, segment_text
from tts_core.voices import Voice

Deadline = Callable[[], float | None]
"""When the audio rendered next is needed (``time.monotonic()``), or None for "now"."""


class Renderer:
    """Turns one call's utterances into render items, with the call's engine, voice and preset."""

    def __init__(self, *, engine: Engine, voice_id: str, preset: Preset, voice: Voice | None,
                 phrase_cache: PhraseCache | None, deadline: Deadline, hooks: SpeakerHooks) -> None:
        self.engine = engine
        self.voice_id = voice_id
        self.preset = preset
        self.voice = voice
        self._cache = phrase_cache
        self._deadline = deadline
        self._hooks = hooks
        self._encoder = MulawFrameEncoder(engine.sample_rate)

    def reset(self) -> None:
        """Drop what the encoder holds (a cut, a failure): nothing of it may leak into the next."""
        self._encoder.reset()

    def cache_key(self, text: str) -> PhraseKey:
        return PhraseKey(self.engine.name, self.voice_id, self.preset.name, text)

    async def items(self, utt: Utterance) -> AsyncGenerator[RenderItem, None]:
        """``utt``'s audio as render items, ending with the utterance's flushed tail."""
        source = utt.source
        if isinstance(source, AudioClip):
            inner = _clip_items(source)
        elif isinstance(source, str):
            inner = self._text_items(utt, source)
        else:
            inner = self._live_items(utt, self._streamed_segments(utt, source))
        async with aclosing(inner) as items:
            async for item in items:
                yield item

    # ---- whole texts: the phrase cache first --------------------------------------------------
    async def _text_items(self, utt: Utterance, text: str) -> AsyncGenerator[RenderItem, None]:
        """Through the phrase cache when it can serve ``text``, else live (see ``_phrase_items``)."""
        if self._cache is not None and self._cache.cacheable(text):
            held: list[RenderItem] = []  # segment markers before the first audio, until it comes
            served = False
            try:
                async with aclosing(self._phrase_items(utt, self._cache, text)) as items:
                    async for item in items:
                        if not served and not (isinstance(item, FrameBatch) and item.frames):
                            held.append(item)
                            continue
                        if not served:
                            served = True
                            for earlier in held:
                                yield earlier
                        yield item
                for earlier in held if not served else ():
                    yield earlier  # a phrase without audio: its markers still count
                return
            except Exception:
                if served or not utt.from_cache:
                    raise  # audio already out, or this call's own rendering failed: report it
                utt.from_cache = False  # a rendering started elsewhere failed before any audio
        segments = _listed(segment_text(text, self.preset.segmentation))
        async with aclosing(self._live_items(utt, segments)) as live:
            async for item in live:
                yield item

    async def _phrase_items(self, utt: Utterance, cache: PhraseCache,
                            text: str) -> AsyncGenerator[RenderItem, None]:
        """Speak a whole known text through the phrase cache: from the cache, from a rendering in
        progress (the webhook's greeting pre-render, or another call saying the same prompt), or
        from a rendering started here and shared with calls that ask for it meanwhile. The text is
        segmented once, by that rendering; its segment markers come with its audio."""
        key = self.cache_key(text)
        utt.from_cache = cache.has(key)

        def render() -> AsyncGenerator[RenderItem, None]:
            # Scheduled by the most urgent call following it, not only by the one that started it.
            return utterance_frames(self.engine, text, voice_id=self.voice_id, preset=self.preset,
                                    voice=self.voice, deadline=lambda: cache.deadline(key))

        started = utt.first_segment_at = time.monotonic()
        async with aclosing(cache.follow(key, render, deadline=self._deadline)) as items:
            async for item in items:
                if (not utt.from_cache and utt.engine_first_chunk_ms is None
                        and isinstance(item, FrameBatch) and item.frames):
                    self._engine_started(utt, started)
                yield item

    # ---- live text ----------------------------------------------------------------------------
    async def _streamed_segments(self, utt: Utterance,
                                 tokens: AsyncIterator[str]) -> AsyncGenerator[str, None]:
        """Speakable segments of streamed text as they complete; ``utt.text`` grows with it."""
        segmenter = TextSegmenter(self.preset.segmentation)
        try:
            async for token in tokens:
                if not isinstance(token, str):
                    raise EngineError(f"agent sent a non-text token: {token!r}")
                utt.text += token
                for segment in segmenter.push(token):
                    yield segment
            for segment in segmenter.flush():
                yield segment
        finally:
            aclose = getattr(tokens, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        utt.text = utt.text.strip()

    async def _live_items(self, utt: Utterance,
                          segments: AsyncGenerator[str, None]) -> AsyncGenerator[RenderItem, None]:
        """Each segment through the engine and the call's encoder, then the encoder's tail."""
        index = 0
        async with aclosing(segments) as texts:
            async for text in texts:
                request = SpeechRequest(text, self.voice_id, self.preset, self.voice,
                                        first_in_turn=index == 0, deadline=self._deadline())
                started = time.monotonic()
                if utt.first_segment_at is None:
                    utt.first_segment_at = started
                first = True
                async with aclosing(segment_items(self.engine, self._encoder, request, index)) as items:
                    async for item in items:
                        if first and isinstance(item, FrameBatch):
                            first = False
                            self._engine_started(utt, started)
                        yield item
                index += 1
        tail = self._encoder.flush()
        if tail:
            yield FrameBatch(tail)

    def _engine_started(self, utt: Utterance, started: float) -> None:
        elapsed = (time.monotonic() - started) * 1000
        if utt.engine_first_chunk_ms is None:
            utt.engine_first_chunk_ms = elapsed
        if self._hooks.on_engine_first_chunk:
            self._hooks.on_engine_first_chunk(elapsed / 1000)


async def _listed(texts: list[str]) -> AsyncGenerator[str, None]:
    for text in texts:
        yield text


async def _clip_items(clip: AudioClip) -> AsyncGenerator[RenderItem, None]:
    """A clip a second at a time: resampling a long clip in one go would hold the event loop, and
    its frames would bypass the pacer's bound. Loops run the same buffer through one encoder: its
    resampler state carries over, exactly as if the loops were one long clip, without that clip
    ever existing."""
    encoder = MulawFrameEncoder(clip.sample_rate)
    for _ in range(max(1, clip.loops)):
        for start in range(0, clip.audio.size, clip.sample_rate):
            yield FrameBatch(encoder.push(clip.audio[start : start + clip.sample_rate]))
            await asyncio.sleep(0)
    yield FrameBatch(encoder.flush())
