"""The one error tree of voice-bridge.

Every error the bridge raises on purpose derives from :class:`VoiceBridgeError`. The class (not the
message text) carries what a server needs to answer with: a stable machine-readable ``kind`` (the
``code`` of the JSON error body), the HTTP status, and the WebSocket close code for the stream.
Endpoints map errors through these three attributes only; nothing chooses a status by reading the
message. An exception that is not a ``VoiceBridgeError`` is a bug: it is logged with its traceback
and answered as a 500 / close 1011, never hidden.

The branches below are the categories an endpoint can tell apart; concrete errors subclass one of
them (and may also subclass a builtin such as ``ValueError`` so older ``except`` clauses keep
working). ``tts_core`` owns the tree because ``telephony`` imports ``tts_core``, never the reverse.
"""

from __future__ import annotations

from typing import ClassVar


class VoiceBridgeError(Exception):
    """Base of every deliberate error: ``kind``, ``http_status`` and ``ws_close_code`` say how to answer."""

    kind: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    ws_close_code: ClassVar[int] = 1011  # internal error

    @property
    def message(self) -> str:
        """The text shown to the client (the first argument, or the class name when there is none)."""
        return str(self.args[0]) if self.args else type(self).__name__


class InvalidInput(VoiceBridgeError):
    """The request itself is wrong (bad field, bad format, unknown option): the client must change it."""

    kind = "invalid_request"
    http_status = 400
    ws_close_code = 1008  # policy violation (1007 is reserved for non-UTF-8 text)


class Unprocessable(InvalidInput):
    """Well-formed but not usable as given (an unknown voice, audio that is not speech)."""

    kind = "unprocessable"
    http_status = 422


class NotFound(VoiceBridgeError):
    """The thing named does not exist (a voice id, a call sid, a preset)."""

    kind = "not_found"
    http_status = 404
    ws_close_code = 1008


class Unauthorized(VoiceBridgeError):
    """Missing or wrong credentials (operator key, Twilio signature, stream token)."""

    kind = "unauthorized"
    http_status = 401
    ws_close_code = 1008


class Forbidden(VoiceBridgeError):
    """Valid credentials, refused action (an egress URL outside the allow-list)."""

    kind = "forbidden"
    http_status = 403
    ws_close_code = 1008


class TooLarge(InvalidInput):
    """A body, message or text over its limit."""

    kind = "too_large"
    http_status = 413
    ws_close_code = 1009  # message too big


class Overloaded(VoiceBridgeError):
    """At capacity or draining: the client should retry later or elsewhere."""

    kind = "overloaded"
    http_status = 503
    ws_close_code = 1013  # try again later


class UpstreamFailed(VoiceBridgeError):
    """A peer we depend on (speech server, recogniser server, agent, Twilio REST) failed or stalled."""

    kind = "upstream_failed"
    http_status = 502
    ws_close_code = 1011


class ConfigurationError(VoiceBridgeError):
    """The operator's configuration is inconsistent; raised at start-up, before serving."""

    kind = "configuration_error"
    http_status = 500
    ws_close_code = 1011


__all__ = [
    "ConfigurationError",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "Overloaded",
    "TooLarge",
    "Unauthorized",
    "Unprocessable",
    "UpstreamFailed",
    "VoiceBridgeError",
]
