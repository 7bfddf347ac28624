"""Twilio's X-Twilio-Signature scheme: checking what Twilio sends us, signing what we send.

Signatures use the ``twilio`` library's RequestValidator (HMAC-SHA1 over URL + sorted params,
keyed with the auth token). The stream handshake's signature covers only the fixed stream URL (the
same for every call, so replayable): a stream is admitted on the call-bound token the signed
webhook issued (telephony/twilio/tokens.py), checked by telephony/twilio/admission.py.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

from tts_core.errors import ConfigurationError

STREAM_PATH = "/media-stream"


class SigningConfigError(ConfigurationError, ValueError):
    """PUBLIC_URL is not a URL a stream can be given, or there is no auth token to sign with."""


_SCHEMES = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}


def stream_url(public_url: str) -> str:
    """The ``<Stream url>`` for PUBLIC_URL: https->wss (http->ws), the path kept without its trailing
    slash, then ``/media-stream``; query and fragment dropped (Twilio strips a query anyway).

    This is also exactly the URL Twilio signs the stream handshake over.
    """
    parts = urlsplit(public_url.strip())
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise SigningConfigError(f"public URL must be http(s):// or ws(s)://host..., got {public_url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + STREAM_PATH, "", ""))


def validate_webhook(auth_token: str, url: str, params: dict[str, str], signature: str | None) -> bool:
    """True if ``signature`` (X-Twilio-Signature) signs this webhook: ``url`` is the public URL
    Twilio requested (never the Host header seen behind a proxy), ``params`` the POST form."""
    if not auth_token or not signature:  # an empty key would let anyone compute the signature
        return False
    return bool(RequestValidator(auth_token).validate(url, params, signature))


def validate_stream_handshake(auth_token: str, url: str, signature: str | None) -> bool:
    """The handshake is signed over exactly the wss:// stream URL (see stream_url), no params."""
    return validate_webhook(auth_token, url, {}, signature)


def sign(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """X-Twilio-Signature for a request we make (our handshake to ConversationRelay agents)."""
    if not auth_token:
        raise SigningConfigError("cannot sign without an auth token")
    return str(RequestValidator(auth_token).compute_signature(url, params or {}))
