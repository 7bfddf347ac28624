"""Who may open a media stream, and signing what we send: Twilio's X-Twilio-Signature scheme.

Signatures use the ``twilio`` library's RequestValidator (HMAC-SHA1 over URL + sorted params,
keyed with the auth token). Stream tokens are our own: Twilio's docs disagree on whether the
stream handshake is signed, so the signed webhook hands out a single-use, short-lived token bound
to the CallSid, which the stream's ``start`` must present.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from twilio.request_validator import RequestValidator

STREAM_PATH = "/media-stream"


def stream_url(public_url: str) -> str:
    """The ``<Stream url>``: PUBLIC_URL with https->wss (http->ws), no query (Twilio strips it)."""
    base = public_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://"):]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://"):]
    elif not base.startswith(("ws://", "wss://")):
        raise ValueError(f"public URL must be http(s):// or ws(s)://, got {public_url!r}")
    return base.split("?", 1)[0] + STREAM_PATH


def validate_webhook(auth_token: str, url: str, params: dict[str, str], signature: str) -> bool:
    return bool(signature) and RequestValidator(auth_token).validate(url, params, signature)


def validate_stream_handshake(auth_token: str, url: str, signature: str) -> bool:
    """The handshake is signed over exactly the wss:// stream URL, with no params."""
    return bool(signature) and RequestValidator(auth_token).validate(url, {}, signature)


def sign(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """X-Twilio-Signature for a request we make (our handshake to ConversationRelay agents)."""
    return RequestValidator(auth_token).compute_signature(url, params or {})


class StreamTokens:
    """Single-use tokens the webhook issues and the stream's ``start`` redeems.

    A token whose CallSid does not match is refused but not consumed, so a forged start cannot
    burn the real call's token. Outstanding tokens are bounded; the oldest go first.
    """

    def __init__(self, ttl_s: float = 120.0, *, max_outstanding: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_outstanding = max_outstanding
        self._clock = clock
        self._tokens: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def issue(self, call_sid: str) -> str:
        self._prune()
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (call_sid, self._clock() + self.ttl_s)
        while len(self._tokens) > self.max_outstanding:
            self._tokens.popitem(last=False)
        return token

    def redeem(self, token: str, call_sid: str) -> bool:
        entry = self._tokens.get(token)
        if entry is None:
            return False
        bound_sid, expires = entry
        if self._clock() > expires:
            del self._tokens[token]
            return False
        if not secrets.compare_digest(bound_sid, call_sid):
            return False
        del self._tokens[token]
        return True

    def __len__(self) -> int:
        return len(self._tokens)

    def _prune(self) -> None:
        now = self._clock()
        while self._tokens:
            token, (_, expires) = next(iter(self._tokens.items()))
            if expires > now:
                break
            del self._tokens[token]
