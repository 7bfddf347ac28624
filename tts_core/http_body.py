"""Reading an HTTP body from a peer we do not control, without ever holding more than a limit."""

from __future__ import annotations

import httpx

from tts_core.errors import TooLarge, UpstreamFailed


class BodyTooLarge(TooLarge, ValueError):
    """The body (or its declared Content-Length) exceeds the limit."""

    kind = "body_too_large"

    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"{declared} bytes" if declared is not None else "larger than the limit"
        super().__init__(f"body is {size}; the limit is {limit} bytes")
        self.limit = limit
        self.declared = declared


class BodyEncoded(UpstreamFailed, ValueError):
    """The body is compressed (Content-Encoding): its size after decoding cannot be bounded.

    Only peer responses are read this way, so it is the peer's failure, not the client's.
    """

    kind = "body_encoded"

    def __init__(self, encoding: str) -> None:
        super().__init__(f"body is sent with Content-Encoding {encoding!r}; only identity is accepted")
        self.encoding = encoding


async def read_limited(response: httpx.Response, limit: int) -> bytes:
    """The streamed body, refused as soon as it, or the length it declares, exceeds ``limit``.

    Raw bytes only: a compressed body is refused rather than decoded, because httpx decodes a
    whole chunk at once and a few KB of gzip can expand to gigabytes before any check runs. Ask
    for ``Accept-Encoding: identity``; audio gains nothing from HTTP compression anyway.
    """
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise BodyEncoded(encoding)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, int(declared))
    if response.is_stream_consumed:  # already in memory (a body given up front, as in tests)
        if len(response.content) > limit:
            raise BodyTooLarge(limit)
        return response.content
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)
