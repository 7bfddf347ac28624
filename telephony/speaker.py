"""One call's outbound voice: utterances -> renderer -> paced frames and marks -> socket.

``Speaker`` is the façade the call and its agent use; the work is done by three parts in
telephony/outbound/:
- the ``SpeechQueue`` holds utterances in the order they play, and cuts them (barge-in,
  preemption) by bumping the generation;
- the ``Renderer`` turns each utterance into typed render items (segment starts, frame batches,
  segment ends) from the engine or the phrase cache;
- the ``Pacer`` queues those frames (bounded, so the engine never runs more than a few seconds
  ahead of what the caller hears), sends them against a ``PlayoutClock`` and sends a ``Mark`` after
  every segment and utterance; its ``MarkWatch`` notices a Twilio side that stopped playing.

Two tasks per call, owned by the ``Speaker`` and cancelled by ``aclose``: the render loop (one
utterance at a time through the renderer into the pacer) and the pacer's send loop.

``interrupt`` bumps the generation, so marks Twilio echoes after our ``clear`` (all pending ones
come back) are recognised as not played. A mark not echoed within ``mark_grace_s`` after its audio
was due means nobody is playing our audio: the utterances in flight then fail (``FAILED``, with
``heard_text`` up to the last echoed mark and the reason in ``error``), and the ``on_stalled`` hook
ends the call. Why FAILED rather than INTERRUPTED: nobody interrupted; the agent should learn that
its speech was not delivered, and why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from telephony.agents.base import SpeechOutcome, SpeechResult
from telephony.outbound import (
    AudioClip,
    MarkWatch,
    Pacer,
    Renderer,
    RenderLoop,
    SpeakerHooks,
    SpeechQueue,
    SpeechSource,
    Utterance,
)
from telephony.playout import PlayoutClock
from telephony.twilio.protocol import OutboundEncoder
from tts_core.engines.base import Engine
from tts_core.phrase_cache import PhraseCache, PhraseKey
from tts_core.presets import Preset
from tts_core.voices import Voice

log = logging.getLogger(__name__)

__all__ = ["AudioClip", "Speaker", "SpeakerHooks", "Utterance"]


class Speaker:
    """The outbound pipeline of one call behind the methods the call and the agent use."""

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
        self.hooks = hooks or SpeakerHooks()
        self._send_text = send_text
        self._out = outbound
        self.queue = SpeechQueue(self.hooks, max_pending_utterances)
        self.pacer = Pacer(send_text=send_text, outbound=outbound, clock=clock or PlayoutClock(),
                           marks=MarkWatch(mark_grace_s, self._marks_overdue), hooks=self.hooks,
                           max_queued_frames=max_queued_frames, tick_s=tick_s)
        self.renderer = Renderer(engine=engine, voice_id=voice_id, preset=preset, voice=voice,
                                 phrase_cache=phrase_cache, hooks=self.hooks,
                                 deadline=self.pacer.deadline if deadline_scheduling else lambda: None)
        self._render_loop = RenderLoop(self.queue, self.renderer, self.pacer, self._report_error)
        self.stalled: str | None = None
        """Why playback is considered stopped (marks not echoed), once it is."""
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()

    @property
    def generation(self) -> int:
        return self.queue.generation

    @property
    def clock(self) -> PlayoutClock:
        return self.pacer.clock

    @property
    def busy(self) -> bool:
        """Something is queued, rendering or playing."""
        return self.queue.busy

    @property
    def speaking_interruptibly(self) -> bool:
        """The caller is hearing (or about to hear) audio that barge-in may cut."""
        return self.queue.speaking_interruptibly

    def cache_key(self, text: str) -> PhraseKey:
        return self.renderer.cache_key(text)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._render_loop.run(), name="speaker-render"),
            asyncio.create_task(self.pacer.run(), name="speaker-send"),
        ]

    async def aclose(self) -> None:
        """Stop everything; whatever was not played is resolved as cancelled."""
        self.queue.closed = True
        self.pacer.stop()
        owned = [t for t in [*self._tasks, self._render_loop.current, *self._side_tasks] if t is not None]
        for task in owned:
            task.cancel()
        await asyncio.gather(*owned, return_exceptions=True)
        self.pacer.marks.clear()
        played = self.pacer.played_frames(self.queue.active)
        self.queue.resolve_all(SpeechOutcome.CANCELLED, lambda u: played.get(u.id, 0))

    # ---- submitting --------------------------------------------------------------------------
    def submit(self, source: SpeechSource, *, interruptible: bool = True,
               preemptible: bool = False) -> Utterance:
        """Queue ``source``; its ``future`` settles when it is played, cut, failed or cancelled."""
        queue = self.queue
        utt = queue.create(source, interruptible=interruptible, preemptible=preemptible)
        if queue.closed:
            utt.resolve(SpeechOutcome.CANCELLED)
        elif self.stalled:
            utt.resolve(SpeechOutcome.FAILED, error=self.stalled)
        elif queue.full:
            utt.resolve(SpeechOutcome.FAILED, error="too many utterances queued for this call")
            self._report_error("queue_full")
        else:
            # Preemptible speech still to come gives way to the new utterance; non-preemptible
            # speech queued behind it keeps its place.
            if queue.preemptible_now:
                self._cut(reason="preempted", keep=lambda u: not u.preemptible)
            queue.append(utt)
        return utt

    async def say(self, source: SpeechSource, **kwargs: bool) -> SpeechResult:
        # shield: an agent task being cancelled must not cancel the utterance's bookkeeping.
        return await asyncio.shield(self.submit(source, **kwargs).future)

    async def drain(self) -> None:
        """Wait until everything submitted so far is played (or otherwise resolved)."""
        futures = self.queue.unresolved()
        if futures:
            await asyncio.gather(*futures, return_exceptions=True)

    async def finish_current(self) -> None:
        """Shutting down: the utterance already playing ends normally; queued ones are dropped
        (resolved cancelled) and new ones refused."""
        self.queue.closed = True
        self.queue.drop_pending()
        await self.drain()

    # ---- barge-in ----------------------------------------------------------------------------
    async def interrupt(self) -> SpeechResult | None:
        """Caller barge-in: stop generation, drop unsent audio, ``clear`` Twilio's buffer.

        Returns what became of the utterance the caller was hearing, or None if nothing
        interruptible was playing.
        """
        if not self.speaking_interruptibly:
            return None
        first = self.queue.active[0]
        self._cut(reason="barge-in", keep=lambda u: not u.interruptible)
        await self._clear_twilio()
        return first.future.result() if first.future.done() else None

    def _cut(self, reason: str, keep: Callable[[Utterance], bool]) -> None:
        """Synchronously forget all unplayed audio; ``clear`` goes to Twilio right after.

        Utterances not yet started for which ``keep`` is true survive the cut and play after it.
        """
        played = self.pacer.played_frames(self.queue.active)
        self._render_loop.cancel_current()
        self.queue.cut(lambda u: played.get(u.id, 0), keep)
        self.pacer.cut(self.queue.generation)
        self.renderer.reset()
        log.debug("speech cut (%s), generation now %d", reason, self.queue.generation)
        if reason == "preempted":
            task = asyncio.get_running_loop().create_task(self._clear_twilio())
            self._side_tasks.add(task)  # owned: cancelled by aclose like every other task
            task.add_done_callback(self._side_tasks.discard)

    async def _clear_twilio(self) -> None:
        """Twilio drops what it buffered of ours (and echoes every mark still pending)."""
        await self._send_text(self._out.clear())

    # ---- marks from Twilio -------------------------------------------------------------------
    def on_mark(self, name: str) -> None:
        """Twilio echoed a mark: what it stands for has been played."""
        mark = self.pacer.marks.echoed(name)
        if mark is None:
            return  # echoed by a clear, or not ours: proves nothing about playback
        utt = self.queue.get(mark.utterance)
        if utt is None:
            return
        if mark.segment is not None:
            utt.confirm_segment(mark.segment)
            return
        utt.frames_confirmed = utt.frames_sent
        if utt.end_mark_sent_at is not None:
            utt.mark_rtt_ms = (time.monotonic() - utt.end_mark_sent_at) * 1000
        utt.resolve(SpeechOutcome.PLAYED, played_frames=utt.frames_sent)
        self.queue.finish(utt)

    def _marks_overdue(self, reason: str) -> None:
        """Nobody is playing what we send: fail what is in flight (heard up to the last echoed
        mark), send nothing more, and let the call end."""
        if self.queue.closed or self.stalled:
            return
        self.stalled = reason
        log.warning("%s; utterances in flight fail", reason)
        self._report_error("playback_stalled")
        self.pacer.marks.clear()
        self._render_loop.cancel_current()
        self.pacer.stop()
        for task in self._tasks:
            task.cancel()
        self.queue.resolve_all(SpeechOutcome.FAILED, lambda u: u.frames_confirmed, error=reason)
        self.pacer.drop_queued()
        if self.hooks.on_stalled:
            self.hooks.on_stalled(reason)

    def _report_error(self, kind: str) -> None:
        if self.hooks.on_error:
            self.hooks.on_error(kind)
