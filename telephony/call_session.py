"""One phone call, from Twilio's ``start`` to its end: the owner of every task the call starts.

Caller audio flows one way (socket -> router -> decoder -> barge-in detector / agent); agent text
flows the other (agent -> speaker -> socket). The reader never waits on the agent or the engine:
slow readers make Twilio drop caller audio (warning 31930). Everything the session starts is
cancelled when the call ends, whatever the reason (stop, disconnect, agent gone, error), and one
structured log line sums the call up (telephony/call_stats.py).

Its parts: ``CallControls`` (telephony/call_control.py) is what the agent may do (speak, play,
end), ``InboundRouter`` (telephony/twilio/inbound.py) says what each Twilio message means and
``CallerSide`` (telephony/caller_side.py) what it does to the call,
``AgentInbox`` (telephony/agent_inbox.py) delivers typed events to the agent in order, the
listener and speaker are built by telephony/call_wiring.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from telephony.agent_inbox import AgentInbox
from telephony.agents.base import Agent, AgentError, CallInfo, SpeechOutcome
from telephony.agents.events import CallerSpeech, CallStarted, CallStopped, deliver
from telephony.call_control import CallControls
from telephony.call_stats import CallStats
from telephony.call_wiring import SpeakerEvents, build_listener, build_speaker, echo_reference
from telephony.caller_side import CallerSide
from telephony.services import Bridge
from telephony.speaker import Utterance
from telephony.twilio.inbound import InboundRouter
from telephony.twilio.protocol import Start
from tts_core.errors import UpstreamFailed, VoiceBridgeError
from tts_core.presets import Preset
from tts_core.voices import Voice

if TYPE_CHECKING:
    from telephony.recording import CallRecorder

log = logging.getLogger("voice_bridge.call")

PRIVATE_PARAMETERS = frozenset({"token", "agentUrl"})
AGENT_STOP_TIMEOUT_S = 5.0
PEER_STALLED = UpstreamFailed.ws_close_code
"""Close code when Twilio stopped playing or reading what we send (see ``abort``): 1011."""
CALL_CRASHED = VoiceBridgeError.ws_close_code
"""Close code when the call failed on a bug (logged with its traceback)."""


def call_info(start: Start) -> CallInfo:
    """Who is calling, for the agent. The stream token is a credential: it never leaves the bridge."""
    params = start.custom_parameters
    return CallInfo(
        call_sid=start.call_sid, stream_sid=start.stream_sid, account_sid=start.account_sid,
        custom_parameters={k: v for k, v in params.items() if k not in PRIVATE_PARAMETERS},
        from_number=params.get("from", ""), to_number=params.get("to", ""),
        direction=params.get("direction", "inbound") or "inbound",
    )


class CallSession(CallControls):
    """Lives for one media stream. ``run`` returns when the call is over and everything is freed."""

    def __init__(
        self, *, bridge: Bridge, start: Start, agent: Agent, voice_id: str, voice: Voice | None,
        preset: Preset, send_text: Callable[[str], Awaitable[None]],
        close_socket: Callable[[int, str], Awaitable[None]], greeting: str = "", auth_mode: str = "",
        recorder: CallRecorder | None = None, voice_load_ms: float | None = None,
    ) -> None:
        stats = CallStats()
        echo = echo_reference(bridge)
        speaker = build_speaker(
            bridge, start, voice_id=voice_id, voice=voice, preset=preset, send_text=send_text,
            echo=echo, events=SpeakerEvents(
                on_first_frame=self._on_first_frame, on_finished=stats.utterance_finished,
                on_stalled=lambda reason: self.abort("twilio stopped playing audio", reason)))
        super().__init__(bridge=bridge, info=call_info(start), speaker=speaker, stats=stats,
                         recorder=recorder, close_socket=close_socket)
        self.start = start
        self.agent = agent
        self.greeting = greeting
        self.auth_mode = auth_mode
        self.voice_load_ms = voice_load_ms
        self.close_code = 1000
        """How the stream closes once ``run`` returns: 1000, or 1011 when the call crashed."""
        self._reader: asyncio.Task[Any] | None = None
        """The task running ``run`` while it waits for Twilio's messages (None otherwise)."""
        self._aborted = False
        self._tasks = OwnedTasks(self.info.call_sid)
        self._inbox = AgentInbox(agent, self, on_error=bridge.metrics.error,
                                 on_agent_failed=self._on_agent_failed)
        self.listener = build_listener(
            bridge, start, echo, on_barge_in=lambda: self._tasks.spawn(self._caller.barge_in(), "barge-in"),
            on_speech=lambda text, final: self._inbox.post(CallerSpeech(text, final)))
        self._caller = CallerSide(call_sid=self.info.call_sid, listener=self.listener, speaker=speaker,
                                  inbox=self._inbox, stats=stats, metrics=bridge.metrics)
        self._router = InboundRouter(start.stream_sid, self._caller)

    # ---- what tests and the control API read -------------------------------------------------------
    @property
    def turns(self) -> list[dict[str, Any]]:
        return self.stats.turns

    @property
    def protocol_errors(self) -> dict[str, int]:
        return self.stats.protocol_errors

    @property
    def barge_ins(self) -> int:
        return self.stats.barge_ins

    @property
    def inbound_frames(self) -> int:
        return self._router.inbound_frames

    @property
    def end_reason(self) -> str:
        return self.stats.end_reason

    # ---- the call ------------------------------------------------------------------------------------
    async def run(self, messages: AsyncIterator[str | bytes]) -> None:
        """Feed ``messages`` to the call until it ends, then free everything. A bug in one call
        ends that call only: logged with its traceback, the stream closed with ``CALL_CRASHED``."""
        metrics = self.bridge.metrics
        metrics.active_calls.inc()
        metrics.calls_total.inc()
        self.bridge.calls[self.info.stream_sid] = self  # by stream: a call may open a second stream
        self.speaker.start()
        self._inbox.start()
        try:
            if self.greeting:
                self._tasks.spawn(self.speaker.say(self.greeting), "greeting")
            self._inbox.post(CallStarted())
            await self._read(messages)
        except Exception as exc:
            self.stats.end_reason = f"error: {exc!r}"
            self.close_code = CALL_CRASHED
            metrics.error("call_crash")
            log.exception("call %s failed", self.info.call_sid)
        finally:
            await self._shutdown()

    async def _read(self, messages: AsyncIterator[str | bytes]) -> None:
        self._reader = asyncio.current_task()  # ``abort`` may cancel the wait for a message
        try:
            async for message in messages:
                if not self.feed(message):
                    return
            if self.stats.end_reason == "unknown":
                self.stats.end_reason = "socket closed"
        except asyncio.CancelledError:
            reader = self._reader
            if not self._aborted or reader is None or reader.uncancel() > 0:
                raise  # cancelled by someone else (server shutdown), not by abort
        finally:
            self._reader = None  # from here on, abort cancels nothing

    def abort(self, reason: str, detail: str = "") -> None:
        """End the call now, whatever the socket does: Twilio stopped playing or reading what we
        send, so nothing more can be said and waiting for its next message could take until the
        ping timeout. Closes with ``PEER_STALLED`` (the close is bounded: a peer that does not
        read may never take the frame) and stops reading."""
        if not self.begin_ending():
            return
        self.stats.end_reason = reason
        self.bridge.metrics.error("twilio_stalled")
        log.warning("call %s: %s (%s); ending the call", self.info.call_sid, reason, detail or "no detail")

        async def close_then_stop() -> None:
            try:
                await self._close_socket(PEER_STALLED, reason)
            finally:
                if self._reader is not None:  # still waiting for a message that may never come
                    self._aborted = True
                    self._reader.cancel()

        self._tasks.spawn(close_then_stop(), "abort")

    def feed(self, raw: str | bytes) -> bool:
        """One message from Twilio (recorded, then routed); False when the call is over.

        ``run`` calls it for each message its iterator yields; a transport that delivers messages
        by callback (telephony/twilio/picows_socket.py) calls it directly, with no task switch.
        """
        if self.recorder is not None:
            self.recorder.twilio_message(raw)
        going_on = self._router.handle(raw)
        if self._router.stopped:
            self.stats.end_reason = "twilio stop"
        return going_on

    # ---- the rest ------------------------------------------------------------------------------------
    def _on_agent_failed(self, exc: AgentError) -> None:
        self.stats.end_reason = f"agent failed: {exc}"
        self._tasks.spawn(self._close_socket(exc.ws_close_code, "agent failed"), "close")

    def _on_first_frame(self, utt: Utterance, ttfa_s: float) -> None:
        self.bridge.metrics.ttfa.labels(source="cache" if utt.from_cache else "engine").observe(ttfa_s)

    async def _shutdown(self) -> None:
        bridge = self.bridge
        await self.listener.aclose()
        await self._tasks.cancel_all(self._inbox.task)
        await self.speaker.aclose()
        try:
            await asyncio.wait_for(deliver(self.agent, self, CallStopped()), AGENT_STOP_TIMEOUT_S)
        except Exception as exc:  # the agent's own failure: logged, the call's resources still freed
            log.warning("call %s: agent on_stop failed: %r", self.info.call_sid, exc,
                        exc_info=not isinstance(exc, TimeoutError | VoiceBridgeError))  # a bug: traceback
        if self.recorder is not None:
            with contextlib.suppress(Exception):
                await self.recorder.aclose()
        if bridge.calls.get(self.info.stream_sid) is self:
            del bridge.calls[self.info.stream_sid]
        bridge.metrics.active_calls.dec()
        bridge.metrics.flush()  # this call's last frames_sent, for every worker's /metrics
        log.info("call %s", json.dumps(self.summary(), separators=(",", ":")))

    def summary(self) -> dict[str, Any]:
        return self.stats.summary(
            call_sid=self.info.call_sid, stream_sid=self.info.stream_sid, auth_mode=self.auth_mode,
            voice_load_ms=self.voice_load_ms, caller_turns=self.listener.turn_log,
            inbound_frames=self._router.inbound_frames)


class OwnedTasks:
    """The side tasks one call starts (greeting, barge-in, closes): all cancelled when it ends."""

    def __init__(self, call_sid: str) -> None:
        self._call_sid = call_sid
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{name}:{self._call_sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_all(self, *others: asyncio.Task[Any] | None) -> None:
        """Cancel these tasks and ``others``, and wait until every one has finished."""
        tasks = [t for t in [*others, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["CallSession", "SpeechOutcome"]
