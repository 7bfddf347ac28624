"""The recorded-call format has one writer and one reader (telephony/recorded_call.py): a call the
bridge records (telephony/recording.py) reads back, through the replay's reader, as the same
messages at the same times, with runs of silence stored as one line and expanded back frame by frame."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from telephony.recorded_call import load_recording
from telephony.recording import CallRecorder
from telephony.twilio.protocol import Start
from tts_core.audio.telephony_format import FRAME_S, SILENCE_FRAME

SID = "CA" + "1" * 32
STREAM = "MZ" + "1" * 32
SPEECH = [bytes([0x10 + n]) * 160 for n in range(3)]


def twilio(event: str, **body: object) -> dict[str, object]:
    return {"event": event, "streamSid": STREAM, **body}


def media(frame: bytes) -> dict[str, object]:
    return twilio("media", media={"track": "inbound", "payload": base64.b64encode(frame).decode()})


START = twilio("start", start={"callSid": SID, "streamSid": STREAM, "customParameters": {"greeting": "Hi"},
                               "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                               "channels": 1}})
AGENT_TEXT = {"type": "text", "token": "Hello there.", "last": True}
SCRIPT: list[tuple[float, str, dict[str, object]]] = [
    (0.0, "twilio", {"event": "connected", "protocol": "Call", "version": "1.0.0"}),
    (0.0, "twilio", START),
    *[(0.02 * (n + 1), "twilio", media(frame)) for n, frame in enumerate(SPEECH)],
    # 10 silent frames on the 20 ms grid from 0.08 s; the agent speaks in the middle of the run
    *[(0.08 + 0.02 * n, "twilio", media(SILENCE_FRAME)) for n in range(5)],
    (0.17, "agent", AGENT_TEXT),
    *[(0.18 + 0.02 * n, "twilio", media(SILENCE_FRAME)) for n in range(5)],
    (0.30, "twilio", twilio("mark", mark={"name": "u1-end"})),  # an echo of ours: not recorded
    (0.32, "twilio", twilio("dtmf", dtmf={"track": "inbound_track", "digit": "7"})),
    (0.80, "twilio", media(SILENCE_FRAME)),  # after a stall: a run of its own
    (0.82, "twilio", twilio("stop", stop={"callSid": SID})),
]


def record(directory: Path) -> Path:
    """Feed the script to the bridge's recorder, on a scripted clock."""
    now = [0.0]
    start = Start.model_validate(START["start"])

    async def run() -> Path:
        recorder = CallRecorder.open(directory, start, clock=lambda: now[0])
        for t, source, message in SCRIPT:
            now[0] = t
            if source == "twilio":
                recorder.twilio_message(json.dumps(message))
            else:
                recorder.agent_message(message)
        await recorder.aclose()
        return recorder.path

    return asyncio.run(run())


def test_a_call_recorded_by_the_bridge_reads_back_as_the_same_messages(tmp_path: Path) -> None:
    call = load_recording(record(tmp_path))
    assert call.header["source"] == "bridge" and call.header["call_sid"] == SID
    assert call.trailer == {"type": "trailer", "dropped_lines": 0}
    assert call.greeting == "Hi" and call.start_message == START

    actions = [(round(t, 4), kind, data) for t, kind, data in call.twilio_actions()]
    silent = [(round(0.08 + 0.02 * n, 4), "media", SILENCE_FRAME) for n in range(10)]
    assert actions == [
        *[(round(0.02 * (n + 1), 4), "media", frame) for n, frame in enumerate(SPEECH)],
        *silent,
        (0.32, "dtmf", "7"),
        (0.8, "media", SILENCE_FRAME),
        (0.82, "stop", None),
    ]
    assert call.agent_actions == [(0.17, AGENT_TEXT)]
    assert abs(call.duration_s - 0.82) < FRAME_S / 2


def test_silence_is_one_line_per_run_and_agent_lines_inside_it_follow_it(tmp_path: Path) -> None:
    lines = [json.loads(line) for line in record(tmp_path).read_text().splitlines()]
    runs = [line for line in lines if "silence_ms" in line]
    assert runs == [{"t": 0.08, "from": "twilio", "silence_ms": 200},
                    {"t": 0.8, "from": "twilio", "silence_ms": 20}]
    order = [line.get("msg", {}).get("type") or line.get("silence_ms") for line in lines[1:-1]
             if line.get("from") == "agent" or "silence_ms" in line]
    assert order == [200, "text", 20]
    assert not any(line.get("msg", {}).get("event") == "mark" for line in lines)
