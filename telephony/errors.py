"""The one shape of every HTTP error we return: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from fastapi.responses import JSONResponse


def json_error(status: int, code: str, message: str, **extra: object) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message,
                                                               **extra}})
