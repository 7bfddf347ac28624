"""A remote agent application spoken to over the ConversationRelay protocol.

voice-bridge plays the role Twilio's ConversationRelay plays toward an agent application: one
WebSocket per call to the agent's URL, ``setup`` first, then ``prompt``/``dtmf``/``interrupt``/``error``
out and ``text``/``play``/``sendDigits``/``language``/``end`` in. An application written for Twilio
(or Telnyx) ConversationRelay can therefore speak with our voice unchanged.

``RelayAgent`` is the façade the call sees (the ``Agent`` hooks); its parts live in
``telephony.agents.relay``: the socket (``connection``), the dispatch of each message
(``dispatch``), one call's state (``session``), streamed replies (``text_replies``), speech jobs in
message order (``speech_jobs``) and ``play`` audio (``play_loader``). Per call, waiting speech
requests, concurrent ``play`` downloads, decoded ``play`` audio and the length of one streamed reply
are bounded.
"""

from __future__ import annotations

import logging
import uuid

import httpx

from telephony.agents.base import Agent, CallControl, CallInfo
from telephony.agents.play_budget import PlayBudget
from telephony.agents.relay.connection import RelayConnection
from telephony.agents.relay.session import RelaySession, asks_for_hangup
from telephony.egress import EgressPolicy
from telephony.relay_protocol import Dtmf, Interrupt, Prompt, Setup

log = logging.getLogger(__name__)


class RelayAgent(Agent):
    """Speaks ConversationRelay to the agent application at ``url`` (ws:// or wss://).

    ``end`` keeps ConversationRelay's meaning (the stream closes, Twilio continues with the next
    TwiML verb) unless its handoffData asks for a hang-up (``{"hangup": true}``) or
    ``end_hangs_up`` is set; a hang-up that cannot be done is reported to the agent as ``error``."""

    def __init__(
        self,
        url: str,
        *,
        auth_token: str | None,
        http_client: httpx.AsyncClient,
        connect_timeout_s: float = 5.0,
        max_message_bytes: int = 64 * 1024,
        play_max_bytes: int = 5 * 1024 * 1024,
        egress: EgressPolicy | None = None,
        play_budget_bytes: int = 32 * 1024 * 1024,
        end_hangs_up: bool = False,
    ) -> None:
        self.url = url
        self.auth_token = auth_token
        self.http = http_client
        self.connect_timeout_s = connect_timeout_s
        self.max_message_bytes = max_message_bytes
        self.play_max_bytes = play_max_bytes
        self.egress = egress if egress is not None else EgressPolicy()
        """Where the agent's URL may point (``play`` downloads are checked by ``http_client``)."""
        self.play_budget = PlayBudget(play_budget_bytes)
        self.end_hangs_up = end_hangs_up
        """Every ``end`` hangs up the call, not only one whose handoffData asks for it."""
        self.session_id = "VX" + uuid.uuid4().hex
        self._connection = RelayConnection(url, auth_token=auth_token, egress=self.egress,
                                           connect_timeout_s=connect_timeout_s,
                                           max_message_bytes=max_message_bytes)
        self._session: RelaySession | None = None
        """Set once the agent application answered ``setup``; None if it never did."""

    async def on_start(self, call: CallControl) -> None:
        """Connect and send ``setup`` (raising ``AgentError`` if the agent cannot be reached),
        then read the agent's messages until the session ends."""
        await self._connection.open(self._setup(call.info))
        self._session = RelaySession(
            call, self._connection, http=self.http, play_max_bytes=self.play_max_bytes,
            play_budget=self.play_budget, max_message_bytes=self.max_message_bytes,
            end_hangs_up=self.end_hangs_up,
        )
        self._session.start_reading(name=f"relay-reader:{call.info.call_sid}")

    def _setup(self, info: CallInfo) -> Setup:
        return Setup(
            session_id=self.session_id,
            account_sid=info.account_sid,
            call_sid=info.call_sid,
            from_=info.from_number,
            to=info.to_number,
            direction=info.direction,
            custom_parameters=dict(info.custom_parameters),
            call_type="PSTN",
            call_status="IN-PROGRESS",
        )

    async def on_dtmf(self, call: CallControl, digit: str) -> None:
        if self._session is not None:
            await self._session.new_exchange()
            await self._session.send(Dtmf(digit=digit))

    async def on_interrupt(self, call: CallControl, heard_text: str, played_ms: int) -> None:
        if self._session is not None:
            await self._session.send(Interrupt(utterance_until_interrupt=heard_text,
                                               duration_until_interrupt_ms=played_ms))

    async def on_caller_speech(self, call: CallControl, text: str, final: bool) -> None:
        if self._session is not None:
            await self._session.new_exchange()
            await self._session.send(Prompt(voice_prompt=text, lang="en-US", last=final))

    async def on_stop(self, call: CallControl) -> None:
        if self._session is not None:
            await self._session.stop()
        await self._connection.close()


__all__ = ["RelayAgent", "asks_for_hangup"]
