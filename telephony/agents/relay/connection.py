"""The WebSocket to one agent application, and nothing else.

Why a class of its own: every way the agent's socket can misbehave (refused or unreachable
address, a handshake that never completes, a peer that stops reading, one that never closes) must
cost the call a bounded time and never raise into a hook. The rest of the client sees four
operations: ``open`` (connect and send ``setup``, or raise an ``AgentError``), ``send`` (best
effort, never raises), ``frames`` (what the agent sends, ending when it leaves) and ``close``.

There is no reconnect: ConversationRelay has no session resumption (a new socket is a new
``setup``, and the agent would have lost the conversation), so an agent that goes away ends its
session; what it already sent is still spoken (see ``RelaySession``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

from telephony.agents.base import AgentError
from telephony.egress import EgressPolicy, EgressRefused
from telephony.relay_protocol import Setup, ToAgentMessage, serialize
from telephony.twilio.signatures import sign
from tts_core.errors import Forbidden, UpstreamFailed

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0
"""Closing never waits longer than this for the agent's side of the close handshake."""
HARD_SIZE_FACTOR = 4
"""Messages up to ``max_message_bytes`` are accepted; larger ones up to this multiple are answered
with an ``error`` (the session goes on); beyond it the WebSocket library closes the connection."""
SEND_TIMEOUT_S = 5.0
"""A send waiting this long on an agent that does not read is dropped (hooks must not hang)."""
USER_AGENT = "voice-bridge ConversationRelay"


class AgentUnreachable(AgentError, UpstreamFailed):
    """The agent application could not be connected to, or closed the socket at ``setup``."""


class AgentUrlRefused(Forbidden, AgentError):
    """The agent's URL points where the egress policy forbids (the text names no address).

    Forbidden to whoever asked for it over HTTP (403); to Twilio, whose stream it ends, it is the
    bridge's own failure, not Twilio's policy violation: close 1011 as for any failed agent.
    """

    ws_close_code = 1011


class RelayConnection:
    """One call's WebSocket to the agent at ``url`` (ws:// or wss://)."""

    def __init__(
        self,
        url: str,
        *,
        auth_token: str | None,
        egress: EgressPolicy,
        connect_timeout_s: float,
        max_message_bytes: int,
    ) -> None:
        self.url = url
        self._auth_token = auth_token
        self._egress = egress
        self._connect_timeout_s = connect_timeout_s
        self._max_message_bytes = max_message_bytes
        self._ws: ClientConnection | None = None

    @property
    def close_code(self) -> int | None:
        """The close code the agent's socket ended with (None while open or never opened)."""
        return None if self._ws is None else self._ws.close_code

    async def open(self, setup: Setup) -> None:
        """Connect and send ``setup``; raise an ``AgentError`` subclass saying why not.

        The handshake is signed like Twilio's (``X-Twilio-Signature`` over the URL) when the bridge
        has an auth token, so agent apps that validate it accept us."""
        headers = {}
        if self._auth_token:
            headers["X-Twilio-Signature"] = sign(self._auth_token, self.url, {})
        try:
            async with asyncio.timeout(self._connect_timeout_s + 1.0):
                self._ws = await self._connect(headers)
        except EgressRefused as exc:
            log.warning("agent %s refused: %s", self.url, exc)
            raise AgentUrlRefused(f"agent URL refused: {EgressRefused.PUBLIC_MESSAGE}") from None
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ValueError) as exc:
            raise AgentUnreachable(f"cannot connect to agent {self.url}: {describe(exc)}") from None
        try:
            await self._ws.send(serialize(setup))
        except ConnectionClosed as exc:
            await self.close()
            raise AgentUnreachable(f"agent {self.url} closed the connection at setup: {exc}") from None

    async def _connect(self, headers: dict[str, str]) -> ClientConnection:
        """Resolve the agent's host, check every address (``EgressPolicy``), then connect to a
        checked address, never to a second DNS answer. The URL still gives the Host header and,
        for wss://, the TLS server name; no proxy from the environment is used."""
        uri = parse_uri(self.url)
        addresses = await self._egress.resolve(uri.host, uri.port)
        last: OSError | None = None
        for address in addresses:
            try:
                return await connect(
                    self.url,
                    host=address,
                    port=uri.port,
                    proxy=None,
                    additional_headers=headers,
                    open_timeout=self._connect_timeout_s,
                    close_timeout=CLOSE_TIMEOUT_S,
                    max_size=self._max_message_bytes * HARD_SIZE_FACTOR,
                    user_agent_header=USER_AGENT,
                )
            except OSError as exc:  # this address does not answer: try the next checked one
                last = exc
        if last is None:
            raise OSError(f"no address for {uri.host}")
        raise last

    async def send(self, message: ToAgentMessage) -> None:
        """Send ``message`` if the agent is there and reading; otherwise log and drop it."""
        ws = self._ws
        name = type(message).__name__
        if ws is None:
            log.debug("agent not connected; %s dropped", name)
            return
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await ws.send(serialize(message))
        except ConnectionClosed:
            log.info("agent %s gone; %s dropped", self.url, name)
        except TimeoutError:
            log.warning("agent %s is not reading; %s dropped", self.url, name)
        except Exception as exc:  # a broken transport: the hook goes on, the reader sees the end
            log.warning("sending %s to agent %s failed: %s", name, self.url, exc)

    async def frames(self) -> AsyncGenerator[str | bytes, None]:
        """The agent's frames in order, until its socket closes (normally or not)."""
        ws = self._ws
        if ws is None:
            return
        try:
            async for frame in ws:
                yield frame
        except ConnectionClosed as exc:
            log.info("agent %s connection lost: %s", self.url, exc)

    async def close(self) -> None:
        """Close the socket within ``CLOSE_TIMEOUT_S``; a hung or broken peer is dropped."""
        ws = self._ws
        if ws is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S + 0.5):
                await ws.close()
        except Exception as exc:  # a hung or broken peer: drop the TCP connection
            log.debug("closing agent socket: %r", exc)
            with contextlib.suppress(Exception):
                ws.transport.abort()


def describe(exc: BaseException) -> str:
    """``Type: message`` (or the type alone): enough for an agent or a log to tell errors apart."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
