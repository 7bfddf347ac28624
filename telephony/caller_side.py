"""What the caller's side of the line does to a call: audio to the listener, echoed marks to the
speaker, keys and barge-ins to the agent, protocol violations counted.

This is the ``InboundSink`` that telephony/twilio/inbound.py routes Twilio's messages to. It runs
inside the socket reader (or picows' callback), so nothing here may block: anything slow is posted
to the agent's inbox or spawned by the call.
"""

from __future__ import annotations

import logging

from telephony.agent_inbox import AgentInbox
from telephony.agents.events import DtmfDigit, Interrupted
from telephony.call_stats import CallStats
from telephony.listener import CallerListener
from telephony.metrics import Metrics
from telephony.speaker import Speaker

log = logging.getLogger("voice_bridge.call")

LOGGED_PER_VIOLATION = 3
"""Protocol violations of one kind logged per call; all are counted."""


class CallerSide:
    """One call's reactions to the caller, for ``InboundRouter``."""

    def __init__(self, *, call_sid: str, listener: CallerListener, speaker: Speaker, inbox: AgentInbox,
                 stats: CallStats, metrics: Metrics) -> None:
        self._call_sid = call_sid
        self._listener = listener
        self._speaker = speaker
        self._inbox = inbox
        self._stats = stats
        self._metrics = metrics
        self._speech = speaker.queue
        """Read for every caller frame: its ``speaking_interruptibly`` is a plain attribute."""

    def hears_caller(self) -> bool:
        return self._listener.needs_audio(interruptible=self._speech.speaking_interruptibly)

    def on_caller_audio(self, mulaw: bytes) -> None:
        # As it came: the listener decodes only what it needs (barge_in.py ``feed_mulaw``).
        self._listener.feed(mulaw, interruptible=self._speech.speaking_interruptibly)

    def on_mark(self, name: str) -> None:
        self._speaker.on_mark(name)

    def on_dtmf(self, digit: str) -> None:
        self._stats.dtmf_digits += 1
        self._inbox.post(DtmfDigit(digit))

    def on_protocol_error(self, violation: str, detail: str) -> None:
        self._metrics.error(f"protocol_{violation}")
        if self._stats.protocol_error(violation) <= LOGGED_PER_VIOLATION:
            log.warning("call %s: %s: %s", self._call_sid, violation, detail[:200])

    async def barge_in(self) -> None:
        """The listener heard the caller talk over interruptible speech: cut it, tell the agent."""
        result = await self._speaker.interrupt()
        if result is None:
            return
        self._stats.barge_ins += 1
        self._metrics.barge_ins.inc()
        self._inbox.post(Interrupted(result.heard_text, result.played_ms))
