"""The media stream's socket: what the call needs of it (send, read, close), for either listener.

Both listeners hand the same handler a socket with this shape: starlette's ``WebSocket`` on the
ASGI route, and ``PicowsSocket`` (telephony/twilio/picows_socket.py) on the lean listener.
``StreamSocket`` names that shape, so the handler is typed against it rather than against
starlette. What is done *with* the socket lives here once: the sender that never waits on a peer
that stopped reading, reading up to ``start``, reading the call's frames, and a bounded close.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from starlette.datastructures import Address
from starlette.websockets import WebSocketDisconnect, WebSocketState

from telephony.twilio.protocol import Connected, ProtocolError, Start, parse_inbound
from telephony.untrusted import close_reason
from tts_core.errors import UpstreamFailed


class StreamSocket(Protocol):
    """The part of starlette's ``WebSocket`` the media stream handler uses."""

    @property
    def app(self) -> Any:  # starlette types it as Any: the ASGI app whose ``state`` holds the bridge
        """The application (its ``state.bridge`` and ``state.connection_guard``)."""

    @property
    def client(self) -> Address | None:
        """The peer's address (per-peer connection caps)."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The upgrade request's headers (``X-Twilio-Signature``)."""

    @property
    def application_state(self) -> WebSocketState:
        """CONNECTED until we close."""

    @property
    def client_state(self) -> WebSocketState:
        """DISCONNECTED once the peer is gone."""

    async def accept(self) -> None:
        """Complete the upgrade (nothing to do on picows)."""

    async def receive(self) -> Mapping[str, Any]:
        """The next ASGI message: ``websocket.receive`` (text or bytes) or ``websocket.disconnect``."""

    async def send_text(self, data: str) -> None:
        """Send one text frame."""

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Send a close frame."""


class MessageSink(Protocol):
    """Who takes a running call's raw messages (``CallSession.feed``): False once the call is over."""

    def feed(self, raw: str | bytes) -> bool:
        """Handle one message from Twilio."""


@runtime_checkable
class PushesMessages(Protocol):
    """A socket that hands each frame to the call from its own callback (the picows listener)."""

    def pushed_messages(self, sink: MessageSink,
                        stalled: Callable[[], bool]) -> AsyncIterator[str | bytes]:
        """Feed ``sink`` until the call is over; yields nothing."""


@runtime_checkable
class TakesAtOnce(Protocol):
    """A socket that can take messages synchronously while its peer reads (the picows listener's
    corked writer): the pacer then sends from its shared ticker, with no await per frame."""

    def writable_now(self) -> bool:
        """The socket's buffer is below its high-water mark: a send now would not wait."""

    def send_texts_now(self, texts: list[str]) -> None:
        """Send ``texts`` as text frames, in order, without waiting."""


class StreamGone(UpstreamFailed):
    """Twilio closed the socket before the call started: nothing to answer, nothing to count."""

    kind = "stream_gone"


class StreamSender:
    """Sends to Twilio one message at a time, never waiting on a peer that stopped reading.

    A send that waits ``stall_s`` (the socket's buffer is full) marks the stream stalled: that send
    and every later one are dropped and ``on_stall`` runs once, so the call's speaker never hangs
    on the socket and the call can end.

    Why a watchdog rather than ``asyncio.timeout`` around each send: this runs for every frame, 50
    times a second per call, and a timeout costs ~9 µs per send (a timer scheduled and cancelled)
    against ~1 µs for the lock; the watchdog arms one timer per ``stall_s`` while sends go on.

    Over a socket that ``TakesAtOnce``, ``can_send_now``/``send_now`` send without awaiting while
    the socket has room (the pacer's fast path): such a send cannot wait, so it cannot stall. Once
    the socket is full, ``can_send_now`` says no and the pacer awaits ``__call__``, where the
    watchdog times the wait as before.
    """

    def __init__(self, send: Callable[[str], Awaitable[None]], is_open: Callable[[], bool], *,
                 stall_s: float, on_stall: Callable[[], None], at_once: TakesAtOnce | None = None) -> None:
        self._send = send
        self._at_once = at_once
        self._is_open = is_open
        self._stall_s = stall_s
        self._on_stall = on_stall
        self._lock = asyncio.Lock()
        self._sending_since: float | None = None
        self._sender: asyncio.Task[Any] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.stalled = False

    async def __call__(self, text: str) -> None:
        async with self._lock:
            if self.stalled or not self._is_open():
                return
            loop = asyncio.get_running_loop()
            self._sending_since = loop.time()
            self._sender = asyncio.current_task()
            if self._watchdog is None:
                self._watchdog = loop.call_later(self._stall_s, self._check)
            try:
                await self._send(text)
            except asyncio.CancelledError:
                task = self._sender
                if not self.stalled or task is None or task.uncancel() > 0:
                    raise  # a cancellation of our own caller, not the watchdog's
            finally:
                self._sending_since = None
                self._sender = None

    def can_send_now(self) -> bool:
        """``send_now`` may be used: no send is in progress (it would be overtaken) and the socket
        takes data at once, or everything is being dropped anyway (stalled)."""
        if self._lock.locked():
            return False
        if self.stalled:
            return True
        at_once = self._at_once
        return at_once is not None and at_once.writable_now()

    def send_now(self, texts: list[str]) -> None:
        """Send ``texts`` in order without waiting; dropped as ``__call__`` drops them."""
        at_once = self._at_once
        if self.stalled or at_once is None or not self._is_open():
            return
        at_once.send_texts_now(texts)

    def _check(self) -> None:
        self._watchdog = None
        since = self._sending_since
        if since is None:
            return  # idle: the next send arms the watchdog again
        loop = asyncio.get_running_loop()
        waited = loop.time() - since
        if waited < self._stall_s:
            self._watchdog = loop.call_later(self._stall_s - waited, self._check)
            return
        self.stalled = True
        self._on_stall()
        if self._sender is not None:
            self._sender.cancel()  # the stuck send returns; the sender drops everything after it


def frame_text(message: Mapping[str, Any]) -> str | bytes | None:
    """The payload of one ``websocket.receive`` message: its text, else its bytes."""
    text = message.get("text")
    return text if text is not None else message.get("bytes")


async def read_until_start(ws: StreamSocket) -> tuple[Start, list[str | bytes]]:
    """Read until ``start``; ``connected`` may come first. Anything else before start is an error.

    Returns the start and the raw messages read (for the call recording). Raises ``StreamGone``
    when Twilio leaves first, ``ProtocolError`` on anything that is not connected-then-start."""
    opening: list[str | bytes] = []
    while True:
        try:
            message = await ws.receive()
        except WebSocketDisconnect:
            raise StreamGone("closed before start") from None
        if message["type"] == "websocket.disconnect":
            raise StreamGone("closed before start")
        raw = frame_text(message)
        parsed = parse_inbound(raw)
        if raw is not None:
            opening.append(raw)
        if isinstance(parsed, Start):
            return parsed, opening
        if not isinstance(parsed, Connected):
            raise ProtocolError("unexpected_before_start", f"{type(parsed).__name__} before start")


async def received_frames(ws: StreamSocket, stalled: Callable[[], bool]) -> AsyncIterator[str | bytes]:
    """Raw frames until the socket closes or sending stalls; parsing is the call's job."""
    while not stalled():
        try:
            message = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):  # starlette: receive after the disconnect
            return
        if message["type"] == "websocket.disconnect":
            return
        yield frame_text(message) or b""


def call_messages(ws: StreamSocket, sink: MessageSink,
                  stalled: Callable[[], bool]) -> AsyncIterator[str | bytes]:
    """The running call's messages: pushed into ``sink`` by a socket that can (picows, no task switch
    per message), otherwise read here and yielded to ``CallSession.run``."""
    if isinstance(ws, PushesMessages):
        return ws.pushed_messages(sink, stalled)
    return received_frames(ws, stalled)


async def close_stream(ws: StreamSocket, code: int, reason: str, *, timeout_s: float) -> None:
    """Close with ``code``, waiting at most ``timeout_s`` (a peer that does not read may never take
    the close frame); the reason is cut to the 123 UTF-8 bytes a close frame can carry."""
    if ws.application_state == WebSocketState.CONNECTED and ws.client_state != WebSocketState.DISCONNECTED:
        try:
            async with asyncio.timeout(timeout_s):
                await ws.close(code=code, reason=close_reason(reason))
        except (RuntimeError, WebSocketDisconnect, OSError, TimeoutError):
            pass  # the peer is gone or not reading: there is no one left to tell
