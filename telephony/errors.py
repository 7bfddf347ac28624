"""The one shape of every HTTP error we return: ``{"error": {"code", "message"}}``.

The status and code come from the error tree (tts_core/errors.py), never from message text.
Domain errors (``VoiceNotFound``, ``UnknownPreset``, ...) carry their code as the class's ``kind``;
a refusal a route raises itself (a bad field, a missing key, a body too large) is one of the
``Refusal`` classes below: its branch gives the status, and it may name a more specific ``code``,
the request field it concerns (``param``) and headers to send. ``error_response`` answers both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from tts_core.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    Overloaded,
    TooLarge,
    Unauthorized,
    Unprocessable,
    UpstreamFailed,
    VoiceBridgeError,
)


def json_error(status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None,
               **extra: object) -> JSONResponse:
    return JSONResponse(status_code=status, headers=dict(headers) if headers else None,
                        content={"error": {"code": code, "message": message, **extra}})


class Refusal(VoiceBridgeError):
    """A refusal raised by a route. Its branch (the second base of each class below) sets the
    status; ``code`` (default: the branch's ``kind``), ``param``, ``headers`` and ``details`` add
    what the client needs to fix the request."""

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 headers: Mapping[str, str] | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.code = code or self.kind
        self.param = param
        self.headers = dict(headers or {})
        self.details = details


class BadRequest(Refusal, InvalidInput):
    """400: the request is malformed (not JSON, a missing or invalid field)."""


class UnprocessableRequest(Refusal, Unprocessable):
    """422: well-formed, but a value cannot be used (e.g. a field fails validation)."""


class MethodNotAllowed(BadRequest):
    """405: the path exists, the method does not."""

    kind = "method_not_allowed"
    http_status = 405


class RequestTimeout(BadRequest):
    """408: the body did not arrive in time (a trickling client holds a connection)."""

    kind = "request_timeout"
    http_status = 408


class RequestTooLarge(Refusal, TooLarge):
    """413: the body or a part of it is over its limit."""

    kind = "request_too_large"


class AuthRequired(Refusal, Unauthorized):
    """401: no or wrong credentials."""


class AccessDenied(Refusal, Forbidden):
    """403: refused even so (a signature that does not match, an API that is off)."""


class NoSuchThing(Refusal, NotFound):
    """404: the route or the thing named does not exist."""


class Busy(Refusal, Overloaded):
    """429: this server has as many requests in flight as it takes; retry shortly."""

    kind = "server_busy"
    http_status = 429


class Unavailable(Refusal, Overloaded):
    """503: the feature is off or the server is draining."""


class PeerFailed(Refusal, UpstreamFailed):
    """502: a server we depend on failed or answered nothing usable."""


def error_code(exc: VoiceBridgeError) -> str:
    """The machine-readable code: a refusal's own, else the class's ``kind``."""
    return exc.code if isinstance(exc, Refusal) else exc.kind


def error_response(exc: VoiceBridgeError, *, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Answer a deliberate error by its class: ``exc.http_status``, code ``exc.kind`` (or a
    refusal's own code), with a refusal's headers and details."""
    extra: dict[str, object] = {}
    if isinstance(exc, Refusal):
        headers = {**exc.headers, **(headers or {})}
        if exc.details is not None:
            extra["details"] = exc.details
    return json_error(exc.http_status, error_code(exc), exc.message, headers=headers, **extra)
