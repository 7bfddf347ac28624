"""Replaying recorded calls against a running bridge (shared by loadtest.py and simulate_call.py).

Three parts:

* the recorded-call format (docs/recorded-calls.md): ``load_recording`` / ``parse_recording`` read
  it, ``RecordingWriter`` writes it (runs of silent inbound frames stored as ``silence_ms``);
* ``ReplayEmulator``: the TwilioEmulator with the extra bookkeeping a replay needs (which bot
  utterance answers which agent turn, when marks came and went, when underruns happened);
* ``AgentServer`` + ``CallReplay``: one loopback ConversationRelay-protocol agent server for all
  calls of a run, and the replay of one call: webhook -> media stream -> Twilio's events on their
  recorded timing, while the agent server sends the call's recorded agent messages.

Timing: every event of a recording is replayed at ``start_sent + (t - t_start)``, where ``t_start``
is the recorded time of Twilio's ``start`` message and ``start_sent`` the moment the emulator sent
its own ``start``. Agent messages use the same origin (the load generator sends both sides, on one
clock), but none is sent before the bridge's ``setup`` arrives: those that fall due earlier go out
at once, in order, when it does. The recorded ``stop`` is sent at its time, or later if the bridge
is still speaking (or an agent turn still waits for its audio), for at most ``tail_timeout_s``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import urllib.parse
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import numpy as np
import websockets
from websockets.asyncio.server import Server, ServerConnection

from telephony.testing.twilio_emulator import FRAME_BYTES, FRAME_S, SILENCE, HeardUtterance, TwilioEmulator

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FORMAT = "voice-bridge-recorded-call"
VERSION = 1
SAMPLE_RATE = 8000
FRAME_MS = 20
SPEECH_RMS = 184
"""Inbound frame RMS (int16 scale: -45 dBFS, the bridge's barge-in energy floor) above which the
caller counts as speaking."""
ONSET_QUIET_FRAMES = 15
"""Quiet frames (300 ms) that must precede a loud frame for it to count as a new speech onset."""
BARGE_IN_WINDOW_S = 5.0
"""A clear counts as a barge-in reaction if caller speech started at most this long before it."""
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


class RecordingError(ValueError):
    """A recorded-call file is malformed; the message names the file and line."""


# ================================================================== the recorded-call format


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


class RecordingWriter:
    """Writes a recorded call; consecutive all-silent (0xFF) inbound frames become one
    ``silence_ms`` line. Agent lines that fall inside a silent run are written after the run's
    line, so the file stays in time order. Use as a context manager or call ``close``."""

    MAX_DEFERRED = 1000

    def __init__(self, handle: TextIO, *, source: str, **header: Any) -> None:
        self._out = handle
        self._run_t: float | None = None
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
        self._out.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
        self.lines += 1

    def _flush_silence(self) -> None:
        if self._run_frames:
            self._write({"t": round(self._run_t or 0.0, 4), "from": "twilio",
                         "silence_ms": self._run_frames * FRAME_MS})
        for record in self._deferred:
            self._write(record)
        self._deferred.clear()
        self._run_t, self._run_frames = None, 0

    def twilio(self, t: float, msg: dict[str, Any]) -> None:
        if msg.get("event") == "media":
            payload = base64.b64decode(msg["media"]["payload"])
            if payload == SILENCE:
                expected = (self._run_t or 0.0) + self._run_frames * FRAME_S
                if self._run_frames and abs(t - expected) > FRAME_S / 2:
                    self._flush_silence()
                if not self._run_frames:
                    self._run_t = t
                self._run_frames += 1
                return
        self._flush_silence()
        self._write({"t": round(t, 4), "from": "twilio", "msg": msg})

    def agent(self, t: float, msg: dict[str, Any]) -> None:
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


# ================================================================== statistics helpers


def summarize(values: Iterable[float], digits: int = 1) -> dict[str, Any]:
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if data.size == 0:
        return {"n": 0, "p50": None, "p90": None, "p95": None, "p99": None, "max": None, "mean": None}
    p50, p90, p95, p99 = np.percentile(data, [50, 90, 95, 99])
    return {"n": int(data.size), "p50": round(float(p50), digits), "p90": round(float(p90), digits),
            "p95": round(float(p95), digits), "p99": round(float(p99), digits),
            "max": round(float(data.max()), digits), "mean": round(float(data.mean()), digits)}


# ================================================================== Twilio's side, instrumented


@dataclass
class Turn:
    """Something the bridge should say: the greeting, or one recorded agent turn."""

    index: int
    kind: str  # greeting | agent
    text: str
    sent_at: float
    overlapped: bool = False
    """The bridge was still speaking (or another turn waited for audio) when this one was sent."""
    first_frame_at: float | None = None
    outcome: str = "pending"  # audio | cleared_before_audio | no_audio

    @property
    def ttfa_ms(self) -> float | None:
        if self.first_frame_at is None:
            return None
        return round((self.first_frame_at - self.sent_at) * 1000, 2)


@dataclass
class BotUtterance:
    """One utterance as the bridge sent it: frames from one end mark (or clear) to the next."""

    first_frame_at: float
    last_frame_at: float
    frames: int = 0
    turn: Turn | None = None
    cleared: bool = False
    ended: bool = False


class ReplayEmulator(TwilioEmulator):
    """TwilioEmulator plus the bookkeeping of a replay (all times ``time.monotonic``)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.turns: list[Turn] = []
        self.pending: deque[Turn] = deque()
        self.bot_utterances: list[BotUtterance] = []
        self.unattributed_utterances = 0
        self.mark_rtts_ms: list[float] = []
        self.underrun_times: list[float] = []
        self.speech_onsets: list[float] = []
        self.dtmf_sent: list[tuple[float, str]] = []
        self.timeline: list[tuple[float, str, str]] = []
        self._boundary = True
        self._clearing = False
        self._mark_received: dict[str, float] = {}
        self._queued_starts: deque[float] = deque()

    # ---- turns -----------------------------------------------------------------------------------
    def add_turn(self, kind: str, text: str, sent_at: float) -> Turn:
        turn = Turn(len(self.turns), kind, text, sent_at,
                    overlapped=bool(self.pending) or not self.idle())
        self.turns.append(turn)
        self.pending.append(turn)
        self.note(sent_at, "turn_sent", f"{kind} {len(self.turns) - 1}: {text[:60]}")
        return turn

    def idle(self) -> bool:
        """Nothing is playing or buffered at Twilio's side."""
        if self._current is not None:
            return False
        return not any(isinstance(item, bytes) for item in self._buffer)

    def note(self, at: float, kind: str, detail: str = "") -> None:
        self.timeline.append((at, kind, detail))

    # ---- outbound (bridge -> Twilio) -------------------------------------------------------------
    def _on_outbound(self, raw: str | bytes) -> None:
        now = time.monotonic()
        message: Any = None
        if isinstance(raw, str):
            with contextlib.suppress(json.JSONDecodeError):
                message = json.loads(raw)
        event = message.get("event") if isinstance(message, dict) else None
        invalid_before = len(self.stats.invalid)
        heard_before = len(self.stats.utterances)
        self._clearing = event == "clear"
        try:
            super()._on_outbound(raw)
        finally:
            self._clearing = False
        if len(self.stats.invalid) != invalid_before:
            self.note(now, "invalid", self.stats.invalid[-1][:120])
            return
        if event == "media":
            if self._boundary:
                self._boundary = False
                self._new_bot_utterance(now)
                if len(self.stats.utterances) == heard_before:
                    self._queued_starts.append(now)  # queued behind the previous end mark
            utt = self.bot_utterances[-1]
            utt.frames += 1
            utt.last_frame_at = now
        elif event == "mark":
            name = message["mark"]["name"]
            self._mark_received[name] = now
            if name.endswith("-end"):
                self._boundary = True
                if self.bot_utterances:
                    self.bot_utterances[-1].ended = True
            self.note(now, "mark_received", name)
        elif event == "clear":
            self._boundary = True
            self._queued_starts.clear()
            if self.bot_utterances and not self.bot_utterances[-1].ended:
                self.bot_utterances[-1].cleared = True
            while self.pending and self.pending[0].sent_at <= now:
                turn = self.pending.popleft()
                turn.outcome = "cleared_before_audio"
            self.note(now, "clear_received")

    def _new_bot_utterance(self, now: float) -> None:
        utt = BotUtterance(first_frame_at=now, last_frame_at=now)
        self.bot_utterances.append(utt)
        if self.pending and self.pending[0].sent_at <= now:
            turn = self.pending.popleft()
            turn.first_frame_at = now
            turn.outcome = "audio"
            utt.turn = turn
            self.note(now, "first_frame", f"{turn.kind} {turn.index} ttfa={turn.ttfa_ms} ms")
        else:
            self.unattributed_utterances += 1
            self.note(now, "first_frame", "unattributed utterance")

    # ---- playback ----------------------------------------------------------------------------------
    def _play_one_slot(self) -> None:
        current = self._current
        before = current.underrun_ms if current is not None else 0.0
        started = current.started_playing if current is not None else None
        super()._play_one_slot()
        if current is not None:
            if current.underrun_ms > before:
                now = time.monotonic()
                self.underrun_times.append(now)
                self.note(now, "underrun", f"{current.underrun_ms:.0f} ms so far in this utterance")
            if started is None and current.started_playing is not None:
                self.note(current.started_playing, "playing")

    def _reach_mark(self, name: str, now: float) -> None:
        current = self._current
        super()._reach_mark(name, now)
        if current is not None and self._current is None:
            self.note(now, "utterance_end", f"{current.outcome} frames={current.frames} "
                      f"underruns={current.underruns}")
        if self._current is None and name.endswith("-end") and any(
                isinstance(item, bytes) for item in self._buffer):
            # The next utterance's frames were already buffered behind this end mark.
            received = self._queued_starts.popleft() if self._queued_starts else now
            self._current = HeardUtterance(first_frame_received=received)
            self.stats.utterances.append(self._current)

    def _spawn_echo(self, name: str) -> None:
        now = time.monotonic()
        received = self._mark_received.pop(name, None)
        if received is not None and not self._clearing:
            self.mark_rtts_ms.append((now - received) * 1000)
        self.note(now, "mark_echoed", name + (" (cleared)" if self._clearing else ""))
        super()._spawn_echo(name)

    # ---- inbound (Twilio -> bridge) ---------------------------------------------------------------
    async def send_dtmf(self, digit: str) -> None:
        now = time.monotonic()
        self.dtmf_sent.append((now, digit))
        self.note(now, "dtmf_sent", digit)
        await super().send_dtmf(digit)


# ================================================================== one call


@dataclass
class CallResult:
    call_id: str
    recording: str
    call_sid: str
    status: str = "pending"  # completed | cut | failed
    errors: list[str] = field(default_factory=list)
    started_at_s: float = 0.0
    duration_s: float = 0.0
    turns: list[dict[str, Any]] = field(default_factory=list)
    utterances_heard: int = 0
    utterances_played: int = 0
    utterances_cleared: int = 0
    unattributed_utterances: int = 0
    frames_received: int = 0
    audio_s: float = 0.0
    underruns: int = 0
    underrun_ms: float = 0.0
    underrun_times_s: list[float] = field(default_factory=list)
    clears: int = 0
    barge_in_ms: list[float] = field(default_factory=list)
    mark_rtt_ms: list[float] = field(default_factory=list)
    delivery_rtf: list[float] = field(default_factory=list)
    marks_received: int = 0
    marks_echoed: int = 0
    invalid_messages: int = 0
    invalid_examples: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    closed_by: str = ""
    agent_connected: bool = False
    agent_setup_ms: float | None = None
    agent_messages: dict[str, int] = field(default_factory=dict)
    timeline: list[dict[str, Any]] | None = None

    @property
    def ttfas_ms(self) -> list[float]:
        return [t["ttfa_ms"] for t in self.turns if t["ttfa_ms"] is not None]

    def as_dict(self, *, raw: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not raw:
            for key in ("mark_rtt_ms", "delivery_rtf", "underrun_times_s"):
                values = data.pop(key)
                data[key] = summarize(values, 3 if key == "delivery_rtf" else 1) if values else None
        if data["timeline"] is None:
            data.pop("timeline")
        return data


class CallReplay:
    """Replays one recorded call; ``run`` returns a ``CallResult`` and never raises (a cancelled
    replay hangs up and reports ``cut``)."""

    def __init__(
        self,
        recording: RecordedCall,
        *,
        call_id: str,
        base_url: str,
        agent_server: AgentServer | None,
        auth_token: str | None = None,
        public_url: str | None = None,
        voice: str | None = None,
        preset: str | None = None,
        greeting: str | None = "",
        clock_zero: float | None = None,
        tail_timeout_s: float = 10.0,
        keep_audio: bool = False,
        keep_timeline: bool = False,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.recording = recording
        self.call_id = call_id
        self.base_url = base_url.rstrip("/")
        self.public_url = (public_url or base_url).rstrip("/")
        self.agent_server = agent_server
        self.auth_token = auth_token
        self.voice = voice
        self.preset = preset
        self.greeting = greeting
        """Greeting parameter sent to the webhook; None: don't send one (the bridge's default)."""
        self.tail_timeout_s = tail_timeout_s
        self.keep_audio = keep_audio
        self.keep_timeline = keep_timeline
        self._http = http
        self.clock_zero = time.monotonic() if clock_zero is None else clock_zero
        hexid = uuid.uuid4().hex
        self.call_sid = "CA" + hexid
        self.stream_sid = "MZ" + hexid
        self.result = CallResult(call_id, recording.name, self.call_sid)
        self.emulator: ReplayEmulator | None = None
        self.started = asyncio.Event()
        self.agent_done = asyncio.Event()
        self.agent_ws: ServerConnection | None = None
        self._agent_turns = {turn.first_event: turn for turn in recording.agent_turns}
        self._onsets = set(recording.speech_onsets())
        self._agent_ended = False
        self._twilio_done = False
        self._started_at = 0.0
        if not recording.agent_actions:
            self.agent_done.set()

    # ---- the webhook ---------------------------------------------------------------------------------
    def webhook_query(self) -> dict[str, str]:
        query: dict[str, str] = {}
        if self.greeting is not None:
            query["greeting"] = self.greeting
        if self.voice:
            query["voice"] = self.voice
        if self.preset:
            query["preset"] = self.preset
        if self.agent_server is not None:
            query["agentUrl"] = self.agent_server.url_for(self.call_id)
        return query

    async def _webhook(self, http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
        query = urllib.parse.urlencode(self.webhook_query(), quote_via=urllib.parse.quote)
        path = "/twiml" + (f"?{query}" if query else "")
        form = {"CallSid": self.call_sid, "AccountSid": "AC" + "0" * 32, "From": "+15550001111",
                "To": "+15550002222", "Direction": "inbound", "CallStatus": "ringing"}
        headers = {}
        if self.auth_token:
            from twilio.request_validator import RequestValidator

            headers["X-Twilio-Signature"] = RequestValidator(self.auth_token).compute_signature(
                self.public_url + path, form)
        response = await http.post(self.base_url + path, data=form, headers=headers, timeout=15.0)
        if response.status_code != 200:
            raise _CallFailed("webhook_failed", f"POST /twiml answered {response.status_code}: "
                              f"{response.text[:200]}")
        return parse_twiml(response.text, self.base_url)

    # ---- the call ------------------------------------------------------------------------------------
    async def run(self) -> CallResult:
        result = self.result
        self._started_at = time.monotonic()
        result.started_at_s = round(self._started_at - self.clock_zero, 3)
        try:
            if self._http is None:
                async with httpx.AsyncClient() as http:
                    url, params = await self._webhook(http)
            else:
                url, params = await self._webhook(self._http)
            self.emulator = ReplayEmulator(url, call_sid=self.call_sid, stream_sid=self.stream_sid,
                                           custom_parameters=params, keep_audio=self.keep_audio)
            try:
                await self.emulator.connect()
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                raise _CallFailed("connect_failed", f"media stream connect failed: {exc!r}") from None
            assert self.emulator.start_sent_at is not None
            self.emulator.note(self.emulator.start_sent_at, "start_sent")
            greeting = params.get("greeting", "") if self.greeting is None else self.greeting
            if greeting:
                self.emulator.add_turn("greeting", greeting, self.emulator.start_sent_at)
            self.started.set()
            await self._send_twilio()
            result.status = "completed"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            result.status = "cut"
        except _CallFailed as exc:
            result.status = "failed"
            result.errors.append(f"{exc.kind}: {exc.detail}")
        except Exception as exc:  # a bug in the replay must not take the whole run down
            result.status = "failed"
            result.errors.append(f"replay_error: {exc!r}")
        finally:
            await self._finish()
        return result

    async def _send_twilio(self) -> None:
        emulator = self.emulator
        assert emulator is not None and emulator.start_sent_at is not None
        origin = emulator.start_sent_at
        stop_at: float | None = None
        last_due = origin - FRAME_S
        for t, kind, data in self.recording.twilio_actions():
            if emulator._closed.is_set():
                break
            due = origin + t
            if kind == "media":
                last_due = due
            if kind == "stop":
                stop_at = due
                break
            delay = due - time.monotonic()
            if delay > 0.001:
                await asyncio.sleep(delay)
            try:
                if kind == "media":
                    if round(t, 4) in self._onsets:
                        now = time.monotonic()
                        emulator.speech_onsets.append(now)
                        emulator.note(now, "caller_speech_onset")
                    await emulator.send_media(data)
                elif kind == "dtmf":
                    await emulator.send_dtmf(data)
            except websockets.ConnectionClosed:
                break
        self._twilio_done = not emulator._closed.is_set()
        if not emulator._closed.is_set():
            # Twilio streams caller audio until the call ends: silence while we wait.
            filler = asyncio.create_task(self._send_silence(last_due))
            try:
                if stop_at is not None and stop_at > time.monotonic():
                    await asyncio.sleep(stop_at - time.monotonic())
                await self._wait_quiet()
            finally:
                filler.cancel()
                await asyncio.gather(filler, return_exceptions=True)
        if emulator._closed.is_set():
            self.result.closed_by = "bridge"
        else:
            self.result.closed_by = "replay"
            emulator.note(time.monotonic(), "stop_sent")
            await emulator.hang_up()

    async def _send_silence(self, last_due: float) -> None:
        emulator = self.emulator
        assert emulator is not None
        due = max(last_due + FRAME_S, time.monotonic())
        with contextlib.suppress(websockets.ConnectionClosed):
            while not emulator._closed.is_set():
                delay = due - time.monotonic()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                await emulator.send_media(SILENCE)
                due += FRAME_S

    async def _wait_quiet(self) -> None:
        """Until the agent has sent everything, no turn waits for audio and nothing plays."""
        emulator = self.emulator
        assert emulator is not None
        deadline = time.monotonic() + self.tail_timeout_s
        quiet_since: float | None = None
        while time.monotonic() < deadline and not emulator._closed.is_set():
            quiet = self.agent_done.is_set() and not emulator.pending and emulator.idle()
            now = time.monotonic()
            if quiet:
                quiet_since = quiet_since or now
                if now - quiet_since >= 0.2:
                    return
            else:
                quiet_since = None
            await asyncio.sleep(0.05)
        if not emulator._closed.is_set() and time.monotonic() >= deadline:
            waiting = "agent messages unsent" if not self.agent_done.is_set() else (
                "turn without audio" if emulator.pending else "bridge still speaking")
            self.result.errors.append(f"timeout: {waiting} {self.tail_timeout_s:.0f} s after the "
                                      "recording ended")

    async def _finish(self) -> None:
        result = self.result
        emulator = self.emulator
        if emulator is not None:
            with contextlib.suppress(Exception):
                if not emulator._closed.is_set() and result.status == "cut":
                    await asyncio.shield(emulator.hang_up())
                await emulator.close()
        if self.agent_ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.agent_ws.close(1000, "call over"), 2)
        result.duration_s = round(time.monotonic() - self._started_at, 3)
        if emulator is None:
            return
        self._collect(emulator)

    def _collect(self, emulator: ReplayEmulator) -> None:
        result = self.result
        stats = emulator.stats
        zero = self.clock_zero
        for turn in emulator.turns:
            if turn.outcome == "pending":
                turn.outcome = "no_audio"
                if result.status == "completed":
                    result.errors.append(f"turn_without_audio: {turn.kind} {turn.index} "
                                         f"{turn.text[:40]!r}")
            result.turns.append({"index": turn.index, "kind": turn.kind, "text": turn.text[:80],
                                 "sent_at_s": round(turn.sent_at - zero, 3),
                                 "ttfa_ms": turn.ttfa_ms, "overlapped": turn.overlapped,
                                 "outcome": turn.outcome})
        result.utterances_heard = len(stats.utterances)
        result.utterances_played = sum(u.outcome == "played" for u in stats.utterances)
        result.utterances_cleared = sum(u.outcome == "cleared" for u in stats.utterances)
        result.unattributed_utterances = emulator.unattributed_utterances
        result.frames_received = stats.media_received
        result.audio_s = round(stats.media_received * FRAME_S, 2)
        result.underruns = stats.underruns
        result.underrun_ms = round(stats.underrun_ms, 1)
        result.underrun_times_s = [round(t - zero, 3) for t in emulator.underrun_times]
        result.clears = stats.clears
        for clear in stats.clear_times:
            onsets = [o for o in emulator.speech_onsets if clear - BARGE_IN_WINDOW_S <= o <= clear]
            if onsets:
                result.barge_in_ms.append(round((clear - onsets[-1]) * 1000, 1))
        result.mark_rtt_ms = [round(v, 1) for v in emulator.mark_rtts_ms]
        for utt in emulator.bot_utterances:
            if utt.frames >= 25 and not utt.cleared:
                wall = utt.last_frame_at - utt.first_frame_at + FRAME_S
                result.delivery_rtf.append(round(wall / (utt.frames * FRAME_S), 3))
        result.marks_received = stats.marks_received
        result.marks_echoed = stats.marks_echoed
        result.invalid_messages = len(stats.invalid)
        result.invalid_examples = stats.invalid[:5]
        if stats.invalid:
            result.errors.append(f"invalid_messages: {len(stats.invalid)} (e.g. {stats.invalid[0]})")
        result.close_code = stats.close_code
        result.close_reason = stats.close_reason
        if result.closed_by == "bridge":
            code, reason = stats.close_code, stats.close_reason
            emulator.note(time.monotonic(), "closed_by_bridge", f"{code} {reason}")
            if code != 1000:
                result.errors.append(f"unexpected_close: code {code} {reason!r}")
            elif not self._agent_ended and not self._twilio_done:
                result.errors.append(f"unexpected_close: bridge closed the stream early "
                                     f"({stats.close_reason!r}) without an agent 'end'")
        if self.recording.agent_actions and not result.agent_connected and result.status == "completed":
            result.errors.append("agent_not_connected: the bridge never opened the agent socket")
        if result.errors and result.status == "completed":
            result.status = "failed"
        if self.keep_timeline:
            result.timeline = [{"t": round(at - (emulator.start_sent_at or zero), 3), "event": kind,
                                **({"detail": detail} if detail else {})}
                               for at, kind, detail in sorted(emulator.timeline, key=lambda x: x[0])]

    # ---- the agent's side (called by AgentServer) ----------------------------------------------------
    async def serve_agent(self, ws: ServerConnection) -> None:
        result = self.result
        self.agent_ws = ws
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
        self._count_agent_message("setup")
        if setup.get("callSid") not in (None, self.call_sid):
            result.errors.append(f"agent_protocol: setup.callSid {setup.get('callSid')!r} is not "
                                 f"{self.call_sid}")
        await self.started.wait()
        emulator = self.emulator
        assert emulator is not None and emulator.start_sent_at is not None
        result.agent_setup_ms = round((setup_at - emulator.start_sent_at) * 1000, 1)
        emulator.note(setup_at, "agent_setup")
        sender = asyncio.create_task(self._agent_send(ws, emulator))
        try:
            async for message in ws:
                now = time.monotonic()
                parsed = _json_or_none(message)
                kind = parsed.get("type") if isinstance(parsed, dict) else None
                if not isinstance(kind, str):
                    result.errors.append(f"agent_protocol: bridge sent {str(message)[:80]!r}")
                    continue
                self._count_agent_message(kind)
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

    def _count_agent_message(self, kind: str) -> None:
        self.result.agent_messages[kind] = self.result.agent_messages.get(kind, 0) + 1

    async def _agent_send(self, ws: ServerConnection, emulator: ReplayEmulator) -> None:
        assert emulator.start_sent_at is not None
        origin = emulator.start_sent_at
        try:
            for index, (t, msg) in enumerate(self.recording.agent_actions):
                delay = origin + t - time.monotonic()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                turn = self._agent_turns.get(index)
                if turn is not None:
                    emulator.add_turn("agent", turn.text, time.monotonic())
                if msg.get("type") == "end":
                    self._agent_ended = True
                    emulator.note(time.monotonic(), "agent_end_sent")
                await ws.send(json.dumps(msg, separators=(",", ":")))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.agent_done.set()


class _CallFailed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _json_or_none(raw: str | bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return None


def parse_twiml(xml: str, base_url: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream>`` URL (re-pointed at ``base_url``'s host: PUBLIC_URL may name a
    proxy we cannot reach) and its ``<Parameter>``s."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise _CallFailed("webhook_failed", f"TwiML is not XML: {exc}") from None
    stream = root.find("./Connect/Stream")
    if stream is None or "url" not in stream.attrib:
        raise _CallFailed("webhook_failed", f"TwiML has no <Connect><Stream url>: {xml[:200]}")
    params = {p.attrib.get("name", ""): p.attrib.get("value", "") for p in stream.findall("Parameter")}
    stream_url = urllib.parse.urlsplit(stream.attrib["url"])
    base = urllib.parse.urlsplit(base_url)
    scheme = "wss" if base.scheme == "https" else "ws"
    # A bridge serving the stream on its own port (VOICE_BRIDGE_STREAM_PORT, no PUBLIC_URL) names
    # that port on the same host: keep it.
    netloc = stream_url.netloc if stream_url.hostname == base.hostname else base.netloc
    return urllib.parse.urlunsplit((scheme, netloc, stream_url.path, "", "")), params


# ================================================================== the loopback agent server


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
        await replay.serve_agent(ws)


# ================================================================== helpers for callers


def check_loopback(url: str, allow_remote: bool) -> None:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return
    if not allow_remote:
        raise SystemExit(f"refusing to load {host!r}: only loopback bridges (127.0.0.1, localhost) "
                         "unless --allow-remote")


def tokenize(text: str) -> list[str]:
    """LLM-like tokens: words with their leading space, long words split in two."""
    import re

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


def heard_wav(emulator: TwilioEmulator, path: str | Path) -> float:
    """Write what the caller heard (8 kHz 16-bit mono WAV); returns its length in seconds."""
    import wave

    pcm = audioop.ulaw2lin(bytes(emulator.heard), 2)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm)
    return len(emulator.heard) / SAMPLE_RATE


__all__ = ["FRAME_BYTES", "AgentServer", "CallReplay", "CallResult", "RecordedCall", "RecordingError",
           "RecordingWriter", "ReplayEmulator", "agent_turn_messages", "check_loopback",
           "find_recordings", "heard_wav", "load_recording", "parse_recording", "silent_call",
           "summarize", "tokenize"]
