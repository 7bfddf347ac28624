"""The agent's side of replayed calls: one loopback ConversationRelay server for every call of a
run (``AgentServer``), and the recorded agent of one call (``RecordedAgent``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import websockets
from websockets.asyncio.server import Server, ServerConnection

from telephony.recorded_call import RecordedCall
from telephony.testing.replay_emulator import ReplayEmulator
from telephony.testing.replay_result import CallResult

if TYPE_CHECKING:
    from telephony.testing.replay import CallReplay


class RecordedAgent:
    """The agent's side of one replayed call: answers the bridge's ConversationRelay socket,
    checks what the bridge sends it, and sends the recording's agent messages on their recorded
    timing (from the moment the emulator sent ``start``; none before the bridge's ``setup``)."""

    def __init__(self, recording: RecordedCall, result: CallResult, call_sid: str) -> None:
        self.recording = recording
        self.result = result
        self.call_sid = call_sid
        self.emulator: ReplayEmulator | None = None
        self.started = asyncio.Event()
        """Set by the replay once the emulator sent ``start`` (``emulator`` is then set)."""
        self.done = asyncio.Event()
        """Every recorded agent message was sent (or the socket closed)."""
        self.ended = False
        """The agent sent ``end``: the bridge may close the stream."""
        self.ws: ServerConnection | None = None
        self._turns = {turn.first_event: turn for turn in recording.agent_turns}
        if not recording.agent_actions:
            self.done.set()

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(1000, "call over"), 2)

    async def serve(self, ws: ServerConnection) -> None:
        """Answer the bridge's agent socket for this call (called by ``AgentServer``)."""
        result = self.result
        self.ws = ws
        try:
            raw = await asyncio.wait_for(ws.recv(), 10)
        except TimeoutError:
            result.errors.append("agent_protocol: no setup message within 10 s")
            return
        except websockets.ConnectionClosed:
            return
        setup_at = time.monotonic()
        setup = _json_or_none(raw)
        if not isinstance(setup, dict) or setup.get("type") != "setup":
            result.errors.append(f"agent_protocol: first message is not setup: {str(raw)[:80]!r}")
            return
        result.agent_connected = True
        self._count("setup")
        if setup.get("callSid") not in (None, self.call_sid):
            result.errors.append(f"agent_protocol: setup.callSid {setup.get('callSid')!r} is not "
                                 f"{self.call_sid}")
        await self.started.wait()
        emulator = self.emulator
        assert emulator is not None and emulator.start_sent_at is not None
        result.agent_setup_ms = round((setup_at - emulator.start_sent_at) * 1000, 1)
        emulator.note(setup_at, "agent_setup")
        sender = asyncio.create_task(self._send(ws, emulator))
        try:
            async for message in ws:
                now = time.monotonic()
                parsed = _json_or_none(message)
                kind = parsed.get("type") if isinstance(parsed, dict) else None
                if not isinstance(kind, str):
                    result.errors.append(f"agent_protocol: bridge sent {str(message)[:80]!r}")
                    continue
                self._count(kind)
                detail = ""
                if kind == "interrupt":
                    detail = (f"{parsed.get('durationUntilInterruptMs')} ms heard: "
                              f"{str(parsed.get('utteranceUntilInterrupt', ''))[:60]!r}")
                elif kind == "dtmf":
                    detail = str(parsed.get("digit"))
                elif kind == "error":
                    detail = str(parsed.get("description", ""))[:120]
                    result.errors.append(f"agent_error_message: the bridge told the agent {detail!r}")
                emulator.note(now, f"agent_got_{kind}", detail)
        except websockets.ConnectionClosed:
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    def _count(self, kind: str) -> None:
        self.result.agent_messages[kind] = self.result.agent_messages.get(kind, 0) + 1

    async def _send(self, ws: ServerConnection, emulator: ReplayEmulator) -> None:
        assert emulator.start_sent_at is not None
        origin = emulator.start_sent_at
        try:
            for index, (t, msg) in enumerate(self.recording.agent_actions):
                delay = origin + t - time.monotonic()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                turn = self._turns.get(index)
                if turn is not None:
                    emulator.add_turn("agent", turn.text, time.monotonic())
                if msg.get("type") == "end":
                    self.ended = True
                    emulator.note(time.monotonic(), "agent_end_sent")
                await ws.send(json.dumps(msg, separators=(",", ":")))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.done.set()


def _json_or_none(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return None


class AgentServer:
    """One ConversationRelay-protocol WebSocket server on 127.0.0.1 for every call of a run; the
    bridge connects to ``ws://127.0.0.1:<port>/<call-id>`` (passed as the agentUrl parameter)."""

    def __init__(self) -> None:
        self.calls: dict[str, CallReplay] = {}
        self.unknown_connections = 0
        self._server: Server | None = None
        self.port = 0

    async def __aenter__(self) -> AgentServer:
        self._server = await websockets.serve(self._handler, "127.0.0.1", 0, max_size=1 << 20,
                                              ping_interval=None, compression=None)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def url_for(self, call_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{call_id}"

    def register(self, replay: CallReplay) -> None:
        self.calls[replay.call_id] = replay

    def unregister(self, replay: CallReplay) -> None:
        self.calls.pop(replay.call_id, None)

    async def _handler(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        call_id = urllib.parse.urlsplit(path).path.strip("/")
        replay = self.calls.get(call_id)
        if replay is None:
            self.unknown_connections += 1
            await ws.close(1008, "unknown call")
            return
        await replay.agent.serve(ws)
