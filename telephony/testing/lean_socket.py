"""A bare asyncio WebSocket client for the lean load generator: the handshake, RFC 6455 framing in
a few lines, and nothing else.

Why not the ``websockets`` client: per message it runs a coroutine, a future and its own framing in
Python, which is most of the ~3.5 ms of CPU the emulator-based generator spends per call-second.
Here a received chunk is split into frames in one loop and each text frame is handed to
``on_text(data, start, end, now)`` *without copying* (the receiver scans the bytes in place), and a
send is one ``transport.write`` of a prebuilt header plus the payload.

Client frames must be masked; the masking key is ours to choose and all-zero is a valid key, so
the payload goes out as is (the server still unmasks: its cost is unchanged, ours is nil).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import urllib.parse
from collections.abc import Callable

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ZERO_MASK = b"\0\0\0\0"
_HEAD16 = struct.Struct("!BBH4s")
_HEAD64 = struct.Struct("!BBQ4s")
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA

TextHandler = Callable[[bytes, int, int], None]
"""``on_text(data, start, end)``: one text message is ``data[start:end]`` (UTF-8)."""


class HandshakeError(Exception):
    """The server did not answer the upgrade with 101 and the right accept key."""


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked (zero key) client frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, 0x80 | n)) + _ZERO_MASK + payload
    if n < 65536:
        return _HEAD16.pack(0x80 | opcode, 0xFE, n, _ZERO_MASK) + payload
    return _HEAD64.pack(0x80 | opcode, 0xFF, n, _ZERO_MASK) + payload


class LeanSocket(asyncio.Protocol):
    """One client WebSocket; ``connect`` opens it, ``send_text`` sends, ``on_text`` receives."""

    def __init__(self, on_text: TextHandler) -> None:
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = asyncio.Event()
        """Set once the server's close frame arrived or the connection dropped."""
        self.protocol_errors: list[str] = []
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._key = ""
        self._rest = b""
        self._upgraded = False
        self._close_sent = False

    async def connect(self, url: str, *, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws":
            raise HandshakeError(f"only ws:// URLs on loopback, got {url!r}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._key = base64.b64encode(os.urandom(16)).decode()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: self, host, port)
            assert self.transport is not None
            self.transport.write((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                  f"Sec-WebSocket-Key: {self._key}\r\n"
                                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            await self._opened

    def send_text(self, payload: bytes) -> None:
        """Send one text message (dropped once the connection is closing, as Twilio drops it)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.closed.is_set():
            return
        n = len(payload)
        if 125 < n < 65536:
            transport.write(_HEAD16.pack(0x81, 0xFE, n, _ZERO_MASK) + payload)
        else:
            transport.write(client_frame(OP_TEXT, payload))

    async def close(self, code: int = 1000, timeout: float = 2.0) -> None:
        """The closing handshake (waits for the server's close frame, at most ``timeout``)."""
        transport = self.transport
        if transport is None:
            return
        if not self.closed.is_set() and not transport.is_closing():
            self._close_sent = True
            transport.write(client_frame(OP_CLOSE, struct.pack("!H", code)))
            try:
                async with asyncio.timeout(timeout):
                    await self.closed.wait()
            except TimeoutError:
                pass
        transport.close()

    # ---- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        if not self._opened.done():
            self._opened.set_exception(ConnectionError(f"connection lost in the handshake: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        if not self._upgraded:
            data = self._handshake(data)
            if not data:
                return
        size = len(data)
        i = 0
        while size - i >= 2:
            b0 = data[i]
            n = data[i + 1]
            head = 2
            if n == 126:
                if size - i < 4:
                    break
                n = (data[i + 2] << 8) | data[i + 3]
                head = 4
            elif n >= 127:  # 127: 64-bit length; >127: a masked server frame (not allowed)
                if n > 127:
                    self._fail("the server masked a frame")
                    return
                if size - i < 10:
                    break
                n = int.from_bytes(data[i + 2:i + 10], "big")
                head = 10
            end = i + head + n
            if end > size:
                break
            if b0 == 0x81:
                self.on_text(data, i + head, end)
            else:
                self._control(b0, data[i + head:end])
            i = end
        if i < size:
            self._rest = data[i:]

    # ---- internals ---------------------------------------------------------------------------
    def _handshake(self, data: bytes) -> bytes:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > 16384:
                self._fail("handshake answer too long")
            else:
                self._rest = data
            return b""
        head = data[:end].decode("latin-1")
        lines = head.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        accept = base64.b64encode(hashlib.sha1(self._key.encode() + _GUID).digest()).decode()
        if not lines[0].startswith("HTTP/1.1 101") or headers.get("sec-websocket-accept") != accept:
            if not self._opened.done():
                self._opened.set_exception(HandshakeError(f"upgrade refused: {lines[0]!r}"))
            assert self.transport is not None
            self.transport.close()
            return b""
        self._upgraded = True
        self._opened.set_result(None)
        return data[end + 4:]

    def _control(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        if not b0 & 0x80 or opcode not in (OP_CLOSE, OP_PING, OP_PONG):
            # The bridge never fragments and never sends binary: report, as Twilio would refuse it.
            self.protocol_errors.append(f"unexpected frame: opcode {opcode}, fin {bool(b0 & 0x80)}")
            return
        assert self.transport is not None
        if opcode == OP_PING:
            self.transport.write(client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            if len(payload) >= 2:
                self.close_code = int.from_bytes(payload[:2], "big")
                self.close_reason = payload[2:].decode("utf-8", "replace")
            else:
                self.close_code = 1005
            if not self._close_sent and not self.transport.is_closing():
                self._close_sent = True
                self.transport.write(client_frame(OP_CLOSE, payload[:2]))
                self.transport.close()
            self.closed.set()

    def _fail(self, why: str) -> None:
        self.protocol_errors.append(why)
        if self.transport is not None:
            self.transport.close()


async def post_form(base_url: str, path: str, form: dict[str, str], headers: dict[str, str], *,
                    timeout: float = 15.0) -> tuple[int, str]:
    """One HTTP/1.1 form POST on its own connection (``Connection: close``): (status, body).

    The webhook is one request per call; httpx spends ~10 ms of CPU on each (its pool, anyio,
    cookie and redirect handling), a quarter of the lean generator's CPU; this costs well under 1."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme != "http":
        raise HandshakeError(f"only http:// URLs on loopback, got {base_url!r}")
    body = urllib.parse.urlencode(form).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            writer.write((f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n"
                          "Content-Type: application/x-www-form-urlencoded\r\n"
                          f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body)
            raw = await reader.read()  # to EOF: the server closes after its answer
        finally:
            writer.close()
    header, _, payload = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if fields.get("transfer-encoding", "").lower() == "chunked":
        chunks, rest = [], payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            chunks.append(rest[:size])
            rest = rest[size + 2:]
        payload = b"".join(chunks)
    elif "content-length" in fields:
        payload = payload[:int(fields["content-length"])]
    return status, payload.decode("utf-8", "replace")
