"""``/media-stream`` on its own lean listener (picows), the same handler as the ASGI route.

Why: a profile of 120 phrase-cached calls showed ~45% of the bridge's CPU in the ASGI stack around
the 100 WebSocket messages a second each call exchanges (uvicorn's protocol, websockets' Python
framing, starlette's receive/send dicts, one ``write`` per outbound frame). picows parses and builds
frames in C and hands each frame to a plain callback, with no ASGI in between.

What stays identical: the whole call, authentication included, is ``media_stream.media_stream``
running on ``PicowsSocket``, an adapter with the small part of starlette's ``WebSocket`` that the
handler uses (``app``, ``headers``, ``accept``, ``receive``, ``send_text``, ``close`` and the two
states). Every check a change to that handler adds applies to both listeners.

What is leaner here:
- outbound frames are *corked*: ``send_text`` builds the (unmasked, server-side) frame header
  itself and appends to a buffer flushed by one ``call_soon`` per event-loop pass, so the burst the
  pacer sends every tick (3 frames, plus a mark) leaves in one ``transport.write`` (one syscall);
- inbound frames: until ``start`` they queue for ``receive``; once the call runs they are pushed
  to ``CallSession.feed`` from picows' callback (``pushed_messages``), with no task switch per
  message (50 a second per call);
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
from collections.abc import AsyncIterator, Callable
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

from telephony import media_stream, workers

log = logging.getLogger(__name__)

STREAM_PATH = b"/media-stream"
MAX_INBOX = 500
"""Inbound messages held for a handler that is not reading (10 s of Twilio's 50 a second): more
means the handler is stuck, and the socket is closed rather than grow without bound."""
MAX_FRAME_BYTES = 1 << 20
"""As the ASGI route's ``ws_max_size``."""


def frame_header(length: int) -> bytes:
    """Header of one unmasked, final text frame (RFC 6455 5.2: servers never mask)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


class PicowsSocket(WSListener):
    """One Twilio connection: picows' listener and a starlette-``WebSocket``-like adapter at once."""

    def __init__(self, app: Any, request: WSUpgradeRequest, tasks: set[asyncio.Task[None]]) -> None:
        super().__init__()
        self.app = app
        self.headers = request.headers
        self._tasks = tasks
        self._transport: WSTransport | None = None
        self._loop = asyncio.get_running_loop()  # kept: get_running_loop() costs a getpid()
        self._inbox: deque[dict[str, Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._open = True
        """Neither side has closed: sends are still delivered."""
        self._gone = False
        """The connection is down (peer closed or disconnected)."""
        self._close_code = 1005
        self._session: Any = None
        """Set while ``pushed_messages`` runs: frames go straight to ``session.feed``."""
        self._stalled: Callable[[], bool] = lambda: False
        self._call_over = False
        self._failure: Exception | None = None
        self.client: Address | None = None
        """The peer's address, as starlette's ``WebSocket.client`` (per-peer connection caps)."""

    # ---- picows callbacks (run on the event loop, never block) ------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        peer = transport.underlying_transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = Address(str(peer[0]), int(peer[1]))
        task = self._loop.create_task(self._serve(), name="media-stream-fast")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.CLOSE:
            self._close_code = int(frame.get_close_code().value)
            self._flush()
            if self._open:
                self._open = False
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            self._on_gone()
            return
        raw = self._payload(frame)
        if raw is None:
            return
        session = self._session
        if session is not None:
            self._push(session, raw)
        else:
            self._deliver({"type": "websocket.receive", "text": raw} if isinstance(raw, str)
                          else {"type": "websocket.receive", "bytes": raw})

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._out.clear()
        self._on_gone()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ---- the adapter (what media_stream.media_stream calls) ---------------------------------------
    @property
    def application_state(self) -> WebSocketState:
        return WebSocketState.CONNECTED if self._open else WebSocketState.DISCONNECTED

    @property
    def client_state(self) -> WebSocketState:
        return WebSocketState.DISCONNECTED if self._gone else WebSocketState.CONNECTED

    async def accept(self) -> None:
        """picows completed the upgrade before ``on_ws_connected``: nothing left to do."""

    async def receive(self) -> dict[str, Any]:
        while not self._inbox:
            if self._gone:
                return {"type": "websocket.disconnect", "code": self._close_code}
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._inbox.popleft()

    async def send_text(self, text: str) -> None:
        if not self._writable.is_set():
            await self._writable.wait()  # Twilio is not reading: the stall watchdog sees this wait
        if not self._open or self._transport is None:
            return
        data = text.encode()
        self._out.append(frame_header(len(data)))
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        if not self._open:
            return
        self._open = False
        self._flush()
        transport = self._transport
        if transport is not None and not self._gone:
            try:
                close_code = WSCloseCode(code)
            except ValueError:  # a code picows has no name for
                close_code = WSCloseCode.INTERNAL_ERROR
            transport.send_close(close_code, (reason or "").encode()[:123])
            transport.disconnect()

    async def pushed_messages(self, session: Any, stalled: Callable[[], bool]) -> AsyncIterator[str]:
        """The call's messages, pushed: from here on each inbound frame is handed to
        ``session.feed`` inside picows' callback (no queue, no task switch per message). Yields
        nothing; returns when the call is over (Twilio's ``stop``, a close, or sending stalled) and
        re-raises, inside ``session.run``, an error the session raised on a message."""
        self._stalled = stalled
        while self._inbox:  # what arrived between ``start`` and now
            message = self._inbox.popleft()
            raw = message.get("text")
            if not session.feed(raw if raw is not None else message.get("bytes") or b""):
                return
        self._session = session
        try:
            while not (self._gone or self._call_over or stalled()):
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        finally:
            self._session = None
        if self._failure is not None:
            raise self._failure
        return
        yield  # an async generator that yields nothing

    # ---- internals ------------------------------------------------------------------------------
    def _payload(self, frame: WSFrame) -> str | bytes | None:
        """A data frame's message: text as str, anything else as bytes (which the parser counts
        as a binary frame). Twilio never fragments its small messages, so fragments are not
        reassembled: a first fragment fails to parse, a continuation counts as binary. Invalid
        UTF-8 closes the socket with 1007, as websockets does on the ASGI route."""
        kind = frame.msg_type
        if kind is WSMsgType.TEXT:
            try:
                return frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                self._close_soon(1007, "invalid UTF-8")
                return None
        if kind is WSMsgType.BINARY or kind is WSMsgType.CONTINUATION:
            return frame.get_payload_as_bytes()
        return None  # ping/pong: picows answers pings itself

    def _close_soon(self, code: int, reason: str) -> None:
        if not self._open:
            return
        task = self._loop.create_task(self.close(code, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _push(self, session: Any, raw: str | bytes) -> None:
        if self._call_over:
            return
        try:
            going_on = session.feed(raw) and not self._stalled()
        except Exception as exc:  # re-raised in session.run, which ends that call only
            self._failure = exc
            going_on = False
        if not going_on:
            self._call_over = True
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _deliver(self, message: dict[str, Any]) -> None:
        if len(self._inbox) >= MAX_INBOX:
            if self._open:
                log.warning("media stream: handler not reading; closing the socket")
            self._close_soon(1013, "not reading")
            return
        self._inbox.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        transport = self._transport
        data = b"".join(self._out)
        self._out.clear()
        if transport is not None and not self._gone:
            transport.underlying_transport.write(data)

    def _on_gone(self) -> None:
        self._gone = True
        self._open = False
        self._writable.set()  # a send waiting for room returns (and drops) instead of hanging
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _serve(self) -> None:
        try:
            await media_stream.media_stream(self)  # type: ignore[arg-type]
        except Exception:
            log.exception("media stream failed")
        finally:
            await self.close(1000, "call ended")


class FastStreamServer:
    """The picows listener for ``/media-stream``; owns every connection's handler task."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _factory(self, request: WSUpgradeRequest) -> PicowsSocket | None:
        if request.path.split(b"?", 1)[0] != STREAM_PATH:
            return None  # picows answers 404
        return PicowsSocket(self.app, request, self._tasks)

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
