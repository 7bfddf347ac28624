"""``WS /media-stream``: Twilio's bidirectional Media Streams socket, authenticated, then a call.

Authentication (with an auth token; --insecure-dev checks nothing):
1. a handshake carrying ``X-Twilio-Signature`` is checked against exactly the stream URL (the wss://
   form of PUBLIC_URL + /media-stream, no params) and refused if invalid. A valid one is not enough
   on its own: it signs only that fixed URL, the same for every call, so it can be replayed;
2. every stream's ``start`` must arrive within ``start_timeout_s`` with the token the signed webhook
   issued (a ``<Parameter>``), valid for start.callSid and for exactly the parameters the webhook
   answered (see ``StreamTokens``: stateless, so any process with the auth token verifies it),
   unexpired and not yet used in this process; a CallSid or streamSid already live is refused;
3. anything else is closed with 1008 before any engine work starts. ``require_stream_signature``
   makes (1) mandatory too. Whether the header was present is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from telephony.agents import make_agent, per_call_agent_allowed
from telephony.agents.base import AgentError
from telephony.call_session import CallSession
from telephony.conn_guard import ConnectionGuard
from telephony.services import Bridge
from telephony.stream_auth import stream_url, validate_stream_handshake
from telephony.twilio_media import Connected, ProtocolError, Start, parse_inbound
from telephony.untrusted import close_reason
from tts_core.presets import PresetError

log = logging.getLogger(__name__)
router = APIRouter()

POLICY_VIOLATION = 1008
UNSUPPORTED_DATA = 1003
TRY_AGAIN_LATER = 1013
SEND_STALL_S = 5.0
"""A send to Twilio waiting this long (the transport's write buffer over its high-water mark and
the kernel's buffers full: Twilio stopped reading) ends the call at once: sends from then on are
dropped and the session stops reading (``CallSession.abort``). A peer that stops reading while the
kernel still has room is caught by its marks instead (telephony/speaker.py)."""
CLOSE_TIMEOUT_S = 2.0
"""A close waits at most this long: a peer that does not read may never take the close frame."""


@router.websocket("/media-stream")
async def media_stream(ws: WebSocket) -> None:
    """Counts the stream as unauthenticated until its ``start`` (telephony/conn_guard.py): past
    the global or per-peer cap it is closed with 1013 before anything is read from it."""
    guard: ConnectionGuard | None = getattr(ws.app.state, "connection_guard", None)
    if guard is None:
        await _media_stream(ws, lambda: None)
        return
    peer = ws.client.host if ws.client else "unknown"
    refusal = guard.streams.acquire(peer)
    if refusal is not None:
        guard.refuse(refusal, peer, "media stream")
        await ws.accept()
        await _close(ws, TRY_AGAIN_LATER, "too many streams waiting for start; retry")
        return
    held = True

    def release() -> None:
        nonlocal held
        if held:
            held = False
            guard.streams.release(peer)

    try:
        await _media_stream(ws, release)
    finally:
        release()


async def _media_stream(ws: WebSocket, started: Callable[[], None]) -> None:
    bridge: Bridge = ws.app.state.bridge
    settings = bridge.settings
    await ws.accept()
    signature = ws.headers.get("x-twilio-signature")
    auth_mode = "insecure-dev"
    if settings.twilio_auth_token:
        if signature is not None:
            url = stream_url(settings.stream_public_base())
            if not validate_stream_handshake(settings.twilio_auth_token, url, signature):
                bridge.metrics.error("stream_signature")
                log.warning("media stream refused: invalid X-Twilio-Signature for %s", url)
                await _close(ws, POLICY_VIOLATION, "invalid signature")
                return
            auth_mode = "signature+token"
        elif settings.require_stream_signature:
            bridge.metrics.error("stream_unsigned")
            await _close(ws, POLICY_VIOLATION, "X-Twilio-Signature required")
            return
        else:
            auth_mode = "token"
    log.info("media stream handshake: X-Twilio-Signature %s",
             "present" if signature is not None else "absent")

    try:
        start, opening = await asyncio.wait_for(_await_start(ws), settings.start_timeout_s)
    except TimeoutError:
        bridge.metrics.error("start_timeout")
        await _close(ws, POLICY_VIOLATION, "no start message in time")
        return
    except (WebSocketDisconnect, _StreamGone):
        return
    except ProtocolError as exc:
        bridge.metrics.error(f"protocol_{exc.kind}")
        await _close(ws, POLICY_VIOLATION, f"protocol error before start: {exc.kind}")
        return
    started()  # no longer counted as unauthenticated: the checks below take no time
    bridge.drain.stream_arrived(start.call_sid)

    if settings.twilio_auth_token:
        called = {k: v for k, v in start.custom_parameters.items() if k != "token"}
        token = start.custom_parameters.get("token", "")
        problem = bridge.tokens.redeem(token, start.call_sid, called) if token else "missing"
        if problem is not None:
            bridge.metrics.error("stream_token")
            log.warning("media stream %s refused: stream token %s for call %s",
                        start.stream_sid, problem, start.call_sid)
            await _close(ws, POLICY_VIOLATION, "invalid or expired stream token")
            return
    if not start.is_supported_format():
        bridge.metrics.error("media_format")
        log.error("media stream %s refused: unsupported media format %s", start.stream_sid,
                  start.media_format)
        await _close(ws, UNSUPPORTED_DATA, "only audio/x-mulaw 8000 Hz mono is supported")
        return
    if start.stream_sid in bridge.calls:
        bridge.metrics.error("duplicate_stream")
        log.warning("media stream %s refused: that streamSid is already live", start.stream_sid)
        await _close(ws, POLICY_VIOLATION, "streamSid already in use")
        return
    if any(call.info.call_sid == start.call_sid for call in bridge.calls.values()):
        bridge.metrics.error("duplicate_call")
        log.warning("media stream %s refused: call %s is already live", start.stream_sid, start.call_sid)
        await _close(ws, POLICY_VIOLATION, "call already live")
        return
    if len(bridge.calls) >= settings.max_calls:
        bridge.metrics.error("capacity")
        await _close(ws, TRY_AGAIN_LATER, "bridge at capacity")
        return

    params = start.custom_parameters
    voice_started = time.perf_counter()
    try:
        preset = bridge.presets.get(params.get("preset") or settings.default_preset)
        voice_id, voice = await bridge.resolve_voice(params.get("voice"))
        voice_load_ms = (time.perf_counter() - voice_started) * 1000
        agent_spec = params.get("agentUrl") or settings.default_agent
        if not per_call_agent_allowed(agent_spec, settings.default_agent,
                                      llm_configured=settings.llm_url is not None):
            raise AgentError("agentUrl must be a ws:// or wss:// URL or 'demo'")
        agent = make_agent(agent_spec, bridge)
    except (PresetError, LookupError, ValueError, RuntimeError, AgentError) as exc:
        bridge.metrics.error("call_setup")
        log.warning("media stream %s refused: %s", start.stream_sid, exc)
        await _close(ws, POLICY_VIOLATION, f"call setup failed: {exc}")
        return

    def on_stall() -> None:
        bridge.metrics.error("twilio_send_stalled")
        session.abort("twilio stopped reading", f"a send waited {SEND_STALL_S:.0f} s")

    send_text = StreamSender(ws.send_text, lambda: ws.application_state == WebSocketState.CONNECTED,
                             stall_s=SEND_STALL_S, on_stall=on_stall)

    async def close_socket(code: int, reason: str) -> None:
        await _close(ws, code, reason)

    recorder = None
    if settings.record_dir is not None:
        from telephony.recording import CallRecorder

        recorder = CallRecorder.open(settings.record_dir, start)
        for raw in opening:
            recorder.twilio_message(raw)
    session = CallSession(
        bridge=bridge, start=start, agent=agent, voice_id=voice_id, voice=voice, preset=preset,
        send_text=send_text, close_socket=close_socket, greeting=params.get("greeting", ""),
        auth_mode=auth_mode, recorder=recorder, voice_load_ms=voice_load_ms,
    )
    pushed = getattr(ws, "pushed_messages", None)  # the lean listener feeds the session itself
    stalled = lambda: send_text.stalled  # noqa: E731
    await session.run(pushed(session, stalled) if pushed else _messages(ws, stalled))
    if not send_text.stalled:  # a peer that stopped reading already had its bounded close
        await _close(ws, 1000, "call ended")


class StreamSender:
    """Sends to Twilio one message at a time, never waiting on a peer that stopped reading.

    A send that waits ``stall_s`` (the socket's buffer is full) marks the stream stalled: that send
    and every later one are dropped and ``on_stall`` runs once, so the call's speaker never hangs
    on the socket and the call can end.

    Why a watchdog rather than ``asyncio.timeout`` around each send: this runs for every frame, 50
    times a second per call, and a timeout costs ~9 µs per send (a timer scheduled and cancelled)
    against ~1 µs for the lock; the watchdog arms one timer per ``stall_s`` while sends go on.
    """

    def __init__(self, send: Callable[[str], Awaitable[None]], is_open: Callable[[], bool], *,
                 stall_s: float, on_stall: Callable[[], None]) -> None:
        self._send = send
        self._is_open = is_open
        self._stall_s = stall_s
        self._on_stall = on_stall
        self._lock = asyncio.Lock()
        self._sending_since: float | None = None
        self._sender: asyncio.Task[object] | None = None
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


class _StreamGone(Exception):
    pass


async def _await_start(ws: WebSocket) -> tuple[Start, list[str]]:
    """Read until ``start``; ``connected`` may come first. Anything else before start is an error.

    Returns the start and the raw messages read (for the call recording)."""
    opening: list[str] = []
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            raise _StreamGone
        raw = message.get("text") if message.get("text") is not None else message.get("bytes")
        parsed = parse_inbound(raw)
        opening.append(raw)
        if isinstance(parsed, Start):
            return parsed, opening
        if not isinstance(parsed, Connected):
            raise ProtocolError("unexpected_before_start",
                                f"{type(parsed).__name__} before start")


async def _messages(ws: WebSocket, stalled: Callable[[], bool]) -> AsyncIterator[str | bytes]:
    """Raw frames until the socket closes or sending stalls; parsing is the session's job."""
    while not stalled():
        try:
            message = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        yield text if text is not None else (message.get("bytes") or b"")


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    """Close with ``code``; the reason is cut to the 123 UTF-8 bytes a close frame can carry."""
    if ws.application_state == WebSocketState.CONNECTED and ws.client_state != WebSocketState.DISCONNECTED:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await ws.close(code=code, reason=close_reason(reason))
        except (RuntimeError, WebSocketDisconnect, OSError, TimeoutError):
            pass
