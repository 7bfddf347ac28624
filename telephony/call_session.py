"""One phone call, from Twilio's ``start`` to its end: the owner of every task the call starts.

Caller audio flows one way (socket -> decoder -> barge-in detector / agent); agent text flows the
other (agent -> speaker -> socket). The reader never waits on the agent or the engine: slow readers
make Twilio drop caller audio (warning 31930). Everything the session starts is cancelled when the
call ends, whatever the reason (stop, disconnect, agent gone, error), and one structured log line
sums the call up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from binascii import a2b_base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

from telephony.agents.base import Agent, AgentError, CallInfo, EndResult, SpeechOutcome, SpeechResult
from telephony.barge_in import BargeInSettings
from telephony.listener import CallerListener
from telephony.media_fastpath import scan_media
from telephony.playout import PlayoutClock
from telephony.services import Bridge
from telephony.speaker import AudioClip, Speaker, SpeakerHooks, Utterance
from telephony.turns import EchoReference, TurnSettings, TurnTracker
from telephony.twilio_media import (
    Dtmf,
    Mark,
    Media,
    OutboundEncoder,
    ProtocolError,
    Start,
    Stop,
    parse_inbound,
)
from telephony.untrusted import close_reason
from tts_core.audio import MulawDecoder
from tts_core.presets import Preset
from tts_core.voices import Voice

log = logging.getLogger("voice_bridge.call")

AGENT_EVENT_QUEUE = 256
PRIVATE_PARAMETERS = frozenset({"token", "agentUrl"})
AGENT_STOP_TIMEOUT_S = 5.0
PEER_STALLED = 1011
"""Close code when Twilio stopped playing or reading what we send (see ``abort``)."""


class CallSession:
    """Lives for one media stream. ``run`` returns when the call is over and everything is freed."""

    def __init__(
        self,
        *,
        bridge: Bridge,
        start: Start,
        agent: Agent,
        voice_id: str,
        voice: Voice | None,
        preset: Preset,
        send_text: Callable[[str], Awaitable[None]],
        close_socket: Callable[[int, str], Awaitable[None]],
        greeting: str = "",
        auth_mode: str = "",
        recorder: Any = None,
        voice_load_ms: float | None = None,
    ) -> None:
        self.bridge = bridge
        self.start = start
        self.agent = agent
        self.greeting = greeting
        self.auth_mode = auth_mode
        self.recorder = recorder
        self.voice_load_ms = voice_load_ms
        self._close_socket = close_socket
        params = start.custom_parameters
        self.info = CallInfo(
            call_sid=start.call_sid, stream_sid=start.stream_sid, account_sid=start.account_sid,
            # The stream token is a credential: it never leaves the bridge.
            custom_parameters={k: v for k, v in params.items() if k not in PRIVATE_PARAMETERS},
            from_number=params.get("from", ""),
            to_number=params.get("to", ""),
            direction=params.get("direction", "inbound") or "inbound",
        )
        metrics = bridge.metrics
        self.started_at = time.monotonic()
        self.turns: list[dict[str, Any]] = []
        self.protocol_errors: dict[str, int] = {}
        self.barge_ins = 0
        self.inbound_frames = 0
        self.dtmf_digits = 0
        self.end_reason = "unknown"
        self.hangup: str | None = None
        """What a requested hang-up came to: hung_up, already_ended, failed or unavailable
        (requested: the stream ended while the REST request was under way)."""
        self._ending = False
        self._reader: asyncio.Task[Any] | None = None
        """The task running ``run`` while it waits for Twilio's messages (None otherwise)."""
        self._aborted = False
        self._events: asyncio.Queue[tuple[str, tuple[Any, ...]]] = asyncio.Queue(AGENT_EVENT_QUEUE)
        self._agent_task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._decoder = MulawDecoder()
        settings = bridge.settings
        # One voice-activity state machine for barge-in and end of turn (telephony/turns.py).
        tracker = TurnTracker(
            TurnSettings(
                endpoint_ms=settings.stt_endpoint_ms, speculative_ms=settings.stt_speculative_ms,
                preroll_ms=settings.stt_preroll_ms, max_turn_ms=settings.stt_max_turn_ms,
                partials=params.get("partialPrompts", "").lower() == "true",
                partial_interval_ms=settings.stt_partial_interval_ms,
            ),
            BargeInSettings(aggressiveness=settings.barge_in_aggressiveness,
                            min_speech_ms=settings.barge_in_min_speech_ms),
        )
        echo = EchoReference(settings.stt_echo_margin_db) if settings.stt_echo_margin_db > 0 else None
        self.listener = CallerListener(
            tracker, recogniser=bridge.recogniser, echo=echo, metrics=metrics,
            on_barge_in=lambda: self._spawn(self._interrupt(), "barge-in"),
            on_speech=lambda text, final: self._post("speech", text, final),
            name=start.call_sid,
        )
        self.speaker = Speaker(
            engine=bridge.engine, voice_id=voice_id, voice=voice, preset=preset,
            send_text=send_text, outbound=OutboundEncoder(start.stream_sid),
            phrase_cache=bridge.phrases, clock=PlayoutClock(settings.lead_ms),
            deadline_scheduling=settings.engine_scheduling == "deadline",
            mark_grace_s=settings.mark_timeout_s,
            hooks=SpeakerHooks(
                on_first_frame=self._on_first_frame,
                on_underrun=lambda gap: (metrics.underruns.inc(), metrics.underrun_seconds.inc(gap)),
                on_frames_sent=metrics.frames_sent.inc,
                on_audio_sent=echo.on_sent if echo is not None else None,
                on_engine_first_chunk=metrics.engine_first_chunk.observe,
                on_finished=self._on_utterance_finished,
                on_error=metrics.error,
                on_stalled=lambda reason: self.abort("twilio stopped playing audio", reason),
            ),
        )

    # ---- CallControl (what agents may do) ---------------------------------------------------------
    async def say(self, text: str | AsyncIterator[str], *, interruptible: bool = True,
                  preemptible: bool = False) -> SpeechResult:
        if self.recorder is not None:
            text = self._recorded(text)
        return await self.speaker.say(text, interruptible=interruptible, preemptible=preemptible)

    def _recorded(self, text: str | AsyncIterator[str]) -> str | AsyncIterator[str]:
        """Record what the agent says as ConversationRelay ``text`` messages, as it flows."""
        recorder = self.recorder
        if isinstance(text, str):
            recorder.agent_message({"type": "text", "token": text, "last": True})
            return text

        async def tokens() -> AsyncIterator[str]:
            try:
                async for token in text:
                    recorder.agent_message({"type": "text", "token": token, "last": False})
                    yield token
            finally:
                recorder.agent_message({"type": "text", "token": "", "last": True})

        return tokens()

    async def play_audio(self, audio: np.ndarray, sample_rate: int, *, label: str = "audio",
                         interruptible: bool = True, preemptible: bool = False,
                         loops: int = 1) -> SpeechResult:
        clip = AudioClip(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, label, loops)
        if self.recorder is not None:
            self.recorder.agent_message({"type": "play", "source": label})
        return await self.speaker.say(clip, interruptible=interruptible, preemptible=preemptible)

    async def end(self, reason: str = "agent ended", *, hangup: bool = False) -> EndResult:
        """Let queued speech finish, then close the stream (Twilio moves to the next TwiML verb).

        With ``hangup``, the call itself is ended through Twilio's REST API in between: after the
        drain (every utterance's end mark echoed, so the goodbye was heard) and before the stream
        closes (closing first would start the next TwiML verb)."""
        if self._ending:
            return EndResult(error="the call is already ending")
        self._ending = True
        if self.recorder is not None:
            self.recorder.agent_message({"type": "end", "handoffData": reason})
        await self.speaker.drain()
        self.end_reason = reason
        result = await self._hang_up() if hangup else EndResult()
        await self._close_socket(1000, close_reason(reason))
        return result

    async def _hang_up(self) -> EndResult:
        twilio = self.bridge.twilio
        if twilio is None:
            self.hangup = "unavailable"
            error = ("hang-up needs TWILIO_ACCOUNT_SID (with TWILIO_AUTH_TOKEN or an API key pair); "
                     "the media stream was closed instead, so Twilio continues with the next TwiML verb")
            log.info("call %s: %s", self.info.call_sid, error)
            return EndResult(error=error)
        self.hangup = "requested"  # what the summary says if Twilio stops the stream first
        outcome = await twilio.hang_up(self.info.call_sid)
        self.hangup = outcome.outcome.value
        if outcome.ok:
            return EndResult(hung_up=True)
        self.bridge.metrics.error("hangup_failed")
        return EndResult(error=f"hang-up through Twilio's REST API failed after {outcome.attempts} "
                               f"attempt(s) ({outcome.error}); the media stream was closed instead, so "
                               "Twilio continues with the next TwiML verb")

    async def wind_down(self, reason: str) -> None:
        """Drain deadline (telephony/drain.py): the utterance being heard plays to its end, what is
        queued after it is dropped and nothing new is spoken; then the stream closes."""
        if self._ending:
            return
        self._ending = True
        log.info("call %s: winding down (%s)", self.info.call_sid, reason)
        await self.speaker.finish_current()
        self.end_reason = reason
        await self._close_socket(1000, reason[:120])

    # ---- the call ------------------------------------------------------------------------------------
    async def run(self, messages: AsyncIterator[str | bytes]) -> None:
        bridge = self.bridge
        bridge.metrics.active_calls.inc()
        bridge.metrics.calls_total.inc()
        bridge.calls[self.info.stream_sid] = self  # by stream: a call may open a second stream
        self.speaker.start()
        self._agent_task = asyncio.create_task(self._agent_loop(), name=f"agent:{self.info.call_sid}")
        try:
            if self.greeting:
                self._spawn(self.speaker.say(self.greeting), "greeting")
            self._post("start")
            self._reader = asyncio.current_task()  # ``abort`` may cancel the wait for a message
            try:
                async for message in messages:
                    if not self.feed(message):
                        break
                else:
                    if self.end_reason == "unknown":
                        self.end_reason = "socket closed"
            except asyncio.CancelledError:
                reader = self._reader
                if not self._aborted or reader is None or reader.uncancel() > 0:
                    raise  # cancelled by someone else (server shutdown), not by abort
            finally:
                self._reader = None  # from here on, abort cancels nothing
        except Exception as exc:  # a bug in one call must end that call only
            self.end_reason = f"error: {exc!r}"
            bridge.metrics.error("call_crash")
            log.exception("call %s failed", self.info.call_sid)
        finally:
            await self._shutdown()

    def abort(self, reason: str, detail: str = "") -> None:
        """End the call now, whatever the socket does: Twilio stopped playing or reading what we
        send, so nothing more can be said and waiting for its next message could take until the
        ping timeout. Closes with ``PEER_STALLED`` (the close is bounded: a peer that does not
        read may never take the frame) and stops reading."""
        if self._ending:
            return
        self._ending = True
        self.end_reason = reason
        self.bridge.metrics.error("twilio_stalled")
        log.warning("call %s: %s (%s); ending the call", self.info.call_sid, reason,
                    detail or "no detail")

        async def close_then_stop() -> None:
            try:
                await self._close_socket(PEER_STALLED, reason)
            finally:
                if self._reader is not None:  # still waiting for a message that may never come
                    self._aborted = True
                    self._reader.cancel()

        self._spawn(close_then_stop(), "abort")

    def feed(self, raw: str | bytes) -> bool:
        """One message from Twilio (recorded, then handled); False when the call is over.

        ``run`` calls it for each message its iterator yields; a transport that delivers messages
        by callback (telephony/fast_stream.py) calls it directly, with no task switch per message.
        """
        if self.recorder is not None:
            self.recorder.twilio_message(raw)
        return self._handle(raw)

    def _handle(self, raw: str | bytes) -> bool:
        """Process one Twilio message; False when the call is over. Never blocks."""
        media = scan_media(raw)  # the common case, without json.loads (telephony/media_fastpath.py)
        if media is not None:
            stream_sid, payload = media
            if stream_sid != self.info.stream_sid:
                self._protocol_error("wrong_stream_sid", stream_sid)
                return True
            self.inbound_frames += 1
            interruptible = self.speaker.speaking_interruptibly
            if self.listener.needs_audio(interruptible=interruptible):  # decode only if heard
                self.listener.feed(self._decoder.to_pcm16(a2b_base64(payload)),
                                   interruptible=interruptible)
            return True
        try:
            message = parse_inbound(raw)
        except ProtocolError as exc:
            self._protocol_error(exc.kind, str(exc))
            return True
        if isinstance(message, Media):
            if message.stream_sid and message.stream_sid != self.info.stream_sid:
                self._protocol_error("wrong_stream_sid", message.stream_sid)
                return True
            self.inbound_frames += 1
            self._on_caller_audio(message.payload)
        elif isinstance(message, Mark):
            self.speaker.on_mark(message.name)
        elif isinstance(message, Dtmf):
            self.dtmf_digits += 1
            self._post("dtmf", message.digit)
        elif isinstance(message, Stop):
            self.end_reason = "twilio stop"
            return False
        elif isinstance(message, Start):
            self._protocol_error("duplicate_start", "start received twice; ignored")
        return True

    def _on_caller_audio(self, payload: bytes) -> None:
        self.listener.feed(self._decoder.to_pcm16(payload),
                           interruptible=self.speaker.speaking_interruptibly)

    async def _interrupt(self) -> None:
        result = await self.speaker.interrupt()
        if result is None:
            return
        self.barge_ins += 1
        self.bridge.metrics.barge_ins.inc()
        self._post("interrupt", result.heard_text, result.played_ms)

    def _protocol_error(self, kind: str, detail: str) -> None:
        self.protocol_errors[kind] = self.protocol_errors.get(kind, 0) + 1
        self.bridge.metrics.error(f"protocol_{kind}")
        if self.protocol_errors[kind] <= 3:
            log.warning("call %s: %s: %s", self.info.call_sid, kind, detail[:200])

    # ---- agent ------------------------------------------------------------------------------------
    def _post(self, event: str, *args: Any) -> None:
        try:
            self._events.put_nowait((event, args))
        except asyncio.QueueFull:
            self.bridge.metrics.error("agent_event_overflow")
            log.warning("call %s: agent is not keeping up; %s dropped", self.info.call_sid, event)

    async def _agent_loop(self) -> None:
        """Deliver events to the agent one at a time, in order."""
        while True:
            event, args = await self._events.get()
            try:
                if event == "start":
                    await self.agent.on_start(self)
                elif event == "dtmf":
                    await self.agent.on_dtmf(self, *args)
                elif event == "interrupt":
                    await self.agent.on_interrupt(self, *args)
                elif event == "speech":
                    await self.agent.on_caller_speech(self, *args)
            except AgentError as exc:
                log.warning("call %s: agent failed: %s", self.info.call_sid, exc)
                self.bridge.metrics.error("agent")
                self.end_reason = f"agent failed: {exc}"
                self._spawn(self._close_socket(1011, "agent failed"), "close")
                return
            except Exception:
                log.exception("call %s: agent hook %s raised", self.info.call_sid, event)
                self.bridge.metrics.error("agent_hook")

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{name}:{self.info.call_sid}")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # ---- bookkeeping ------------------------------------------------------------------------------
    def _on_first_frame(self, utt: Utterance, ttfa_s: float) -> None:
        self.bridge.metrics.ttfa.labels(source="cache" if utt.from_cache else "engine").observe(ttfa_s)

    def _on_utterance_finished(self, utt: Utterance) -> None:
        done = utt.future.done() and not utt.future.cancelled()
        result = utt.future.result() if done else None
        self.turns.append({
            "utterance": utt.id,
            "outcome": result.outcome.value if result else "unknown",
            "ttfa_ms": _ms(utt.first_frame_at - utt.created_at) if utt.first_frame_at else None,
            "text_wait_ms": _ms(utt.first_segment_at - utt.created_at) if utt.first_segment_at else None,
            "engine_first_chunk_ms": _round(utt.engine_first_chunk_ms),
            "cached": utt.from_cache,
            "frames": utt.frames_sent,
            "underruns": utt.underruns,
            "underrun_ms": _round(utt.underrun_ms),
            "mark_rtt_ms": _round(utt.mark_rtt_ms),
            "chars": len(utt.text),
        })

    async def _shutdown(self) -> None:
        bridge = self.bridge
        await self.listener.aclose()
        tasks = [t for t in [self._agent_task, *self._side_tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.speaker.aclose()
        try:
            await asyncio.wait_for(self.agent.on_stop(self), AGENT_STOP_TIMEOUT_S)
        except Exception as exc:
            log.warning("call %s: agent on_stop failed: %r", self.info.call_sid, exc)
        if self.recorder is not None:
            with contextlib.suppress(Exception):
                await self.recorder.aclose()
        if bridge.calls.get(self.info.stream_sid) is self:
            del bridge.calls[self.info.stream_sid]
        bridge.metrics.active_calls.dec()
        log.info("call %s", json.dumps(self.summary(), separators=(",", ":")))

    def summary(self) -> dict[str, Any]:
        return {
            "call_sid": self.info.call_sid,
            "stream_sid": self.info.stream_sid,
            "auth": self.auth_mode,
            "voice_load_ms": _round(self.voice_load_ms),
            "duration_s": round(time.monotonic() - self.started_at, 3),
            "end_reason": self.end_reason,
            "hangup": self.hangup,
            "turns": self.turns,
            "frames_sent": sum(t["frames"] for t in self.turns),
            "underruns": sum(t["underruns"] for t in self.turns),
            "barge_ins": self.barge_ins,
            "caller_turns": self.listener.turn_log,
            "inbound_frames": self.inbound_frames,
            "dtmf": self.dtmf_digits,
            "protocol_errors": self.protocol_errors,
        }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


__all__ = ["CallSession", "SpeechOutcome"]
