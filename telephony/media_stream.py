"""``WS /media-stream``: Twilio's bidirectional Media Streams socket: authenticate, admit, run the call.

1. authenticate (telephony/twilio/authentication.py): the handshake's signature, the ``start`` in
   time, and its call-bound stream token;
2. admit (telephony/call_admission.py): a supported format, not a stream or call already live, room
   on this bridge, and the preset, voice and agent the call asked for;
3. run the call (telephony/call_session.py) until it ends, then close.

A refusal at (1) or (2) closes the stream with its error's ``ws_close_code`` before any engine work
starts. The same handler serves the lean picows listener (telephony/twilio/picows_socket.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketState

from telephony.call_admission import Admitted, admit
from telephony.call_session import CallSession
from telephony.conn_guard import ConnectionGuard
from telephony.services import Bridge
from telephony.twilio.authentication import (
    Authenticated,
    Refused,
    StreamAuthPolicy,
    authenticate,
)
from telephony.twilio.protocol import Start
from telephony.twilio.signatures import stream_url
from telephony.twilio.socket import StreamSender, StreamSocket, TakesAtOnce, call_messages, close_stream
from tts_core.errors import Overloaded, VoiceBridgeError

if TYPE_CHECKING:
    from telephony.recording import CallRecorder

log = logging.getLogger(__name__)
router = APIRouter()

SEND_STALL_S = 5.0
"""A send to Twilio waiting this long (the transport's write buffer over its high-water mark and
the kernel's buffers full: Twilio stopped reading) ends the call at once: sends from then on are
dropped and the session stops reading (``CallSession.abort``). A peer that stops reading while the
kernel still has room is caught by its marks instead (telephony/speaker.py)."""
CLOSE_TIMEOUT_S = 2.0
"""A close waits at most this long: a peer that does not read may never take the close frame."""
INTERNAL_ERROR = VoiceBridgeError.ws_close_code
"""A bug (not a deliberate refusal): 1011, after logging the traceback."""

__all__ = ["CLOSE_TIMEOUT_S", "SEND_STALL_S", "StreamSender", "handle_stream", "media_stream", "router"]


@router.websocket("/media-stream")
async def media_stream(ws: WebSocket) -> None:
    """The ASGI route (FastAPI finds the socket by its ``WebSocket`` annotation)."""
    await handle_stream(ws)


async def handle_stream(ws: StreamSocket) -> None:
    """Counts the stream as unauthenticated until its ``start`` (telephony/conn_guard.py): past
    the global or per-peer cap it is closed with 1013 before anything is read from it."""
    guard: ConnectionGuard | None = getattr(ws.app.state, "connection_guard", None)
    if guard is None:
        await _guarded(ws, lambda: None)
        return
    peer = ws.client.host if ws.client else "unknown"
    refusal = guard.streams.acquire(peer)
    if refusal is not None:
        guard.refuse(refusal, peer, "media stream")
        await ws.accept()
        await _close(ws, Overloaded.ws_close_code, "too many streams waiting for start; retry")
        return
    held = True

    def release() -> None:
        nonlocal held
        if held:
            held = False
            guard.streams.release(peer)

    try:
        await _guarded(ws, release)
    finally:
        release()


async def _guarded(ws: StreamSocket, started: Callable[[], None]) -> None:
    """The stream's three steps; a bug in them is logged with its traceback and closes with 1011
    (never hidden: only deliberate refusals close with their own code)."""
    try:
        await _authenticate_admit_run(ws, started)
    except Exception:
        log.exception("media stream failed")
        await _close(ws, INTERNAL_ERROR, "internal error")


async def _authenticate_admit_run(ws: StreamSocket, started: Callable[[], None]) -> None:
    bridge: Bridge = ws.app.state.bridge
    await ws.accept()

    def on_start(start: Start) -> None:
        started()  # no longer counted as unauthenticated: the checks that follow take no time
        bridge.drain.stream_arrived(start.call_sid)

    auth = await authenticate(ws, _auth_policy(bridge), bridge.tokens, on_start=on_start)
    if isinstance(auth, Refused):
        await _refuse(ws, bridge, auth)
        return
    call = await admit(auth, bridge)
    if isinstance(call, Refused):
        await _refuse(ws, bridge, call)
        return
    await run_call(ws, bridge, auth, call)


def _auth_policy(bridge: Bridge) -> StreamAuthPolicy:
    settings = bridge.settings
    return StreamAuthPolicy(
        auth_token=settings.twilio_auth_token,
        stream_url=lambda: stream_url(settings.stream_public_base()),
        require_signature=settings.require_stream_signature,
        start_timeout_s=settings.start_timeout_s,
    )


async def _refuse(ws: StreamSocket, bridge: Bridge, refused: Refused) -> None:
    """Count, log and close: the close code and reason come from the refusal's error."""
    if refused.metric is not None:
        bridge.metrics.error(refused.metric)
    if refused.detail:
        log.warning("media stream refused: %s", refused.detail)
    await _close(ws, refused.close_code, refused.reason)


async def run_call(ws: StreamSocket, bridge: Bridge, auth: Authenticated, call: Admitted) -> None:
    """The admitted call, from its greeting to its close."""
    session: CallSession | None = None

    def on_stall() -> None:
        bridge.metrics.error("twilio_send_stalled")
        if session is not None:
            session.abort("twilio stopped reading", f"a send waited {SEND_STALL_S:.0f} s")

    sender = StreamSender(ws.send_text, lambda: ws.application_state == WebSocketState.CONNECTED,
                          stall_s=SEND_STALL_S, on_stall=on_stall,
                          at_once=ws if isinstance(ws, TakesAtOnce) else None)

    async def close_socket(code: int, reason: str) -> None:
        await _close(ws, code, reason)

    params = auth.start.custom_parameters
    session = CallSession(
        bridge=bridge, start=auth.start, agent=call.agent, voice_id=call.voice_id, voice=call.voice,
        preset=call.preset, send_text=sender, close_socket=close_socket,
        greeting=params.get("greeting", ""), auth_mode=auth.auth_mode,
        recorder=_open_recorder(bridge, auth), voice_load_ms=call.voice_load_ms,
    )
    await session.run(call_messages(ws, session, lambda: sender.stalled))
    if not sender.stalled:  # a peer that stopped reading already had its bounded close
        reason = "call ended" if session.close_code == 1000 else "internal error"
        await _close(ws, session.close_code, reason)


def _open_recorder(bridge: Bridge, auth: Authenticated) -> CallRecorder | None:
    """The call's recording (VOICE_BRIDGE_RECORD_DIR), starting with the messages up to ``start``."""
    if bridge.settings.record_dir is None:
        return None
    from telephony.recording import CallRecorder

    recorder = CallRecorder.open(bridge.settings.record_dir, auth.start)
    for raw in auth.opening:
        recorder.twilio_message(raw)
    return recorder


async def _close(ws: StreamSocket, code: int, reason: str) -> None:
    await close_stream(ws, code, reason, timeout_s=CLOSE_TIMEOUT_S)
