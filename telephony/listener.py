"""One call's ears: caller frames -> turn events -> decodes -> caller speech handed to the agent.

``feed`` runs on the event loop for every inbound frame and never waits: decodes run as tasks owned
by the listener (cancelled by ``aclose``) on the shared recogniser, which keeps inference off the
loop. Finals reach the agent in turn order; a speculative decode whose audio turned out to be the
whole turn *is* the final (no second decode); a partial is dropped if its turn already has a final.
Without a recogniser (VOICE_BRIDGE_STT=off) only barge-in runs, and only while the bot speaks
interruptibly, exactly as before recognition existed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from telephony.metrics import Metrics
from telephony.turns import (
    BargeIn,
    EchoReference,
    PartialDue,
    Resumed,
    Speculate,
    TurnDropped,
    TurnEnded,
    TurnEvent,
    TurnTracker,
)
from tts_core.audio.inbound import to_recogniser_rate
from tts_core.stt import SAMPLE_RATE, Recogniser, RecogniserError, Transcript

log = logging.getLogger(__name__)

PARTIAL_DEADLINE_S = 5.0
"""Partials queue behind every final and speculative decode (their deadline is this far away)."""


class CallerListener:
    def __init__(
        self,
        tracker: TurnTracker,
        *,
        recogniser: Recogniser | None,
        on_barge_in: Callable[[], None],
        on_speech: Callable[[str, bool], None],
        echo: EchoReference | None = None,
        metrics: Metrics | None = None,
        language: str | None = None,
        name: str = "call",
    ) -> None:
        self.tracker = tracker
        self.recogniser = recogniser
        self.echo = echo
        self._on_barge_in = on_barge_in
        self._on_speech = on_speech
        self._metrics = metrics
        self.language = language
        self.name = name
        self.turn_log: list[dict[str, Any]] = []
        """Per caller turn, for the call's log line."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._speculation: tuple[int, asyncio.Task[Transcript]] | None = None
        self._partial: asyncio.Task[None] | None = None
        self._last_final: asyncio.Task[None] | None = None
        self._finalised_turn = 0
        self._last_partial_text = ""
        self._last_speech_at = 0.0
        """Wall time of the last caller frame that counted as speech (the end of speech, once the
        turn ends)."""
        self._vad_active = False
        self._closed = False

    # ---- frames in ------------------------------------------------------------------------------
    def needs_audio(self, *, interruptible: bool) -> bool:
        """Whether ``feed`` would look at this frame: lets the caller skip decoding it (with no
        recogniser, frames are only heard while the bot speaks interruptibly)."""
        return not self._closed and (self.recogniser is not None or interruptible
                                     or self._vad_active)

    def feed(self, frame: np.ndarray | bytes, *, interruptible: bool) -> None:
        """One inbound frame: 8 kHz int16 samples, or Twilio's μ-law bytes as they came (the same
        decisions, decoded only where needed). Never blocks."""
        if self._closed:
            return
        echo_floor = self.echo.floor() if self.echo is not None else 0.0
        if self.recogniser is None:
            # Barge-in only: VAD runs while there is something to interrupt.
            detector = self.tracker.detector
            if not interruptible:
                if self._vad_active:
                    detector.reset()
                    self._vad_active = False
                return
            self._vad_active = True
            fired = (detector.feed_mulaw(frame, echo_floor=echo_floor) if isinstance(frame, bytes)
                     else detector.feed(frame, echo_floor=echo_floor))
            if fired is not None:
                self._on_barge_in()
            return
        tracker = self.tracker
        events = (tracker.feed_mulaw(frame, interruptible=interruptible, echo_floor=echo_floor)
                  if isinstance(frame, bytes)
                  else tracker.feed(frame, interruptible=interruptible, echo_floor=echo_floor))
        for event in events:
            self._dispatch(event)
        if tracker.detector.last_frame_speech:
            self._last_speech_at = time.monotonic()

    def _dispatch(self, event: TurnEvent) -> None:
        if isinstance(event, BargeIn):
            self._on_barge_in()
        elif isinstance(event, Speculate):
            self._drop_speculation()
            wait = (self.tracker.settings.endpoint_ms - self.tracker.settings.speculative_ms) / 1000
            self._speculation = (event.turn, self._spawn(self._decode(event.audio, time.monotonic() + wait,
                                                                      "speculative")))
        elif isinstance(event, Resumed):
            self._drop_speculation()
        elif isinstance(event, TurnEnded):
            self._end_turn(event)
        elif isinstance(event, TurnDropped):
            self._drop_speculation()
            self.turn_log.append({"turn": event.turn, "end": "noise"})
            if self._metrics is not None:
                self._metrics.caller_turns.labels(outcome="noise").inc()
        elif isinstance(event, PartialDue):
            partial = self._partial
            recogniser = self.recogniser
            if (partial is None or partial.done()) and recogniser is not None \
                    and recogniser.has_free_slot():
                self._partial = self._spawn(self._deliver_partial(event.turn, event.audio))

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation[1].cancel()
            self._speculation = None

    def _end_turn(self, event: TurnEnded) -> None:
        ended_at = time.monotonic()
        speech_end = self._last_speech_at or ended_at
        speculation, self._speculation = self._speculation, None
        if event.speculated and speculation is not None and speculation[0] == event.turn:
            decode, hit = speculation[1], "hit"
        else:
            if speculation is not None:
                speculation[1].cancel()
            decode = self._spawn(self._decode(event.audio, ended_at, "final"))
            hit = "off" if not self.tracker.settings.speculative_ms else "miss"
        entry: dict[str, Any] = {"turn": event.turn, "speech_ms": event.speech_ms, "end": event.reason,
                                 "speculative": hit}
        self.turn_log.append(entry)
        self._last_final = self._spawn(self._deliver_final(event.turn, decode, self._last_final,
                                                           speech_end, entry))

    # ---- decoding -------------------------------------------------------------------------------
    async def _decode(self, audio: np.ndarray, deadline: float, kind: str) -> Transcript:
        assert self.recogniser is not None
        samples = to_recogniser_rate(audio, SAMPLE_RATE)
        transcript = await self.recogniser.transcribe(samples, language=self.language, deadline=deadline)
        if self._metrics is not None:
            self._metrics.stt_decode.observe(transcript.decode_ms / 1000)
        log.debug("%s: %s decode of %.2f s in %.0f ms: %r", self.name, kind, transcript.duration,
                  transcript.decode_ms, transcript.text)
        return transcript

    async def _deliver_final(self, turn: int, decode: asyncio.Task[Transcript],
                             previous: asyncio.Task[None] | None, speech_end: float,
                             entry: dict[str, Any]) -> None:
        text = ""
        try:
            transcript = await decode
            text = transcript.text
            entry["decode_ms"] = round(transcript.decode_ms, 1)
        except RecogniserError as exc:
            log.warning("%s: caller turn %d not recognised: %s", self.name, turn, exc)
            entry["error"] = str(exc)[:200]
        except asyncio.CancelledError:
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            entry["error"] = "decode cancelled"
        if previous is not None:
            await asyncio.wait([previous])  # finals reach the agent in turn order
        self._finalised_turn = max(self._finalised_turn, turn)
        self._last_partial_text = ""
        delay = time.monotonic() - speech_end
        entry["final_after_speech_ms"] = round(delay * 1000, 1)
        entry["chars"] = len(text)
        outcome = "prompt" if text else ("failed" if "error" in entry else "empty")
        if self._metrics is not None:
            self._metrics.caller_turns.labels(outcome=outcome).inc()
            if text:
                self._metrics.stt_final_delay.observe(delay)
        if text and not self._closed:
            self._on_speech(text, True)

    async def _deliver_partial(self, turn: int, audio: np.ndarray) -> None:
        try:
            transcript = await self._decode(audio, time.monotonic() + PARTIAL_DEADLINE_S, "partial")
        except RecogniserError as exc:
            log.info("%s: partial decode failed: %s", self.name, exc)
            return
        text = transcript.text
        if (turn > self._finalised_turn and self.tracker.in_turn and self.tracker.turn == turn
                and text and text != self._last_partial_text and not self._closed):
            self._last_partial_text = text
            self._on_speech(text, False)

    # ---- tasks ------------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"listener:{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        task.add_done_callback(_retrieve)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)

    async def aclose(self) -> None:
        """Cancel every decode and delivery this call started; nothing is delivered after."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A dropped speculative decode's failure is expected, not an unretrieved-exception warning."""
    if not task.cancelled():
        task.exception()
