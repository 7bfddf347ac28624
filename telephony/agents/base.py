"""The contract between a call and the agent that decides what to say.

An agent is told about call events (start, DTMF, interruption, caller speech, stop; typed in
telephony/agents/events.py) and acts on the
call through a small ``CallControl`` surface: speak text (whole or as a token stream), play audio,
end the stream. The same contract serves in-process Python agents, the built-in demo agent and the
ConversationRelay client that talks to remote agent applications.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tts_core.errors import UpstreamFailed


class SpeechOutcome(enum.Enum):
    PLAYED = "played"
    """Every frame was sent and Twilio confirmed playback (the end mark came back)."""
    INTERRUPTED = "interrupted"
    """The caller barged in, or the agent pre-empted it; ``heard_text`` says how far it got."""
    FAILED = "failed"
    """Synthesis or playback failed; ``error`` says why. Nothing more of it will be played."""
    CANCELLED = "cancelled"
    """The call ended before the words were played."""


@dataclass
class SpeechResult:
    """What became of one ``say``/``play``: reported for every piece of text, never silently lost."""

    text: str
    outcome: SpeechOutcome
    heard_text: str = ""
    played_ms: int = 0
    error: str | None = None


@dataclass(frozen=True)
class EndResult:
    """What ``end`` did. The media stream is always closed; ``hung_up`` says whether the phone call
    is over too (hung up through Twilio's REST API, or it had already ended)."""

    hung_up: bool = False
    error: str | None = None
    """Why a requested hang-up did not happen (no credentials, the API failed): the stream was
    closed instead, so Twilio continues with the next TwiML verb."""


@dataclass(frozen=True)
class CallInfo:
    """Who is calling, from Twilio's ``start`` message and the webhook's parameters."""

    call_sid: str
    stream_sid: str
    account_sid: str = ""
    from_number: str = ""
    to_number: str = ""
    direction: str = "inbound"
    custom_parameters: dict[str, str] = field(default_factory=dict)


class CallControl(Protocol):
    """What an agent may do to its call."""

    info: CallInfo

    async def say(
        self,
        text: str | AsyncIterator[str],
        *,
        interruptible: bool = True,
        preemptible: bool = False,
    ) -> SpeechResult:
        """Speak text (or a stream of tokens); returns once played, interrupted or failed."""
        ...

    async def play_audio(
        self, audio: np.ndarray, sample_rate: int, *, label: str = "audio", interruptible: bool = True,
        preemptible: bool = False, loops: int = 1,
    ) -> SpeechResult:
        """Play float32 mono audio through the same encoder and pacer as speech, ``loops`` times
        (the same buffer again: a loop costs no memory).

        Like ``say``, it is queued the moment it is called (before its first await), so calls made
        in order play in order."""
        ...

    async def end(self, reason: str = "agent ended", *, hangup: bool = False) -> EndResult:
        """Finish what is queued, then close the media stream (the call goes on with the next TwiML
        verb, or ends if there is none).

        ``hangup=True`` ends the phone call itself once the last of it has been heard (its end mark
        echoed), through Twilio's REST API (needs TWILIO_ACCOUNT_SID); if that is not possible
        the stream is closed anyway and the result says why."""
        ...


class Agent:
    """Override the hooks you need. Hooks of one call run one at a time, in event order."""

    async def on_start(self, call: CallControl) -> None:
        """The media stream started."""

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        """The caller pressed a key."""

    async def on_interrupt(self, call: CallControl, heard_text: str, played_ms: int) -> None:
        """The caller talked over the agent; speech was cut after ``played_ms`` ms."""

    async def on_caller_speech(self, call: CallControl, text: str, final: bool) -> None:
        """Recognised caller speech: ``final`` once per caller turn, when the caller has stopped
        talking (VOICE_BRIDGE_STT_ENDPOINT_MS of silence); with partial prompts on, ``final=False``
        with the words so far while they talk. Words spoken while interrupting the agent arrive
        here too, after ``on_interrupt``."""

    async def on_stop(self, call: CallControl) -> None:
        """The call ended; release what the agent holds. Called exactly once."""


class AgentError(UpstreamFailed, RuntimeError):
    """The agent failed (e.g. a remote agent refused the connection); the call is ended and the
    stream closed with ``ws_close_code`` (1011). ``RuntimeError`` stays a base for older callers."""

    kind = "agent_failed"
