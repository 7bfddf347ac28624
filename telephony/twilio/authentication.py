"""Who may open a media stream: the handshake, the ``start`` and its token, as one typed result.

With an auth token (--insecure-dev checks nothing):
1. a handshake carrying ``X-Twilio-Signature`` is checked against exactly the stream URL (the wss://
   form of PUBLIC_URL + /media-stream, no params) and refused if invalid. A valid one is not enough
   on its own: it signs only that fixed URL, the same for every call, so it can be replayed;
   ``require_signature`` makes it mandatory;
2. the ``start`` must arrive within ``start_timeout_s``, after at most a ``connected``;
3. it must carry the token the signed webhook issued (a ``<Parameter>``), valid for start.callSid
   and for exactly the parameters the webhook answered (telephony/twilio/tokens.py), unexpired and
   not yet used in this process.

``authenticate`` never closes the socket: it returns ``Authenticated`` or ``Refused``, whose error
(from the one error tree, tts_core/errors.py) carries the close code and the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from telephony.twilio.protocol import ProtocolError, Start
from telephony.twilio.signatures import validate_stream_handshake
from telephony.twilio.socket import StreamGone, StreamSocket, read_until_start
from telephony.twilio.tokens import StreamTokens
from tts_core.errors import InvalidInput, Unauthorized, VoiceBridgeError

log = logging.getLogger("telephony.media_stream")

TOKEN_PARAMETER = "token"
"""The ``<Parameter>`` that carries the stream token; it is not itself covered by the token."""


class StreamCredentialsRefused(Unauthorized):
    """The handshake's signature or the start's token is missing, wrong, expired or used."""

    kind = "stream_unauthorized"


class NoStartInTime(InvalidInput):
    """The stream sent no ``start`` within ``start_timeout_s``."""

    kind = "start_timeout"


@dataclass(frozen=True)
class Authenticated:
    """A stream whose ``start`` proved it belongs to a call our webhook answered."""

    start: Start
    auth_mode: str
    """``signature+token``, ``token`` or ``insecure-dev``: logged in the call's summary."""
    opening: list[str | bytes] = field(default_factory=list)
    """The raw messages up to and including ``start`` (the call recording begins with them)."""


@dataclass(frozen=True)
class Refused:
    """A stream turned away: ``error`` says how to close (``ws_close_code``) and why (``message``)."""

    error: VoiceBridgeError
    metric: str | None
    """The error counter to bump; None when there is nothing to count (Twilio left first)."""
    detail: str = ""
    """What the operator's log says (may name the call; the close reason never does)."""

    @property
    def close_code(self) -> int:
        return self.error.ws_close_code

    @property
    def reason(self) -> str:
        return self.error.message


StreamAdmission = Authenticated | Refused


@dataclass(frozen=True)
class StreamAuthPolicy:
    """What authentication needs from the settings."""

    auth_token: str | None
    stream_url: Callable[[], str]
    """The URL Twilio signs the handshake over (computed only when a signature is checked)."""
    require_signature: bool
    start_timeout_s: float


def check_handshake(policy: StreamAuthPolicy, signature: str | None) -> str | Refused:
    """The auth mode the handshake allows, or why it is refused (before anything is read)."""
    log.info("media stream handshake: X-Twilio-Signature %s",
             "present" if signature is not None else "absent")
    if not policy.auth_token:
        return "insecure-dev"
    if signature is None:
        if policy.require_signature:
            return Refused(StreamCredentialsRefused("X-Twilio-Signature required"), "stream_unsigned")
        return "token"
    url = policy.stream_url()
    if not validate_stream_handshake(policy.auth_token, url, signature):
        return Refused(StreamCredentialsRefused("invalid signature"), "stream_signature",
                       f"invalid X-Twilio-Signature for {url}")
    return "signature+token"


def check_token(start: Start, tokens: StreamTokens) -> Refused | None:
    """None when the start's token is valid for its CallSid and every other parameter (and is now
    used), else the refusal."""
    params = start.custom_parameters
    called = {k: v for k, v in params.items() if k != TOKEN_PARAMETER}
    token = params.get(TOKEN_PARAMETER, "")
    problem = tokens.redeem(token, start.call_sid, called) if token else "missing"
    if problem is None:
        return None
    return Refused(StreamCredentialsRefused("invalid or expired stream token"), "stream_token",
                   f"{start.stream_sid}: stream token {problem} for call {start.call_sid}")


async def authenticate(ws: StreamSocket, policy: StreamAuthPolicy, tokens: StreamTokens, *,
                       on_start: Callable[[Start], None]) -> StreamAdmission:
    """Handshake, then ``start``, then its token. ``on_start`` runs as soon as the start arrives,
    before its token is checked (the stream stops counting as unauthenticated; drain learns the
    awaited call has arrived)."""
    mode = check_handshake(policy, ws.headers.get("x-twilio-signature"))
    if isinstance(mode, Refused):
        return mode
    try:
        start, opening = await asyncio.wait_for(read_until_start(ws), policy.start_timeout_s)
    except TimeoutError:
        return Refused(NoStartInTime("no start message in time"), "start_timeout")
    except StreamGone as exc:
        return Refused(exc, None)
    except ProtocolError as exc:
        refusal = InvalidInput(f"protocol error before start: {exc.violation}")
        return Refused(refusal, f"protocol_{exc.violation}")
    on_start(start)
    if policy.auth_token:
        refused = check_token(start, tokens)
        if refused is not None:
            return refused
    return Authenticated(start, mode, opening)
