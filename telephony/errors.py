"""The one shape of every HTTP error we return: ``{"error": {"code", "message"}}``.

The status and code come from the error tree (tts_core/errors.py), never from message text.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse

from tts_core.errors import VoiceBridgeError


def json_error(status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None,
               **extra: object) -> JSONResponse:
    return JSONResponse(status_code=status, headers=dict(headers) if headers else None,
                        content={"error": {"code": code, "message": message, **extra}})


def error_response(exc: VoiceBridgeError, *, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Answer a deliberate error by its class: ``exc.http_status``, code ``exc.kind``."""
    return json_error(exc.http_status, exc.kind, exc.message, headers=headers)
