"""The recorded-call format (docs/recorded-calls.md): its one reader and its one writer.

A recorded call is JSON lines: a header, then ``{"t", "from": "twilio"|"agent", "msg"}`` lines in
time order (``t`` in seconds from the recording's start), runs of digitally silent inbound frames as
one ``{"t", "from": "twilio", "silence_ms": N}`` line, then a trailer. The bridge writes it
(telephony/recording.py, when recording is on), make_recorded_calls.py generates it, and the load
test and the call simulator replay it (telephony/testing/replay.py): all through this module, so the
format has one definition. It lives in the product, not in ``telephony.testing``, because the bridge
itself writes recordings, and the server never imports test tooling.
"""

from __future__ import annotations

import base64
import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tts_core.audio.telephony_format import FRAME_MS, FRAME_S, SILENCE_FRAME, TELEPHONY_RATE
from tts_core.errors import InvalidInput

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FORMAT = "voice-bridge-recorded-call"
VERSION = 1
SAMPLE_RATE = TELEPHONY_RATE
SILENT_PAYLOAD = base64.b64encode(SILENCE_FRAME).decode()
"""Base64 of one 20 ms frame of μ-law digital silence, as Twilio sends it."""
SPEECH_RMS = 184
"""Inbound frame RMS (int16 scale: -45 dBFS, the bridge's barge-in energy floor) above which the
caller counts as speaking."""
ONSET_QUIET_FRAMES = 15
"""Quiet frames (300 ms) that must precede a loud frame for it to count as a new speech onset."""
SILENCE = SILENCE_FRAME


class RecordingError(InvalidInput, ValueError):
    """A recorded-call file is malformed; the message names the file and line."""

    kind = "invalid_recording"


@dataclass(frozen=True)
class Event:
    t: float
    source: str
    """``twilio`` or ``agent`` (other values are kept but not replayed)."""
    msg: dict[str, Any] | None = None
    silence_ms: int = 0


@dataclass(frozen=True)
class AgentTurn:
    index: int
    text: str
    first_event: int
    """Index into ``RecordedCall.agent_actions`` of the turn's first ``text`` message."""


@dataclass
class RecordedCall:
    name: str
    header: dict[str, Any]
    events: list[Event]
    trailer: dict[str, Any] | None = None
    path: Path | None = None

    # ---- what a replay needs -------------------------------------------------------------------
    @property
    def start_message(self) -> dict[str, Any] | None:
        for event in self.events:
            if event.source == "twilio" and event.msg and event.msg.get("event") == "start":
                return event.msg
        return None

    @property
    def custom_parameters(self) -> dict[str, str]:
        start = self.start_message
        params = (start or {}).get("start", {}).get("customParameters", {})
        return {str(k): str(v) for k, v in params.items()} if isinstance(params, dict) else {}

    @property
    def greeting(self) -> str:
        """The greeting the bridge spoke (the ``greeting`` stream parameter); "" if none."""
        return self.custom_parameters.get("greeting", "")

    @property
    def origin_t(self) -> float:
        start = next((e for e in self.events if e.source == "twilio" and e.msg
                      and e.msg.get("event") == "start"), None)
        return start.t if start is not None else 0.0

    @property
    def duration_s(self) -> float:
        end = 0.0
        for event in self.events:
            end = max(end, event.t + event.silence_ms / 1000)
        return max(0.0, end - self.origin_t)

    def twilio_actions(self) -> Iterator[tuple[float, str, Any]]:
        """(t relative to start, kind, data): kind is media (bytes), dtmf (digit) or stop."""
        origin = self.origin_t
        for event in self.events:
            if event.source != "twilio":
                continue
            t = event.t - origin
            if event.silence_ms:
                for k in range(event.silence_ms // FRAME_MS):
                    yield t + k * FRAME_S, "media", SILENCE
                continue
            assert event.msg is not None
            kind = event.msg.get("event")
            if kind == "media":
                payload = base64.b64decode(event.msg.get("media", {}).get("payload", ""))
                yield t, "media", payload
            elif kind == "dtmf":
                yield t, "dtmf", str(event.msg.get("dtmf", {}).get("digit", ""))
            elif kind == "stop":
                yield t, "stop", None
            # connected/start: sent by the emulator itself; mark: regenerated as echoes

    @property
    def agent_actions(self) -> list[tuple[float, dict[str, Any]]]:
        origin = self.origin_t
        return [(e.t - origin, e.msg) for e in self.events if e.source == "agent" and e.msg]

    @property
    def agent_turns(self) -> list[AgentTurn]:
        """Groups of ``text`` messages ending with ``last: true``; whitespace-only turns excluded."""
        turns: list[AgentTurn] = []
        tokens: list[str] = []
        first: int | None = None
        for index, (_, msg) in enumerate(self.agent_actions):
            if msg.get("type") != "text":
                continue
            if first is None:
                first = index
            tokens.append(str(msg.get("token", "")))
            if msg.get("last"):
                text = "".join(tokens).strip()
                if text:
                    turns.append(AgentTurn(len(turns), text, first))
                tokens, first = [], None
        if first is not None and "".join(tokens).strip():
            turns.append(AgentTurn(len(turns), "".join(tokens).strip(), first))
        return turns

    def speech_onsets(self) -> list[float]:
        """Times (relative to start) at which the caller starts speaking after >= 300 ms quiet."""
        onsets: list[float] = []
        quiet = ONSET_QUIET_FRAMES
        for t, kind, data in self.twilio_actions():
            if kind != "media":
                continue
            if data == SILENCE or frame_rms(data) < SPEECH_RMS:
                quiet += 1
                continue
            if quiet >= ONSET_QUIET_FRAMES:
                onsets.append(round(t, 4))
            quiet = 0
        return onsets


def frame_rms(payload: bytes) -> int:
    return int(audioop.rms(audioop.ulaw2lin(payload, 2), 2))


def parse_recording(lines: Iterable[str], name: str = "<recording>") -> RecordedCall:
    header: dict[str, Any] | None = None
    trailer: dict[str, Any] | None = None
    events: list[Event] = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordingError(f"{name}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise RecordingError(f"{name}:{number}: a line must be a JSON object")
        if header is None:
            if record.get("type") != "header" or record.get("format") != FORMAT:
                raise RecordingError(f"{name}:{number}: first line must be the header "
                                     f'{{"type":"header","format":"{FORMAT}",...}}')
            version = record.get("version")
            if not isinstance(version, int) or version > VERSION or version < 1:
                raise RecordingError(f"{name}: format version {version!r} not supported "
                                     f"(this reader knows version {VERSION})")
            rate = record.get("sample_rate", SAMPLE_RATE)
            if rate != SAMPLE_RATE:
                raise RecordingError(f"{name}: sample_rate {rate} (only 8000 Hz μ-law is supported)")
            header = record
            continue
        if record.get("type") == "trailer":
            trailer = record
            continue
        if "from" not in record:
            continue  # a future line type: ignored
        t = record.get("t")
        if not isinstance(t, int | float) or t < 0:
            raise RecordingError(f"{name}:{number}: missing or negative time offset 't'")
        source = str(record["from"])
        if "silence_ms" in record:
            silence = record["silence_ms"]
            if source != "twilio" or not isinstance(silence, int) or silence <= 0 or silence % FRAME_MS:
                raise RecordingError(f"{name}:{number}: silence_ms must be a positive multiple of "
                                     f"{FRAME_MS} on a twilio line")
            events.append(Event(float(t), source, None, silence))
            continue
        msg = record.get("msg")
        if not isinstance(msg, dict):
            raise RecordingError(f"{name}:{number}: 'msg' must be a JSON object")
        if source == "twilio" and msg.get("event") == "media":
            media = msg.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            try:
                frame = base64.b64decode(payload or "", validate=True)
            except (ValueError, TypeError):
                raise RecordingError(f"{name}:{number}: media payload is not base64") from None
            if not frame:
                raise RecordingError(f"{name}:{number}: empty media payload")
        if source == "agent" and not isinstance(msg.get("type"), str):
            raise RecordingError(f"{name}:{number}: agent message without 'type'")
        events.append(Event(float(t), source, msg))
    if header is None:
        raise RecordingError(f"{name}: empty file (no header)")
    events.sort(key=lambda e: e.t)  # stable: simultaneous events keep their file order
    return RecordedCall(name=name, header=header, events=events, trailer=trailer)


def load_recording(path: str | Path) -> RecordedCall:
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        call = parse_recording(handle, path.name)
    call.path = path
    call.name = path.stem
    return call


def find_recordings(paths: Iterable[str | Path]) -> list[Path]:
    """Files and directories (their ``*.jsonl``, sorted) into a list of recording paths."""
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(path.glob("*.jsonl")))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no recording at {path}")
    if not found:
        raise FileNotFoundError("no *.jsonl recordings found")
    return found


class LineSink(Protocol):
    """Where a ``RecordingWriter`` puts its lines: a text file, or the bridge's write queue."""

    def write(self, text: str, /) -> object: ...


class RecordingWriter:
    """Writes a recorded call, one JSON line per ``write`` to ``out``.

    Consecutive all-silent (0xFF) inbound frames become one ``silence_ms`` line; a silent frame
    more than ``run_slack_s`` off its run's 20 ms grid (a stall in delivery) starts a new run. Agent
    lines that fall inside a silent run are written after the run's line, so the file stays in time
    order (at most ``MAX_DEFERRED`` are held). Use as a context manager or call ``close``. JSON is
    written ASCII-only: a lone surrogate from a peer's ``\\udXXX`` escape cannot fail the write.
    """

    MAX_DEFERRED = 500

    def __init__(self, out: LineSink, *, source: str, run_slack_s: float = FRAME_S / 2,
                 **header: Any) -> None:
        self._out = out
        self.run_slack_s = run_slack_s
        self._run_t = 0.0
        self._run_frames = 0
        self._deferred: list[dict[str, Any]] = []
        self.lines = 0
        self._write({"type": "header", "format": FORMAT, "version": VERSION, "source": source,
                     "sample_rate": SAMPLE_RATE, "encoding": "audio/x-mulaw", **header})

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.lines += 1

    def _flush_silence(self) -> None:
        if self._run_frames:
            self._write({"t": round(self._run_t, 4), "from": "twilio",
                         "silence_ms": self._run_frames * FRAME_MS})
            self._run_frames = 0
        for record in self._deferred:
            self._write(record)
        self._deferred.clear()

    def twilio(self, t: float, msg: dict[str, Any]) -> None:
        """A message Twilio sent at ``t`` (seconds from the start of the recording)."""
        media = msg.get("media")
        if msg.get("event") == "media" and isinstance(media, dict) and media.get("payload") == SILENT_PAYLOAD:
            if self._run_frames and abs(t - (self._run_t + self._run_frames * FRAME_S)) > self.run_slack_s:
                self._flush_silence()
            if not self._run_frames:
                self._run_t = t
            self._run_frames += 1
            return
        self._flush_silence()
        self._write({"t": round(t, 4), "from": "twilio", "msg": msg})

    def agent(self, t: float, msg: dict[str, Any]) -> None:
        """A message the agent sent at ``t``."""
        record = {"t": round(t, 4), "from": "agent", "msg": msg}
        if self._run_frames:
            self._deferred.append(record)
            if len(self._deferred) >= self.MAX_DEFERRED:
                self._flush_silence()
            return
        self._write(record)

    def close(self, **trailer: Any) -> None:
        self._flush_silence()
        self._write({"type": "trailer", "dropped_lines": 0, **trailer})


# ---- recordings built in memory (tests, generated fixtures) ------------------------------


def tokenize(text: str) -> list[str]:
    """LLM-like tokens: words with their leading space, long words split in two."""
    tokens: list[str] = []
    for word in re.findall(r"\s*\S+", text):
        core = word.strip()
        if len(core) > 7 and core.isalpha():
            cut = len(word) - len(core) + len(core) // 2
            tokens.extend([word[:cut], word[cut:]])
        else:
            tokens.append(word)
    return tokens


def agent_turn_messages(
    text: str, start_t: float, token_ms: float = 30.0, jitter: Callable[[], float] | None = None
) -> list[tuple[float, dict[str, Any]]]:
    """(t, text message) for ``text`` streamed at ``token_ms`` per token from ``start_t``."""
    tokens = tokenize(text)
    out: list[tuple[float, dict[str, Any]]] = []
    t = start_t
    for index, token in enumerate(tokens):
        out.append((round(t, 4), {"type": "text", "token": token, "last": index == len(tokens) - 1}))
        t += (token_ms + (jitter() if jitter else 0.0)) / 1000
    return out


def silent_call(duration_s: float, *, greeting: str = "", name: str = "call",
                agent: list[tuple[float, dict[str, Any]]] | None = None,
                stop: bool = True) -> RecordedCall:
    """A recording in memory: ``start``, ``duration_s`` of silent caller audio, optional agent
    messages, then ``stop``."""
    sid = "CA" + "0" * 32
    events = [
        Event(0.0, "twilio", {"event": "connected", "protocol": "Call", "version": "1.0.0"}),
        Event(0.0, "twilio", {"event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "0" * 32,
                              "start": {"accountSid": "AC" + "0" * 32, "streamSid": "MZ" + "0" * 32,
                                        "callSid": sid, "tracks": ["inbound"],
                                        "customParameters": {"greeting": greeting},
                                        "mediaFormat": {"encoding": "audio/x-mulaw",
                                                        "sampleRate": 8000, "channels": 1}}}),
    ]
    frames = round(duration_s / FRAME_S)
    if frames:
        events.append(Event(0.0, "twilio", None, frames * FRAME_MS))
    for t, msg in agent or []:
        events.append(Event(t, "agent", msg))
    if stop:
        events.append(Event(frames * FRAME_S, "twilio", {"event": "stop", "sequenceNumber": "2",
                                                         "streamSid": "MZ" + "0" * 32,
                                                         "stop": {"accountSid": "AC" + "0" * 32,
                                                                  "callSid": sid}}))
    events.sort(key=lambda e: e.t)
    header = {"type": "header", "format": FORMAT, "version": VERSION, "source": "generated",
              "sample_rate": SAMPLE_RATE}
    return RecordedCall(name=name, header=header, events=events)
