"""Reading an HTTP body from a peer we do not control, without ever holding more than a limit."""

from __future__ import annotations

import httpx


class BodyTooLarge(ValueError):
    """The body (or its declared Content-Length) exceeds the limit."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"{declared} bytes" if declared is not None else "larger than the limit"
        super().__init__(f"body is {size}; the limit is {limit} bytes")
        self.limit = limit
        self.declared = declared


async def read_limited(response: httpx.Response, limit: int) -> bytes:
    """The streamed body, refused as soon as it, or the length it declares, exceeds ``limit``."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, int(declared))
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)
