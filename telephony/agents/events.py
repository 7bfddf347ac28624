"""What happens on a call that an agent hears about, as typed events, and how each reaches its hook.

The call posts these in order (telephony/agent_inbox.py) and ``deliver`` turns each into the
``Agent`` hook it stands for, with a ``match`` that mypy checks for exhaustiveness: a new event
without a hook is a type error, not a silently ignored string tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from telephony.agents.base import Agent, CallControl


@dataclass(frozen=True, slots=True)
class CallStarted:
    """The media stream started (``Agent.on_start``)."""


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    """The caller pressed a key (``Agent.on_dtmf``)."""

    digit: str


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The caller talked over the agent: speech was cut after ``played_ms`` (``Agent.on_interrupt``)."""

    heard_text: str
    played_ms: int


@dataclass(frozen=True, slots=True)
class CallerSpeech:
    """Recognised caller words: ``final`` once per turn (``Agent.on_caller_speech``)."""

    text: str
    final: bool


@dataclass(frozen=True, slots=True)
class CallStopped:
    """The call ended (``Agent.on_stop``): delivered once, outside the queue, with a timeout."""


AgentEvent = CallStarted | DtmfDigit | Interrupted | CallerSpeech | CallStopped


async def deliver(agent: Agent, call: CallControl, event: AgentEvent) -> None:
    """Run the hook ``event`` stands for."""
    match event:
        case CallStarted():
            await agent.on_start(call)
        case DtmfDigit(digit):
            await agent.on_dtmf(call, digit)
        case Interrupted(heard_text, played_ms):
            await agent.on_interrupt(call, heard_text, played_ms)
        case CallerSpeech(text, final):
            await agent.on_caller_speech(call, text, final)
        case CallStopped():
            await agent.on_stop(call)
        case _:
            assert_never(event)


__all__ = ["AgentEvent", "CallStarted", "CallStopped", "CallerSpeech", "DtmfDigit", "Interrupted", "deliver"]
