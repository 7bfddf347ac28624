"""The one shape of every HTTP error we return: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse


def json_error(status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None,
               **extra: object) -> JSONResponse:
    return JSONResponse(status_code=status, headers=dict(headers) if headers else None,
                        content={"error": {"code": code, "message": message, **extra}})
