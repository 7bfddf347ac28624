"""One call's outbound voice: utterances -> segmenter -> engine -> encoder -> paced frames -> socket.

Two tasks per call, owned by the ``Speaker`` and cancelled by ``aclose``:
- the *renderer* takes utterances in order, cuts streamed text into segments, runs the engine and
  the μ-law encoder, and puts frame batches on a queue bounded in frames (so the engine never runs
  more than a few seconds ahead of what the caller will hear);
- the *sender* drains that queue against a ``PlayoutClock``, keeping Twilio's buffer a bounded lead
  ahead of playback, and sends a mark after every segment and at the end of every utterance.

Marks are named ``g<generation>-u<utterance>-<point>``. ``interrupt`` bumps the generation, so marks
Twilio echoes after our ``clear`` (all pending ones come back) are recognised as not played.

Marks are also how a Twilio side that stopped playing is noticed. When the peer stops reading, the
kernel's socket buffers can absorb many seconds of audio (a whole 29 s greeting in one measurement),
so sends never block and the send-stall rule never fires. But the pacer knows when each mark's audio
is due to have played (the playout clock's buffered time when it was sent): a mark not echoed within
``mark_grace_s`` after that means nobody is playing our audio. The utterances in flight then fail
(``FAILED``, with ``heard_text`` up to the last echoed mark and the reason in ``error``), and the
``on_stalled`` hook ends the call. Why FAILED rather than INTERRUPTED: nobody interrupted; the agent
should learn that its speech was not delivered, and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from telephony.agents.base import SpeechOutcome, SpeechResult
from telephony.playout import FRAME_S, PlayoutClock
from telephony.twilio_media import MarkName, OutboundEncoder
from tts_core.audio import MulawFrameEncoder
from tts_core.engines.base import Engine, EngineError, SpeechRequest
from tts_core.phrase_cache import PhraseCache, PhraseKey
from tts_core.presets import Preset
from tts_core.render import frames_for_segment, utterance_frames
from tts_core.text.segmenter import TextSegmenter, segment_text
from tts_core.voices import Voice

log = logging.getLogger(__name__)

FRAME_MS = int(FRAME_S * 1000)
CHARS_PER_S = 14.0


@dataclass(frozen=True)
class AudioClip:
    audio: np.ndarray
    sample_rate: int
    label: str
    loops: int = 1
    """Times ``audio`` is played back to back: the same buffer again, never a copy."""


@dataclass(eq=False)
class Utterance:
    """One thing to say, from submission until played, interrupted, failed or cancelled."""

    id: int
    generation: int
    source: str | AsyncIterator[str] | AudioClip
    interruptible: bool
    preemptible: bool
    future: asyncio.Future[SpeechResult]
    created_at: float = field(default_factory=time.monotonic)
    text: str = ""
    segments: list[list[object]] = field(default_factory=list)
    """[segment text, first frame, end frame (None while it is still being rendered)]."""
    frames_queued: int = 0
    frames_sent: int = 0
    frames_confirmed: int = 0
    first_frame_at: float | None = None
    engine_first_chunk_ms: float | None = None
    first_segment_at: float | None = None
    """When the first segment's text was complete and went to the engine (streamed text waits for
    a speakable phrase; that wait belongs to the agent's token pace, not to the bridge)."""
    underruns: int = 0
    underrun_ms: float = 0.0
    end_mark_sent_at: float | None = None
    mark_rtt_ms: float | None = None
    from_cache: bool = False

    @property
    def label(self) -> str:
        if isinstance(self.source, AudioClip):
            return self.source.label
        return self.text

    def heard(self, played_frames: int) -> str:
        """The text up to ``played_frames``: whole segments, then words of the partly played one.

        A segment still being rendered has no known end yet; its length is estimated from its text
        (about 14 characters per second of speech) or from what was rendered so far, if longer.
        """
        if isinstance(self.source, AudioClip):
            return ""
        words: list[str] = []
        for text, start, end in self.segments:
            assert isinstance(text, str) and isinstance(start, int)
            if end is None:
                end = max(self.frames_queued, start + round(len(text) / CHARS_PER_S * 1000 / FRAME_MS))
            assert isinstance(end, int)
            if played_frames >= end:
                words.append(text)
                continue
            if played_frames > start:
                part = text.split()
                words.extend(part[: int(len(part) * (played_frames - start) / max(1, end - start))])
            break
        return " ".join(words)

    def resolve(self, outcome: SpeechOutcome, *, played_frames: int = 0, error: str | None = None,
                heard: str | None = None) -> None:
        if self.future.done():
            return
        if heard is None:
            heard = self.text if outcome is SpeechOutcome.PLAYED else self.heard(played_frames)
        self.future.set_result(SpeechResult(
            text=self.label, outcome=outcome, heard_text=heard,
            played_ms=played_frames * FRAME_MS, error=error,
        ))


@dataclass
class SpeakerHooks:
    """Callbacks for metrics and the call log (all optional, all synchronous and cheap)."""

    on_first_frame: Callable[[Utterance, float], None] | None = None
    on_underrun: Callable[[float], None] | None = None
    on_frames_sent: Callable[[int], None] | None = None
    on_audio_sent: Callable[[list[bytes]], None] | None = None
    """The μ-law frames themselves, as sent (the call's echo reference)."""
    on_engine_first_chunk: Callable[[float], None] | None = None
    on_finished: Callable[[Utterance], None] | None = None
    on_error: Callable[[str], None] | None = None
    on_stalled: Callable[[str], None] | None = None
    """Twilio stopped echoing marks: the argument says which and how late; the call should end."""


class Speaker:
    def __init__(
        self,
        *,
        engine: Engine,
        voice_id: str,
        preset: Preset,
        send_text: Callable[[str], Awaitable[None]],
        outbound: OutboundEncoder,
        voice: Voice | None = None,
        phrase_cache: PhraseCache | None = None,
        clock: PlayoutClock | None = None,
        max_queued_frames: int = 150,
        max_pending_utterances: int = 32,
        tick_s: float = 0.060,
        mark_grace_s: float = 3.0,
        hooks: SpeakerHooks | None = None,
        deadline_scheduling: bool = True,
    ) -> None:
        self.engine = engine
        self.voice_id = voice_id
        self.voice = voice
        self.preset = preset
        self._send_text = send_text
        self._out = outbound
        self._cache = phrase_cache
        self.clock = clock or PlayoutClock()
        self._max_queued_frames = max_queued_frames
        self._max_pending = max_pending_utterances
        self._tick_s = tick_s
        self._mark_grace_s = mark_grace_s
        self.hooks = hooks or SpeakerHooks()
        self._deadline_scheduling = deadline_scheduling

        self.generation = 0
        self._next_id = 0
        self._encoder = MulawFrameEncoder(engine.sample_rate)
        self._pending: deque[Utterance] = deque()
        """Submitted, not yet being rendered."""
        self._active: list[Utterance] = []
        """Being rendered or played, oldest first (the first one is what the caller hears)."""
        self._by_id: dict[int, Utterance] = {}
        self._frames: deque[tuple[Utterance, list[bytes], str | None]] = deque()
        self._queued_frames = 0
        self._frames_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._work = asyncio.Event()
        self._render_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._marks: deque[tuple[str, float]] = deque()
        """Marks of this generation sent and not yet echoed, with when their audio is due played."""
        self._mark_timer: asyncio.TimerHandle | None = None
        self.stalled: str | None = None
        """Why playback is considered stopped (marks not echoed), once it is."""
        self._closed = False

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._render_loop(), name="speaker-render"),
            asyncio.create_task(self._send_loop(), name="speaker-send"),
        ]

    async def aclose(self) -> None:
        """Stop everything; whatever was not played is resolved as cancelled."""
        self._closed = True
        owned = [t for t in [*self._tasks, self._render_task, *self._side_tasks] if t is not None]
        for task in owned:
            task.cancel()
        await asyncio.gather(*owned, return_exceptions=True)
        self._disarm_marks()
        played = self._played_frames_estimate()
        for utt in [*self._active, *self._pending]:
            utt.resolve(SpeechOutcome.CANCELLED, played_frames=played.get(utt.id, 0))
            self._finish(utt)  # every utterance reaches the call log, cancelled ones too
        self._active.clear()
        self._pending.clear()

    @property
    def busy(self) -> bool:
        """Something is queued, rendering or playing."""
        return bool(self._pending or self._active)

    @property
    def speaking_interruptibly(self) -> bool:
        """The caller is hearing (or about to hear) audio that barge-in may cut."""
        return bool(self._active) and self._active[0].interruptible

    # ---- submitting --------------------------------------------------------------------------
    def submit(
        self,
        source: str | AsyncIterator[str] | AudioClip,
        *,
        interruptible: bool = True,
        preemptible: bool = False,
    ) -> Utterance:
        loop = asyncio.get_running_loop()
        self._next_id += 1
        utt = Utterance(
            id=self._next_id, generation=self.generation, source=source,
            interruptible=interruptible, preemptible=preemptible, future=loop.create_future(),
        )
        if isinstance(source, str):
            utt.text = source.strip()
        if self._closed:
            utt.resolve(SpeechOutcome.CANCELLED)
            return utt
        if self.stalled:
            utt.resolve(SpeechOutcome.FAILED, error=self.stalled)
            return utt
        if len(self._pending) >= self._max_pending:
            utt.resolve(SpeechOutcome.FAILED, error="too many utterances queued for this call")
            self._report_error("queue_full")
            return utt
        # Preemptible speech still to come gives way to the new utterance; non-preemptible speech
        # queued behind it keeps its place.
        current = self._active or list(self._pending)
        if current and all(u.preemptible for u in current):
            self._cut(reason="preempted", keep=lambda u: not u.preemptible)
        self._pending.append(utt)
        self._by_id[utt.id] = utt
        self._work.set()
        return utt

    async def say(self, source: str | AsyncIterator[str] | AudioClip, **kwargs: bool) -> SpeechResult:
        # shield: an agent task being cancelled must not cancel the utterance's bookkeeping.
        return await asyncio.shield(self.submit(source, **kwargs).future)

    async def drain(self) -> None:
        """Wait until everything submitted so far is played (or otherwise resolved)."""
        futures = [u.future for u in [*self._active, *self._pending]]
        if futures:
            await asyncio.gather(*futures, return_exceptions=True)

    async def finish_current(self) -> None:
        """Shutting down: the utterance already playing ends normally; queued ones are dropped
        (resolved cancelled) and new ones refused."""
        self._closed = True
        for utt in self._pending:
            utt.resolve(SpeechOutcome.CANCELLED, played_frames=0, heard="")
            self._finish(utt)
        self._pending.clear()
        futures = [u.future for u in self._active]
        if futures:
            await asyncio.gather(*futures, return_exceptions=True)

    # ---- barge-in ----------------------------------------------------------------------------
    async def interrupt(self) -> SpeechResult | None:
        """Caller barge-in: stop generation, drop unsent audio, ``clear`` Twilio's buffer.

        Returns what became of the utterance the caller was hearing, or None if nothing
        interruptible was playing.
        """
        if not self.speaking_interruptibly:
            return None
        first = self._active[0]
        self._cut(reason="barge-in", keep=lambda u: not u.interruptible)
        await self._send(self._out.clear())
        return first.future.result() if first.future.done() else None

    def _cut(self, reason: str, keep: Callable[[Utterance], bool] = lambda u: False) -> None:
        """Synchronously forget all unplayed audio; the caller sends ``clear`` right after.

        Utterances not yet started for which ``keep`` is true survive the cut and play after it.
        """
        played = self._played_frames_estimate()
        self.generation += 1
        if self._render_task is not None:
            self._render_task.cancel()
        for utt in self._active:
            utt.resolve(SpeechOutcome.INTERRUPTED, played_frames=played.get(utt.id, 0))
            self._finish(utt)
        kept: deque[Utterance] = deque()
        for utt in self._pending:
            if keep(utt):
                utt.generation = self.generation  # not started yet: it plays after the cut
                kept.append(utt)
                continue
            utt.resolve(SpeechOutcome.INTERRUPTED, played_frames=0, heard="")
            self._finish(utt)
        self._active.clear()
        self._pending = kept
        if kept:
            self._work.set()
        self._frames.clear()
        self._queued_frames = 0
        self._room.set()
        self._encoder.reset()
        self.clock.clear()
        self._disarm_marks()  # Twilio echoes every pending mark after clear: none is overdue
        log.debug("speech cut (%s), generation now %d", reason, self.generation)
        if reason == "preempted":
            task = asyncio.get_running_loop().create_task(self._send(self._out.clear()))
            self._side_tasks.add(task)  # owned: cancelled by aclose like every other task
            task.add_done_callback(self._side_tasks.discard)

    def _played_frames_estimate(self) -> dict[int, int]:
        """Frames each active utterance has had played, by the playout model and marks."""
        unplayed = round(self.clock.buffered_s() / FRAME_S)
        total_sent = sum(u.frames_sent for u in self._active)
        budget = max(0, total_sent - unplayed)
        result: dict[int, int] = {}
        for utt in self._active:
            played = min(utt.frames_sent, budget)
            budget -= played
            result[utt.id] = max(played, utt.frames_confirmed)
        return result

    # ---- marks from Twilio ---------------------------------------------------------------------
    def on_mark(self, name: str) -> None:
        mark = MarkName.parse(name)
        if mark is None or mark.generation != self.generation:
            return  # echoed by a clear, or not ours: proves nothing about playback
        if any(sent == name for sent, _ in self._marks):
            while self._marks:  # Twilio echoes in order: every mark before this one played too
                if self._marks.popleft()[0] == name:
                    break
        utt = self._by_id.get(mark.utterance)
        if utt is None:
            return
        if mark.is_end:
            utt.frames_confirmed = utt.frames_sent
            if utt.end_mark_sent_at is not None:
                utt.mark_rtt_ms = (time.monotonic() - utt.end_mark_sent_at) * 1000
            utt.resolve(SpeechOutcome.PLAYED, played_frames=utt.frames_sent)
            self._finish(utt)
        elif mark.segment is not None and mark.segment < len(utt.segments):
            end = utt.segments[mark.segment][2]
            if isinstance(end, int):
                utt.frames_confirmed = max(utt.frames_confirmed, end)

    def _finish(self, utt: Utterance) -> None:
        if utt in self._active:
            self._active.remove(utt)
        self._by_id.pop(utt.id, None)
        if self.hooks.on_finished:
            self.hooks.on_finished(utt)

    # ---- noticing that Twilio stopped playing --------------------------------------------------
    def _mark_sent(self, name: str) -> None:
        """Expect the echo of ``name`` once what is buffered now has played."""
        self._marks.append((name, time.monotonic() + self.clock.buffered_s()))
        if self._mark_timer is None:
            self._arm_mark_timer()

    def _arm_mark_timer(self) -> None:
        due = self._marks[0][1] + self._mark_grace_s
        self._mark_timer = asyncio.get_running_loop().call_later(
            max(0.0, due - time.monotonic()), self._check_marks)

    def _disarm_marks(self) -> None:
        self._marks.clear()
        if self._mark_timer is not None:
            self._mark_timer.cancel()
            self._mark_timer = None

    def _check_marks(self) -> None:
        """The oldest unechoed mark's deadline (re-armed lazily: echoes never touch the timer)."""
        self._mark_timer = None
        if not self._marks or self._closed or self.stalled:
            return
        name, due = self._marks[0]
        late = time.monotonic() - due
        if late < self._mark_grace_s:
            self._arm_mark_timer()
            return
        self._playback_stopped(f"Twilio stopped playing audio: mark {name} not echoed "
                               f"{late:.1f} s after its audio was due")

    def _playback_stopped(self, reason: str) -> None:
        """Nobody is playing what we send: fail what is in flight (heard up to the last echoed
        mark), send nothing more, and let the call end."""
        self.stalled = reason
        log.warning("%s; utterances in flight fail", reason)
        self._report_error("playback_stalled")
        self._disarm_marks()
        if self._render_task is not None:
            self._render_task.cancel()
        for task in self._tasks:
            task.cancel()
        for utt in [*self._active, *self._pending]:
            utt.resolve(SpeechOutcome.FAILED, played_frames=utt.frames_confirmed, error=reason)
            self._finish(utt)
        self._active.clear()
        self._pending.clear()
        self._frames.clear()
        self._queued_frames = 0
        if self.hooks.on_stalled:
            self.hooks.on_stalled(reason)

    # ---- rendering ---------------------------------------------------------------------------
    async def _render_loop(self) -> None:
        while True:
            if not self._pending:
                self._work.clear()
                await self._work.wait()
                continue
            utt = self._pending.popleft()
            self._active.append(utt)
            self._render_task = asyncio.create_task(self._render(utt), name=f"render-u{utt.id}")
            try:
                await asyncio.wait([self._render_task])
            finally:
                if not self._render_task.done():
                    self._render_task.cancel()
            task, self._render_task = self._render_task, None
            if task.cancelled():
                continue  # interrupted: _cut already resolved it and reset the encoder
            exc = task.exception()
            if exc is not None:
                message = str(exc) if isinstance(exc, EngineError) else f"internal error: {exc!r}"
                if not isinstance(exc, EngineError):
                    log.error("rendering utterance %d failed", utt.id, exc_info=exc)
                self._report_error("engine" if isinstance(exc, EngineError) else "internal")
                # What was already queued still plays; the rest of the text is reported failed.
                self._encoder.reset()
                self._queue_frames(utt, [], end=True)
                utt.resolve(SpeechOutcome.FAILED, played_frames=utt.frames_sent, error=message)

    async def _render(self, utt: Utterance) -> None:
        source = utt.source
        if isinstance(source, AudioClip):
            # A second at a time: resampling a long clip in one go would hold the event loop, and
            # its frames would bypass the queue's bound.
            # Loops run the same buffer through one encoder: its resampler state carries over,
            # exactly as if the loops were one long clip, without that clip ever existing.
            encoder = MulawFrameEncoder(source.sample_rate)
            for _ in range(max(1, source.loops)):
                for start in range(0, source.audio.size, source.sample_rate):
                    await self._put(utt, encoder.push(source.audio[start : start + source.sample_rate]))
                    await asyncio.sleep(0)
            await self._put(utt, encoder.flush(), end=True)
            return
        if isinstance(source, str) and await self._render_phrase(utt, source):
            return
        segmenter = TextSegmenter(self.preset.segmentation)
        if isinstance(source, str):  # too long for the phrase cache, or its rendering failed
            for index, segment in enumerate(segment_text(source, self.preset.segmentation)):
                await self._render_segment(utt, segment, index)
        else:
            index = 0
            try:
                async for token in source:
                    if not isinstance(token, str):
                        raise EngineError(f"agent sent a non-text token: {token!r}")
                    utt.text += token
                    for segment in segmenter.push(token):
                        await self._render_segment(utt, segment, index)
                        index += 1
                for segment in segmenter.flush():
                    await self._render_segment(utt, segment, index)
                    index += 1
            finally:
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            utt.text = utt.text.strip()
        await self._put(utt, self._encoder.flush(), end=True)

    def _deadline(self) -> float | None:
        """When the audio rendered next is needed: what is queued or buffered at Twilio plays first."""
        if not self._deadline_scheduling:
            return None
        return time.monotonic() + self.clock.buffered_s() + self._queued_frames * FRAME_S

    def _engine_started(self, utt: Utterance, started: float) -> None:
        elapsed = (time.monotonic() - started) * 1000
        if utt.engine_first_chunk_ms is None:
            utt.engine_first_chunk_ms = elapsed
        if self.hooks.on_engine_first_chunk:
            self.hooks.on_engine_first_chunk(elapsed / 1000)

    async def _render_segment(self, utt: Utterance, segment: str, index: int) -> None:
        request = SpeechRequest(segment, self.voice_id, self.preset, self.voice,
                                first_in_turn=index == 0, deadline=self._deadline())
        started = time.monotonic()
        if utt.first_segment_at is None:
            utt.first_segment_at = started
        entry: list[object] = [segment, utt.frames_queued, None]
        utt.segments.append(entry)
        first = True
        async for batch in frames_for_segment(self.engine, self._encoder, request):
            if first:
                first = False
                self._engine_started(utt, started)
            await self._put(utt, batch)
        entry[2] = utt.frames_queued
        await self._put(utt, [], segment=len(utt.segments) - 1)

    def _cache_key(self, text: str) -> PhraseKey:
        return PhraseKey(self.engine.name, self.voice_id, self.preset.name, text)

    async def _render_phrase(self, utt: Utterance, text: str) -> bool:
        """Speak a whole known text through the phrase cache: from the cache, from a rendering in
        progress (the webhook's greeting pre-render, or another call saying the same prompt), or
        from a rendering started here and shared with calls that ask for it meanwhile. Segment
        marks are placed exactly as the live path places them. False if it cannot be served (too
        long, or a rendering started elsewhere failed before any audio), to render live instead;
        a failure of the rendering this call started is reported, not tried twice."""
        if self._cache is None or not self._cache.cacheable(text):
            return False
        key = self._cache_key(text)
        cache = self._cache
        utt.from_cache = cache.has(key)
        segments = segment_text(text, self.preset.segmentation)

        def render() -> AsyncIterator[list[bytes]]:
            # Scheduled by the most urgent call following it, not only by the one that started it.
            return utterance_frames(self.engine, text, voice_id=self.voice_id, preset=self.preset,
                                    voice=self.voice, deadline=lambda: cache.deadline(key))

        started = time.monotonic()
        utt.first_segment_at = started
        entry: list[object] = [segments[0] if segments else text, 0, None]
        utt.segments.append(entry)
        try:
            async with contextlib.aclosing(cache.follow(key, render, deadline=self._deadline)) as pieces:
                async for piece in pieces:
                    if piece.frames:
                        if not utt.from_cache and utt.engine_first_chunk_ms is None:
                            self._engine_started(utt, started)
                        await self._put(utt, piece.frames)
                    if piece.ends_segment:
                        entry[2] = utt.frames_queued
                        await self._put(utt, [], segment=len(utt.segments) - 1)
                        following = len(utt.segments)
                        if following < len(segments):
                            entry = [segments[following], utt.frames_queued, None]
                            utt.segments.append(entry)
        except Exception:
            if utt.frames_queued or not utt.from_cache:
                raise  # audio already queued, or this call's own rendering failed: report it
            utt.from_cache = False
            utt.segments.clear()
            utt.engine_first_chunk_ms = None
            return False  # the rendering failed before any audio: render live instead
        if entry[2] is None:
            entry[2] = utt.frames_queued
        await self._put(utt, [], end=True)
        return True

    async def _put(self, utt: Utterance, frames: list[bytes], *, end: bool = False,
                   segment: int | None = None) -> None:
        """Queue frames (and a mark), waiting while the queue holds ``max_queued_frames``."""
        while self._queued_frames and self._queued_frames + len(frames) > self._max_queued_frames:
            self._room.clear()
            await self._room.wait()
        if utt.generation != self.generation:
            raise asyncio.CancelledError  # cut while we waited
        self._queue_frames(utt, frames, end=end, segment=segment)

    def _queue_frames(self, utt: Utterance, frames: list[bytes], *, end: bool = False,
                      segment: int | None = None) -> None:
        mark = None
        if end:
            mark = MarkName(self.generation, utt.id).encode()
        elif segment is not None:
            mark = MarkName(self.generation, utt.id, segment=segment).encode()
        utt.frames_queued += len(frames)
        self._frames.append((utt, frames, mark))
        self._queued_frames += len(frames)
        self._frames_ready.set()

    # ---- sending -----------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        while True:
            if not self._frames:
                self._frames_ready.clear()
                await self._frames_ready.wait()
                continue
            utt, frames, mark = self._frames.popleft()
            sent = 0
            while sent < len(frames) and utt.generation == self.generation:
                room = self.clock.room_frames()
                if room == 0:
                    await asyncio.sleep(self.clock.wait_s(self._tick_s))
                    continue
                batch = frames[sent : sent + room]
                gap = self.clock.on_sent(len(batch), continuing=utt.frames_sent > 0)
                if gap > 0:
                    utt.underruns += 1
                    utt.underrun_ms += gap * 1000
                    if self.hooks.on_underrun:
                        self.hooks.on_underrun(gap)
                if utt.first_frame_at is None:
                    utt.first_frame_at = time.monotonic()
                    if self.hooks.on_first_frame:
                        self.hooks.on_first_frame(utt, utt.first_frame_at - utt.created_at)
                for frame in batch:
                    if utt.generation != self.generation:
                        break  # cut while a send waited: nothing more of it may follow the clear
                    await self._send(self._out.media(frame))
                if utt.generation != self.generation:
                    break  # _cut already forgot the rest and reset the queue count
                sent += len(batch)
                utt.frames_sent += len(batch)
                self._queued_frames -= len(batch)
                self._room.set()
                if self.hooks.on_frames_sent:
                    self.hooks.on_frames_sent(len(batch))
                if self.hooks.on_audio_sent:
                    self.hooks.on_audio_sent(batch)
            if utt.generation != self.generation:
                continue
            if mark is not None:
                await self._send(self._out.mark(mark))
                if utt.generation != self.generation:
                    continue  # cut while the mark was being sent: its echo proves nothing
                if MarkName.parse(mark).is_end:
                    utt.end_mark_sent_at = time.monotonic()
                self._mark_sent(mark)

    async def _send(self, text: str) -> None:
        await self._send_text(text)

    def _report_error(self, kind: str) -> None:
        if self.hooks.on_error:
            self.hooks.on_error(kind)
