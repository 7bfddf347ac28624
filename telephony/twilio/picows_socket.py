"""``/media-stream`` on its own lean listener (picows), the same handler as the ASGI route.

Why: a profile of 120 phrase-cached calls showed ~45% of the bridge's CPU in the ASGI stack around
the 100 WebSocket messages a second each call exchanges (uvicorn's protocol, websockets' Python
framing, starlette's receive/send dicts, one ``write`` per outbound frame). picows parses and builds
frames in C and hands each frame to a plain callback, with no ASGI in between.

What stays identical: the whole call, authentication included, is ``media_stream.handle_stream``
running on ``PicowsSocket``, an adapter with the small part of starlette's ``WebSocket`` that the
handler uses (``app``, ``headers``, ``accept``, ``receive``, ``send_text``, ``close`` and the two
states). Every check a change to that handler adds applies to both listeners.

It is typed against ``StreamSocket`` (telephony/twilio/socket.py), the shape both listeners share.

What is leaner here:
- outbound frames are *corked* (``CorkedWriter``): ``send_text`` builds the (unmasked,
  server-side) frame header itself and appends to a buffer flushed by one ``call_soon`` per
  event-loop pass, so the burst the pacer sends every tick (3 frames, plus a mark) leaves in one
  ``transport.write`` (one syscall);
- inbound frames (``Inbox``): until ``start`` they queue for ``receive``; once the call runs they
  are pushed to ``CallSession.feed`` from picows' callback (``pushed_messages``), with no task
  switch per message (50 a second per call);
- backpressure is kept: when the socket's buffer passes the transport's high-water mark
  (``pause_writing``), ``send_text`` waits for ``resume_writing``, so ``StreamSender``'s stall
  watchdog still sees a peer that stopped reading.

The listener is started by the app's lifespan when ``VOICE_BRIDGE_STREAM_PORT`` is set; operators
keep one public URL by routing the path ``/media-stream`` to that port in their proxy (README).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)
from starlette.datastructures import Address
from starlette.websockets import WebSocketState

from telephony import workers
from telephony.twilio.socket import MessageSink, StreamSocket

StreamHandler = Callable[[StreamSocket], Awaitable[None]]
"""The media stream handler both listeners run (telephony/media_stream.py ``handle_stream``)."""

log = logging.getLogger(__name__)

STREAM_PATH = b"/media-stream"
MAX_INBOX = 500
"""Inbound messages held for a handler that is not reading (10 s of Twilio's 50 a second): more
means the handler is stuck, and the socket is closed rather than grow without bound."""
MAX_FRAME_BYTES = 1 << 20
"""As the ASGI route's ``ws_max_size``."""
CLOSE_REASON_BYTES = 123
"""What a close frame can carry after its 2-byte code (RFC 6455 5.5: control frames <= 125 bytes)."""


def frame_header(length: int) -> bytes:
    """Header of one unmasked, final text frame (RFC 6455 5.2: servers never mask)."""
    header = _HEADERS.get(length)
    if header is None:
        header = _frame_header(length)
        if length < 65536 and len(_HEADERS) < 4096:  # a call's media messages share one length
            _HEADERS[length] = header
    return header


_HEADERS: dict[int, bytes] = {}


def _frame_header(length: int) -> bytes:
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


class CorkedWriter:
    """Outbound text frames, built here and flushed in one ``write`` per event-loop pass.

    ``writable`` follows the transport's ``pause_writing``/``resume_writing``: a sender waits on it,
    so ``StreamSender``'s stall watchdog sees a peer that stopped reading."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: Callable[[], Any]) -> None:
        self._loop = loop
        self._transport = transport
        """The asyncio transport to write to, or None once the connection is down."""
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.writable = asyncio.Event()
        self.writable.set()

    def append(self, text: str) -> None:
        data = text.encode()
        self._out.append(frame_header(len(data)))
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def extend(self, texts: list[str]) -> None:
        """As ``append`` for each of ``texts`` (the pacer's frames and marks of one tick), but
        written at once when nothing is corked: they are all this pass has for the socket, so
        waiting for the flush would only cost a callback (order is kept: anything corked first
        means these are corked behind it)."""
        parts: list[bytes] = []
        for text in texts:
            data = text.encode()
            parts.append(frame_header(len(data)))
            parts.append(data)
        if self._out:
            self._out.extend(parts)
            return  # the flush is already scheduled
        transport = self._transport()
        if transport is not None:
            transport.write(b"".join(parts))

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        transport = self._transport()
        if transport is not None:
            transport.write(data)

    def discard(self) -> None:
        """The connection is down: drop what is buffered, and release any sender waiting for room."""
        self._out.clear()
        self.writable.set()


class Inbox:
    """Inbound messages queued for ``receive`` (bounded), and the one waiter woken on news."""

    def __init__(self) -> None:
        self._messages: deque[dict[str, Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._messages)

    def put(self, message: dict[str, Any]) -> bool:
        """Queue ``message``; False (dropped) when ``MAX_INBOX`` are already waiting."""
        if len(self._messages) >= MAX_INBOX:
            return False
        self._messages.append(message)
        self.wake()
        return True

    def take(self) -> dict[str, Any] | None:
        return self._messages.popleft() if self._messages else None

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until ``wake`` (a message, the call over, or the connection gone)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class PushedCall:
    """A running call fed from picows' callback: each frame straight to ``sink.feed``, no task
    switch; ``over`` once the sink says so, sending stalled, or the sink raised (``failure``)."""

    def __init__(self, sink: MessageSink, stalled: Callable[[], bool], inbox: Inbox) -> None:
        self._sink = sink
        self._stalled = stalled
        self._inbox = inbox
        self.over = False
        self.failure: Exception | None = None
        """What the sink raised: re-raised in ``CallSession.run``, which ends that call only."""

    def push(self, raw: str | bytes) -> None:
        if self.over:
            return
        try:
            going_on = self._sink.feed(raw) and not self._stalled()
        except Exception as exc:  # handed to the call's own task, where it is logged and ends the call
            self.failure = exc
            going_on = False
        if not going_on:
            self.over = True
            self._inbox.wake()  # ``pushed_messages`` returns


class PicowsSocket(WSListener):
    """One Twilio connection: picows' listener and a ``StreamSocket`` adapter at once."""

    def __init__(self, app: Any, request: WSUpgradeRequest, tasks: set[asyncio.Task[None]], *,
                 handler: StreamHandler) -> None:
        super().__init__()
        self.app = app
        self._handler = handler
        self.headers: Mapping[str, str] = request.headers
        self._tasks = tasks
        self._transport: WSTransport | None = None
        self._loop = asyncio.get_running_loop()  # kept: get_running_loop() costs a getpid()
        self._inbox = Inbox()
        self._writer = CorkedWriter(self._loop, self._raw_transport)
        self._open = True
        """Neither side has closed: sends are still delivered."""
        self._gone = False
        """The connection is down (peer closed or disconnected)."""
        self._close_code = 1005
        self._pushed: PushedCall | None = None
        """Set while ``pushed_messages`` runs: frames go straight to the call."""
        self.client: Address | None = None
        """The peer's address, as starlette's ``WebSocket.client`` (per-peer connection caps)."""

    # ---- picows callbacks (run on the event loop, never block) ------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        peer = transport.underlying_transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = Address(str(peer[0]), int(peer[1]))
        self._own(self._serve(), "media-stream-fast")

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type  # read once: each read builds a Python enum from picows' C one
        if kind is WSMsgType.CLOSE:
            self._close_code = int(frame.get_close_code().value)
            self._writer.flush()
            if self._open:
                self._open = False
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            self._on_gone()
            return
        raw = self._payload(frame, kind)
        if raw is None:
            return
        if self._pushed is not None:
            self._pushed.push(raw)
        elif not self._inbox.put({"type": "websocket.receive", "text": raw} if isinstance(raw, str)
                                 else {"type": "websocket.receive", "bytes": raw}):
            if self._open:
                log.warning("media stream: handler not reading; closing the socket")
            self._close_soon(1013, "not reading")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._writer.discard()
        self._on_gone()

    def pause_writing(self) -> None:
        self._writer.writable.clear()

    def resume_writing(self) -> None:
        self._writer.writable.set()

    # ---- StreamSocket (what media_stream.handle_stream calls) -------------------------------------
    @property
    def application_state(self) -> WebSocketState:
        return WebSocketState.CONNECTED if self._open else WebSocketState.DISCONNECTED

    @property
    def client_state(self) -> WebSocketState:
        return WebSocketState.DISCONNECTED if self._gone else WebSocketState.CONNECTED

    async def accept(self) -> None:
        """picows completed the upgrade before ``on_ws_connected``: nothing left to do."""

    async def receive(self) -> dict[str, Any]:
        while (message := self._inbox.take()) is None:
            if self._gone:
                return {"type": "websocket.disconnect", "code": self._close_code}
            await self._inbox.wait()
        return message

    async def send_text(self, data: str) -> None:
        if not self._writer.writable.is_set():
            await self._writer.writable.wait()  # Twilio is not reading: the stall watchdog sees this
        if self._open and self._transport is not None:
            self._writer.append(data)

    # ---- TakesAtOnce (the pacer's path while Twilio reads) ----------------------------------------
    def writable_now(self) -> bool:
        return self._writer.writable.is_set()

    def send_texts_now(self, texts: list[str]) -> None:
        if self._open and self._transport is not None:
            self._writer.extend(texts)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        if not self._open:
            return
        self._open = False
        self._writer.flush()
        transport = self._transport
        if transport is not None and not self._gone:
            try:
                close_code = WSCloseCode(code)
            except ValueError:  # a code picows has no name for
                close_code = WSCloseCode.INTERNAL_ERROR
            transport.send_close(close_code, (reason or "").encode()[:CLOSE_REASON_BYTES])
            transport.disconnect()

    async def pushed_messages(self, sink: MessageSink,
                              stalled: Callable[[], bool]) -> AsyncIterator[str | bytes]:
        """The call's messages, pushed: from here on each inbound frame is handed to ``sink.feed``
        inside picows' callback (no queue, no task switch per message). Yields nothing; returns
        when the call is over (Twilio's ``stop``, a close, or sending stalled) and re-raises,
        inside ``CallSession.run``, an error the call raised on a message."""
        while (message := self._inbox.take()) is not None:  # what arrived between start and now
            raw = message.get("text")
            if not sink.feed(raw if raw is not None else message.get("bytes") or b""):
                return
        call = self._pushed = PushedCall(sink, stalled, self._inbox)
        try:
            while not (self._gone or call.over or stalled()):
                await self._inbox.wait()
        finally:
            self._pushed = None
        if call.failure is not None:
            raise call.failure
        return
        yield  # an async generator that yields nothing

    # ---- internals ------------------------------------------------------------------------------
    def _raw_transport(self) -> Any:
        """Where corked frames go: the socket's transport while the connection is up."""
        transport = self._transport
        return None if transport is None or self._gone else transport.underlying_transport

    def _payload(self, frame: WSFrame, kind: WSMsgType) -> str | bytes | None:
        """A data frame's message: text as str, anything else as bytes (which the parser counts
        as a binary frame). Twilio never fragments its small messages, so fragments are not
        reassembled: a first fragment fails to parse, a continuation counts as binary. Invalid
        UTF-8 closes the socket with 1007, as websockets does on the ASGI route."""
        if kind is WSMsgType.TEXT:
            try:
                return frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                self._close_soon(1007, "invalid UTF-8")
                return None
        if kind is WSMsgType.BINARY or kind is WSMsgType.CONTINUATION:
            return frame.get_payload_as_bytes()
        return None  # ping/pong: picows answers pings itself

    def _own(self, coro: Any, name: str) -> None:
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close_soon(self, code: int, reason: str) -> None:
        if self._open:
            self._own(self.close(code, reason), "media-stream-close")

    def _on_gone(self) -> None:
        self._gone = True
        self._open = False
        self._writer.writable.set()  # a send waiting for room returns (and drops) instead of hanging
        self._inbox.wake()

    async def _serve(self) -> None:
        try:
            await self._handler(self)
        except Exception:  # the handler closes with 1011 itself: this is a bug in that close
            log.exception("media stream failed")
        finally:
            await self.close(1000, "call ended")


class FastStreamServer:
    """The picows listener for ``/media-stream``; owns every connection's handler task."""

    def __init__(self, app: Any, handler: StreamHandler) -> None:
        self.app = app
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _factory(self, request: WSUpgradeRequest) -> PicowsSocket | None:
        if request.path.split(b"?", 1)[0] != STREAM_PATH:
            return None  # picows answers 404
        return PicowsSocket(self.app, request, self._tasks, handler=self._handler)

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with port 0 in tests)."""
        sock = workers.listen_socket("stream", host, port)  # under --workers: the shared one
        self._server = await ws_create_server(
            self._factory, sock=sock, max_frame_size=MAX_FRAME_BYTES,
            websocket_handshake_timeout=5, enable_auto_ping=True,
            auto_ping_idle_timeout=20, auto_ping_reply_timeout=20,
        )
        bound = self._server.sockets[0].getsockname()[1]
        log.info("media stream listener (picows) on %s:%d", host, bound)
        return int(bound)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
