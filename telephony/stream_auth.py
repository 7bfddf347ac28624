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
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

STREAM_PATH = "/media-stream"


_SCHEMES = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}


def stream_url(public_url: str) -> str:
    """The ``<Stream url>`` for PUBLIC_URL: https->wss (http->ws), the path kept without its trailing
    slash, then ``/media-stream``; query and fragment dropped (Twilio strips a query anyway).

    This is also exactly the URL Twilio signs the stream handshake over.
    """
    parts = urlsplit(public_url.strip())
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"public URL must be http(s):// or ws(s)://host..., got {public_url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + STREAM_PATH, "", ""))


def validate_webhook(auth_token: str, url: str, params: dict[str, str], signature: str | None) -> bool:
    """True if ``signature`` (X-Twilio-Signature) signs this webhook: ``url`` is the public URL
    Twilio requested (never the Host header seen behind a proxy), ``params`` the POST form."""
    if not auth_token or not signature:  # an empty key would let anyone compute the signature
        return False
    return RequestValidator(auth_token).validate(url, params, signature)


def validate_stream_handshake(auth_token: str, url: str, signature: str | None) -> bool:
    """The handshake is signed over exactly the wss:// stream URL (see stream_url), no params."""
    return validate_webhook(auth_token, url, {}, signature)


def sign(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """X-Twilio-Signature for a request we make (our handshake to ConversationRelay agents)."""
    if not auth_token:
        raise ValueError("cannot sign without an auth token")
    return RequestValidator(auth_token).compute_signature(url, params or {})


class StreamTokens:
    """Single-use tokens the webhook issues and the stream's ``start`` redeems.

    - ``redeem`` succeeds once per token; a second redeem of the same token fails.
    - An expired token fails (and is dropped).
    - A token presented with another CallSid is refused but NOT consumed: the token travels in a
      ``<Parameter>`` and a forged ``start`` with the wrong CallSid must not be able to burn the real
      call's token, so the legitimate stream can still redeem it.
    - Outstanding tokens are bounded: expired ones are pruned on every ``issue`` and past
      ``max_outstanding`` the oldest go first.
    """

    def __init__(self, ttl_s: float = 60.0, *, max_outstanding: int = 100_000,
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
        if self._clock() >= expires:
            del self._tokens[token]
            return False
        # bytes: compare_digest refuses non-ASCII str, and call_sid comes from the (untrusted) start
        if not secrets.compare_digest(bound_sid.encode(), call_sid.encode()):
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
