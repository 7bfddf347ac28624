"""What an agent may do to its call (the ``CallControl`` surface): speak, play audio, end.

The half of a call that agents see; ``CallSession`` (telephony/call_session.py) is the other half,
which reads Twilio's messages, owns the call's tasks and frees everything at the end. Ending is
decided once: ``end``, ``wind_down`` and ``CallSession.abort`` all go through ``begin_ending``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import numpy as np

from telephony.agents.base import CallInfo, EndResult, SpeechResult
from telephony.call_stats import CallStats
from telephony.services import Bridge
from telephony.speaker import AudioClip, Speaker
from telephony.untrusted import close_reason

if TYPE_CHECKING:
    from telephony.recording import CallRecorder

log = logging.getLogger("voice_bridge.call")


class CallControls:
    """Speech, audio and the end of one call, for its agent."""

    def __init__(self, *, bridge: Bridge, info: CallInfo, speaker: Speaker, stats: CallStats,
                 recorder: CallRecorder | None, close_socket: Callable[[int, str], Awaitable[None]]) -> None:
        self.bridge = bridge
        self.info = info
        self.speaker = speaker
        self.stats = stats
        self.recorder = recorder
        """The call's recording (telephony/recording.py), or None."""
        self._close_socket = close_socket
        self._ending = False

    def begin_ending(self) -> bool:
        """True the first time only: whoever gets it decides how the call ends."""
        if self._ending:
            return False
        self._ending = True
        return True

    async def say(self, text: str | AsyncIterator[str], *, interruptible: bool = True,
                  preemptible: bool = False) -> SpeechResult:
        if self.recorder is not None:
            text = recorded_text(self.recorder, text)
        return await self.speaker.say(text, interruptible=interruptible, preemptible=preemptible)

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
        if not self.begin_ending():
            return EndResult(error="the call is already ending")
        if self.recorder is not None:
            self.recorder.agent_message({"type": "end", "handoffData": reason})
        await self.speaker.drain()
        self.stats.end_reason = reason
        result = await hang_up(self.bridge, self.info.call_sid, self.stats) if hangup else EndResult()
        await self._close_socket(1000, close_reason(reason))
        return result

    async def wind_down(self, reason: str) -> None:
        """Drain deadline (telephony/drain.py): the utterance being heard plays to its end, what is
        queued after it is dropped and nothing new is spoken; then the stream closes."""
        if not self.begin_ending():
            return
        log.info("call %s: winding down (%s)", self.info.call_sid, reason)
        await self.speaker.finish_current()
        self.stats.end_reason = reason
        await self._close_socket(1000, reason[:120])


def recorded_text(recorder: CallRecorder, text: str | AsyncIterator[str]) -> str | AsyncIterator[str]:
    """Record what the agent says as ConversationRelay ``text`` messages, as it flows."""
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


async def hang_up(bridge: Bridge, call_sid: str, stats: CallStats) -> EndResult:
    """End the phone call through Twilio's REST API (``end(hangup=True)``); ``stats.hangup`` says
    what came of it."""
    twilio = bridge.twilio
    if twilio is None:
        stats.hangup = "unavailable"
        error = ("hang-up needs TWILIO_ACCOUNT_SID (with TWILIO_AUTH_TOKEN or an API key pair); "
                 "the media stream was closed instead, so Twilio continues with the next TwiML verb")
        log.info("call %s: %s", call_sid, error)
        return EndResult(error=error)
    stats.hangup = "requested"  # what the summary says if Twilio stops the stream first
    outcome = await twilio.hang_up(call_sid)
    stats.hangup = outcome.outcome.value
    if outcome.ok:
        return EndResult(hung_up=True)
    bridge.metrics.error("hangup_failed")
    return EndResult(error=f"hang-up through Twilio's REST API failed after {outcome.attempts} "
                           f"attempt(s) ({outcome.error}); the media stream was closed instead, so "
                           "Twilio continues with the next TwiML verb")
