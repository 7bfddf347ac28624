"""The recorded-call format, and the load test / call simulator replaying fixtures against the real
bridge (in-process, synthetic engine)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from telephony import recorded_call
from telephony.testing.load_report import format_report
from telephony.testing.load_run import LoadConfig, run_load
from telephony.testing.replay import check_loopback
from telephony.testing.simulated_call import simulate, timeline_text

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

CALLS = Path(__file__).resolve().parent / "data" / "calls"
FIXTURES = ("greeting_only", "dialogue_dtmf", "barge_in", "monologue")


def fixture(name: str) -> recorded_call.RecordedCall:
    return recorded_call.load_recording(CALLS / f"{name}.jsonl")


# ---------------------------------------------------------------------------------- the format


def test_writer_compacts_silence_and_the_reader_expands_it_exactly() -> None:
    buffer = io.StringIO()
    speech = bytes(range(160))
    with recorded_call.RecordingWriter(buffer, source="test") as writer:
        writer.twilio(0.0, {"event": "start", "start": {"customParameters": {"greeting": "Hi"}}})
        for k in range(50):  # 1 s of silence, an agent token in the middle of it
            writer.twilio(k * 0.02, _media(b"\xff" * 160))
            if k == 10:
                writer.agent(0.205, {"type": "text", "token": "Hi", "last": True})
        writer.twilio(1.0, _media(speech))
        writer.twilio(1.02, {"event": "dtmf", "dtmf": {"digit": "5"}})
        writer.twilio(1.04, _media(b"\xff" * 160))
        writer.twilio(1.06, {"event": "stop"})
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert lines[0]["format"] == "voice-bridge-recorded-call" and lines[0]["version"] == 1
    assert {"t": 0.0, "from": "twilio", "silence_ms": 1000} in lines
    times = [line["t"] for line in lines if "t" in line]
    assert times == sorted(times), "lines stay in time order"
    call = recorded_call.parse_recording(buffer.getvalue().splitlines())
    actions = list(call.twilio_actions())
    media = [a for a in actions if a[1] == "media"]
    assert len(media) == 52
    assert all(payload == b"\xff" * 160 for _, _, payload in media[:50])
    assert [round(t, 3) for t, _, _ in media[:3]] == [0.0, 0.02, 0.04]
    assert media[50] == (1.0, "media", speech)
    assert ("dtmf" in [a[1] for a in actions]) and actions[-1][1] == "stop"
    assert call.greeting == "Hi"
    assert [turn.text for turn in call.agent_turns] == ["Hi"]
    assert call.speech_onsets() == [1.0]


def _media(payload: bytes) -> dict[str, object]:
    return {"event": "media", "media": {"payload": base64.b64encode(payload).decode()}}


@pytest.mark.parametrize(("line", "message"), [
    ('{"type":"header","format":"other","version":1}', "first line must be the header"),
    ('{"type":"header","format":"voice-bridge-recorded-call","version":2}', "version 2"),
    ('HEADER\n{"t":0,"from":"twilio","silence_ms":30}', "multiple of 20"),
    ('HEADER\n{"t":-1,"from":"twilio","msg":{}}', "negative"),
    ('HEADER\n{"t":0,"from":"twilio","msg":{"event":"media","media":{"payload":"%%"}}}', "base64"),
    ('HEADER\nnot json', ":2: not JSON"),
])
def test_malformed_recordings_are_refused_with_the_line(line: str, message: str) -> None:
    header = '{"type":"header","format":"voice-bridge-recorded-call","version":1,"sample_rate":8000}'
    with pytest.raises(recorded_call.RecordingError, match=message):
        recorded_call.parse_recording(line.replace("HEADER", header).splitlines(), "x.jsonl")


def test_fixtures_are_small_and_hold_what_their_names_say() -> None:
    for name in FIXTURES:
        assert (CALLS / f"{name}.jsonl").stat().st_size < 200_000
    assert fixture("greeting_only").greeting and not fixture("greeting_only").agent_turns
    dialogue = fixture("dialogue_dtmf")
    assert [a[2] for a in dialogue.twilio_actions() if a[1] == "dtmf"] == ["4", "2", "#"]
    assert len(dialogue.agent_turns) == 2 and dialogue.speech_onsets()
    assert dialogue.agent_actions[-1][1] == {"type": "end"}
    barge = fixture("barge_in")
    first = barge.agent_turns[0]
    speech_ends = barge.agent_actions[first.first_event][0] + 0.065 * len(first.text)
    assert barge.speech_onsets()[0] < speech_ends - 5, "the caller talks over the long turn"
    assert len(fixture("monologue").agent_turns[0].text) > 120


def test_loadtest_refuses_non_loopback_hosts() -> None:
    # The script as a user runs it: the installed packages, no sys.path edits (PYTHONPATH names this
    # checkout, which the venv may not be installed from).
    result = subprocess.run([sys.executable, str(SCRIPTS / "loadtest.py"), "--url", "http://203.0.113.5:8080",
                             "--calls", "1"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(SCRIPTS.parent)}, cwd="/")
    assert result.returncode == 2, result.stderr
    assert "--allow-remote" in result.stderr
    check_loopback("http://127.0.0.1:8080", False)
    check_loopback("http://localhost:1", False)
    check_loopback("https://bridge.example.com", True)


# ---------------------------------------------------------------------------------- against the bridge


@pytest.mark.slow
@pytest.mark.parametrize("lean", [False, True], ids=["emulator", "lean"])
async def test_load_replay_reports_every_measure_with_valid_messages(lean: bool) -> None:
    from telephony.testing.bridge_harness import AUTH_TOKEN, running_bridge
    from tts_core.engines.synthetic import SyntheticEngine

    recordings = [fixture(n) for n in ("greeting_only", "dialogue_dtmf", "barge_in")]
    async with running_bridge(engine=SyntheticEngine(realtime_factor=0.2)) as rb:
        config = LoadConfig(url=rb.base_url, recordings=recordings, calls=3,
                            duration_s=40, auth_token=AUTH_TOKEN, server_pid="auto", lean=lean)
        report = await run_load(config)
    data = report.data
    assert data["cpu"]["generator"] == ("lean" if lean else "emulator")
    text = format_report(report)
    assert report.ok, text
    for key in ("ttfa_ms", "ttfa_greeting_ms", "ttfa_agent_ms", "underruns", "barge_in_ms",
                "mark_rtt_ms", "delivery_rtf", "errors", "cpu", "per_call", "timeseries"):
        assert key in data, key
    assert data["errors"]["invalid_messages"] == 0
    assert data["calls"] == {**data["calls"], "run": 3, "completed": 3, "failed": 0, "cut": 0}
    by_name = {c["recording"]: c for c in data["per_call"]}
    for call in data["per_call"]:
        assert call["turns"], call["recording"]
        assert all(t["ttfa_ms"] is not None and t["ttfa_ms"] >= 0 for t in call["turns"]
                   if t["outcome"] != "cleared_before_audio"), call["turns"]
        assert call["close_code"] in (None, 1000)
        assert call["underruns"] == 0, text
    dialogue = by_name["dialogue_dtmf"]
    assert [t["kind"] for t in dialogue["turns"]] == ["greeting", "agent", "agent"]
    assert dialogue["agent_messages"].get("dtmf") == 3
    assert dialogue["closed_by"] == "bridge", "the agent's end closes the stream"
    barge = by_name["barge_in"]
    assert barge["clears"] >= 1 and barge["barge_in_ms"], text
    assert 0 < barge["barge_in_ms"][0] < 1500
    assert barge["agent_messages"].get("interrupt") == 1
    assert data["ttfa_ms"]["n"] == 6 and data["ttfa_ms"]["p95"] is not None
    assert data["mark_rtt_ms"]["n"] > 0
    assert data["cpu"]["server_cpu_s"] is not None and data["cpu"]["same_process"]
    assert "TTFA" in text and "underruns: 0" in text


@pytest.mark.slow
@pytest.mark.parametrize("lean", [False, True], ids=["emulator", "lean"])
async def test_a_slow_engine_shows_up_as_underruns(lean: bool) -> None:
    from telephony.testing.bridge_harness import AUTH_TOKEN, running_bridge
    from tts_core.engines.synthetic import SyntheticEngine

    engine = SyntheticEngine(realtime_factor=1.5)  # audio comes slower than real time
    async with running_bridge(engine=engine) as rb:
        config = LoadConfig(url=rb.base_url, recordings=[fixture("monologue")], calls=1,
                            duration_s=6, auth_token=AUTH_TOKEN, server_pid=None, lean=lean)
        report = await run_load(config)
    data = report.data
    assert data["underruns"]["count"] > 0, format_report(report)
    assert data["underruns"]["total_ms"] > 0
    assert data["calls"]["cut"] == 1, "the 6 s cap ends the 11 s call"
    assert data["errors"]["invalid_messages"] == 0
    assert sum(data["timeseries"]["underrun_ms"]) == pytest.approx(data["underruns"]["total_ms"])


@pytest.mark.slow
async def test_simulated_call_writes_what_the_caller_heard(tmp_path: Path) -> None:
    from telephony.testing.bridge_harness import AUTH_TOKEN, running_bridge

    recording = recorded_call.silent_call(0.0, stop=False, agent=recorded_call.agent_turn_messages(
        "Hello there. This is a simulated call.", 0.2))
    wav = tmp_path / "heard.wav"
    async with running_bridge() as rb:
        result, seconds = await simulate(rb.base_url, recording, greeting="Hi.",
                                         auth_token=AUTH_TOKEN, wav=wav)
    assert result.errors == [] and result.status == "completed", timeline_text(result)
    assert [t["kind"] for t in result.turns] == ["greeting", "agent"]
    events = [e["event"] for e in result.timeline or []]
    for expected in ("start_sent", "agent_setup", "turn_sent", "first_frame", "playing",
                     "mark_received", "mark_echoed", "utterance_end", "stop_sent"):
        assert expected in events, events
    with wave.open(str(wav)) as heard:
        assert (heard.getframerate(), heard.getsampwidth(), heard.getnchannels()) == (8000, 2, 1)
        assert heard.getnframes() / 8000 == pytest.approx(seconds)
        assert seconds > 2.0


@pytest.mark.slow
async def test_a_call_recorded_by_the_bridge_replays_like_the_original(tmp_path: Path) -> None:
    from telephony.testing.bridge_harness import AUTH_TOKEN, running_bridge
    from tests.conftest import eventually

    original = fixture("barge_in")
    async with running_bridge(record_dir=tmp_path) as rb:
        config = LoadConfig(url=rb.base_url, recordings=[original], calls=1,
                            duration_s=30, auth_token=AUTH_TOKEN, server_pid=None)
        first = await run_load(config)
        await eventually(lambda: not rb.bridge.calls, what="the recorded call ended")
        (path,) = await asyncio.to_thread(lambda: list(tmp_path.glob("*.jsonl")))
        recorded = recorded_call.load_recording(path)
        config.recordings = [recorded]
        again = await run_load(config)
    lines = path.read_text().splitlines()
    assert any('"silence_ms"' in line for line in lines), "silent caller audio is stored compactly"
    assert len(lines) < 400 and path.stat().st_size < 100_000
    assert recorded.header["source"] == "bridge" and recorded.trailer == {"type": "trailer",
                                                                        "dropped_lines": 0}
    assert recorded.greeting == ""
    assert recorded.agent_turns[-1].text == original.agent_turns[-1].text
    assert recorded.agent_turns[0].text.startswith("Let me walk you")
    assert abs(recorded.speech_onsets()[0] - original.speech_onsets()[0]) < 0.1
    assert recorded.agent_actions[-1][1]["type"] == "end"
    for report in (first, again):
        assert report.ok, format_report(report)
        (call,) = report.data["per_call"]
        assert call["clears"] == 1 and call["barge_in_ms"], format_report(report)
        assert [t["outcome"] for t in call["turns"]] == ["audio", "audio"]


@pytest.mark.slow
@pytest.mark.parametrize("lean", [False, True], ids=["emulator", "lean"])
async def test_refused_calls_are_reported_as_errors(lean: bool) -> None:
    from telephony.testing.bridge_harness import running_bridge

    async with running_bridge() as rb:
        config = LoadConfig(url=rb.base_url, recordings=[fixture("greeting_only")], calls=2,
                            duration_s=10, auth_token="not-the-token", server_pid=None, lean=lean)
        report = await run_load(config)
    assert not report.ok
    assert report.data["errors"]["webhook_failures"] == 2
    assert report.data["calls"]["failed"] == 2
    assert "403" in report.data["errors"]["examples"][0]


# ---------------------------------------------------------------------------------- the lean generator


class PacedStandIn:
    """A stand-in bridge: answers the webhook, checks the stream's token, then says one utterance
    of ``frames`` frames with ``lead`` frames sent ahead of real time, stopping its frames for
    ``pause_s`` halfway (an underrun Twilio would hear, if the pause outlasts the lead), and
    ``short_frame``: one frame of 159 bytes among them. Records when each mark echo arrives."""

    TOKEN = "stand-in-token"

    def __init__(self, *, frames: int = 45, lead: int = 10, pause_s: float = 0.0,
                 short_frame: bool = False) -> None:
        self.frames, self.lead, self.pause_s, self.short_frame = frames, lead, pause_s, short_frame
        self.first_sent: float | None = None
        self.echoes: dict[str, float] = {}
        self.refused = 0

    def app(self, base_url: list[str]) -> object:
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route, WebSocketRoute

        async def twiml(request: object) -> Response:
            url = base_url[0].replace("http://", "ws://") + "/media-stream"
            return Response(f'<Response><Connect><Stream url="{url}"><Parameter name="token" '
                            f'value="{self.TOKEN}"/></Stream></Connect></Response>',
                            media_type="text/xml")

        return Starlette(routes=[Route("/twiml", twiml, methods=["POST"]),
                                 WebSocketRoute("/media-stream", self.stream)])

    async def stream(self, ws: object) -> None:
        import time

        from starlette.websockets import WebSocket, WebSocketDisconnect

        from telephony.twilio.protocol import OutboundEncoder

        assert isinstance(ws, WebSocket)
        await ws.accept()
        start: dict[str, object] = {}
        while start.get("event") != "start":
            start = json.loads(await ws.receive_text())
        params = start["start"]["customParameters"]  # type: ignore[index]
        if params.get("token") != self.TOKEN:
            self.refused += 1
            await ws.close(1008)
            return

        async def read() -> None:
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    message = json.loads(await ws.receive_text())
                    if message["event"] == "mark":
                        self.echoes[message["mark"]["name"]] = time.monotonic()

        reader = asyncio.create_task(read())
        encoder = OutboundEncoder(str(start["streamSid"]))
        t0 = time.monotonic()
        self.first_sent = t0
        for k in range(self.frames):
            due = t0 + max(0, k - self.lead) * 0.02 + (self.pause_s if k >= self.frames // 2 else 0.0)
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self.short_frame and k == 3:
                await ws.send_text(encoder.media(bytes(160))[:-7] + '"}}')  # 159 bytes, base64 "=" gone
            else:
                await ws.send_text(encoder.media(bytes([k % 200 + 1]) * 160))
        await ws.send_text(encoder.mark("u1-end"))
        with contextlib.suppress(WebSocketDisconnect):
            await reader


async def _stand_in_run(stand_in: PacedStandIn, *, lean: bool) -> dict[str, object]:
    from telephony.testing.asgi_server import serve_asgi

    base: list[str] = [""]
    recording = recorded_call.silent_call(1.0, greeting="Hello.")
    async with serve_asgi(stand_in.app(base)) as url:
        base[0] = url
        report = await run_load(LoadConfig(url=url, recordings=[recording], calls=1, duration_s=20,
                                           server_pid=None, lean=lean, tail_timeout_s=5))
    return report.data


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "emulator"])
async def test_lean_generator_hears_the_underrun_a_pausing_bridge_causes(lean: bool) -> None:
    stand_in = PacedStandIn(pause_s=0.5)  # lead 10 frames (200 ms): ~300 ms of silence
    data = await _stand_in_run(stand_in, lean=lean)
    (call,) = data["per_call"]
    assert data["errors"]["total"] == 0, data["errors"]
    assert call["frames_received"] == 45 and call["marks_received"] == 1 and call["marks_echoed"] == 1
    assert call["underruns"] == 1, call
    assert 200 <= call["underrun_ms"] <= 420, call
    (turn,) = call["turns"]
    assert turn["kind"] == "greeting" and turn["outcome"] == "audio" and turn["ttfa_ms"] >= 0
    # The end mark is echoed once its audio has played: 45 frames plus the gap after the first.
    assert stand_in.first_sent is not None
    echoed_after = stand_in.echoes["u1-end"] - stand_in.first_sent
    assert 0.9 + 0.2 <= echoed_after <= 0.9 + 0.5 + 0.25, echoed_after


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "emulator"])
async def test_lean_generator_hears_no_underrun_from_a_bridge_that_keeps_ahead(lean: bool) -> None:
    stand_in = PacedStandIn()
    data = await _stand_in_run(stand_in, lean=lean)
    (call,) = data["per_call"]
    assert data["errors"]["total"] == 0, data["errors"]
    assert call["frames_received"] == 45 and call["marks_echoed"] == 1
    assert call["underruns"] == 0 and call["underrun_ms"] == 0, call
    assert call["mark_rtt_ms"]["n"] == 1 and call["mark_rtt_ms"]["max"] >= 150, call["mark_rtt_ms"]
    assert stand_in.first_sent is not None
    assert stand_in.echoes["u1-end"] - stand_in.first_sent >= 0.88


async def test_lean_generator_reports_a_frame_that_is_not_160_bytes() -> None:
    data = await _stand_in_run(PacedStandIn(short_frame=True), lean=True)
    assert data["errors"]["invalid_messages"] == 1, data["errors"]
    assert "159 bytes" in data["errors"]["examples"][0] or "base64" in data["errors"]["examples"][0]
