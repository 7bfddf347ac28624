"""Twilio's side of one call for the lean load generator (``scripts/loadtest.py --lean``).

The same measurements as ``ReplayEmulator`` (turns and their time to first audio, bot utterances,
underruns as heard on Twilio's 20 ms playback clock, mark round trips, clears), at a fraction of
its CPU so that one core can drive 600 calls:

* inbound: the recording is turned into a script once per recording (payloads already in base64,
  shared by every call); a media message is one string join and one ``write``; the call does not
  sleep, the generator's one shared ticker (lean_replay.py) calls ``tick`` every 20 ms;
* outbound: a media message is recognised in place, without decoding, by its exact length, prefix
  and suffix (``{"event":"media","streamSid":"<ours>","media":{"payload":"`` + 216 base64 characters
  ending ``==`` + ``"}}``: exactly 160 bytes); one in ``FULL_CHECK_EVERY`` and every other message
  go through ``validate_outbound`` (Twilio's full rules) and ``json.loads``;
* playback: counters (lean_playback.py), played by the same ticker;
* a mark is echoed when playback reaches it, by one ``write`` (no task per echo).

It exposes what ``collect_result`` and ``RecordedAgent`` read of an emulator (``stats``, ``turns``,
``pending``, ``add_turn``, ``note``...), so results and reports are the emulator generator's.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from telephony.recorded_call import RecordedCall
from telephony.testing.lean_playback import LeanPlayback
from telephony.testing.lean_socket import LeanSocket
from telephony.testing.turn_ledger import TurnLedger
from telephony.testing.twilio_emulator import validate_outbound
from telephony.testing.twilio_playback import EmulatorStats, HeardUtterance
from tts_core.audio.telephony_format import FRAME_BYTES, FRAME_MS

FULL_CHECK_EVERY = 64
"""One media message in this many is fully validated (JSON, fields, strict base64, 160 bytes)."""
_B64_LEN = 4 * ((FRAME_BYTES + 2) // 3)  # 216
_PAD = b"=" * (-FRAME_BYTES % 3 and 3 - FRAME_BYTES % 3)  # b"==" for 160 bytes

Action = tuple[float, str, str, bool]
"""(t from start, kind: media|dtmf|stop, base64 payload or digit, caller speech starts here)."""
_scripts: dict[int, tuple[RecordedCall, list[Action]]] = {}


def script_of(recording: RecordedCall) -> list[Action]:
    """The recording's Twilio actions with payloads in base64, built once per recording."""
    cached = _scripts.get(id(recording))
    if cached is not None and cached[0] is recording:
        return cached[1]
    onsets = set(recording.speech_onsets())
    b64: dict[bytes, str] = {}
    script = [(t, kind, (b64.setdefault(data, base64.b64encode(data).decode()) if kind == "media"
                         else str(data or "")), round(t, 4) in onsets and kind == "media")
              for t, kind, data in recording.twilio_actions()]
    _scripts[id(recording)] = (recording, script)
    return script


class LeanCaller(TurnLedger):
    """One call's Twilio side: ``socket`` carries it, ``tick`` sends and plays, ``on_text`` reads."""

    def __init__(self, *, call_sid: str, stream_sid: str, custom_parameters: dict[str, str],
                 keep_timeline: bool = False) -> None:
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.custom_parameters = custom_parameters
        self.keep_timeline = keep_timeline
        self.socket = LeanSocket(self.on_text)
        self.stats = EmulatorStats()
        self.playback = LeanPlayback(self.stats, self)
        self.start_sent_at: float | None = None
        self._init_ledger()
        self._seq = 0
        self._chunk = 0
        self._media_prefix = ('{"event":"media","streamSid":"' + stream_sid
                              + '","media":{"payload":"').encode()
        self._media_len = len(self._media_prefix) + _B64_LEN + 3
        self._media_tail = _PAD + b'"}}'
        self._since_check = 0
        self._in_head = '{"event":"media","sequenceNumber":"'
        self._in_mid = '","streamSid":"' + stream_sid + '","media":{"track":"inbound","chunk":"'

    @property
    def closed(self) -> bool:
        return self.socket.closed.is_set()

    # ---- what the replay and the recorded agent call -------------------------------------------
    def idle(self) -> bool:
        return self.playback.idle()

    def note(self, at: float, kind: str, detail: str = "") -> None:
        if self.keep_timeline:
            self.timeline.append((at, kind, detail))

    # ---- inbound (Twilio -> bridge) --------------------------------------------------------------
    def send_json(self, message: dict[str, Any]) -> None:
        self.socket.send_text(json.dumps(message, separators=(",", ":")).encode())

    def send_start(self) -> None:
        self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self.start_sent_at = time.monotonic()
        self.send_json({"event": "start", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                        "start": {"accountSid": "AC" + "0" * 32, "streamSid": self.stream_sid,
                                  "callSid": self.call_sid, "tracks": ["inbound"],
                                  "customParameters": self.custom_parameters,
                                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                                  "channels": 1}}})
        self.note(self.start_sent_at, "start_sent")

    def send_media(self, b64: str) -> None:
        self._seq += 1
        self._chunk = chunk = self._chunk + 1
        self.socket.send_text((self._in_head + str(self._seq) + self._in_mid + str(chunk)
                               + '","timestamp":"' + str(chunk * FRAME_MS) + '","payload":"'
                               + b64 + '"}}').encode())

    def send_dtmf(self, digit: str, now: float) -> None:
        self.note(now, "dtmf_sent", digit)
        self.send_json({"event": "dtmf", "streamSid": self.stream_sid, "sequenceNumber": self._next_seq(),
                        "dtmf": {"track": "inbound_track", "digit": digit}})

    def send_stop(self) -> None:
        self.send_json({"event": "stop", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                        "stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid}})

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    # ---- outbound (bridge -> Twilio) -------------------------------------------------------------
    def on_text(self, data: bytes, start: int, end: int) -> None:
        if (end - start == self._media_len and data.startswith(self._media_prefix, start)
                and data.endswith(self._media_tail, start, end)):
            self._since_check += 1
            if self._since_check < FULL_CHECK_EVERY:
                self._media(time.monotonic())
                return
            self._since_check = 0
        self._slow(data[start:end], time.monotonic())

    def _slow(self, raw: bytes, now: float) -> None:
        """Every message that is not a media frame in the bridge's exact shape, and the sample."""
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            self.stats.invalid.append("text frame is not UTF-8")
            return
        problem = validate_outbound(text, self.stream_sid)
        if problem:
            self.stats.invalid.append(problem)
            self.note(now, "invalid", problem[:120])
            return
        message = json.loads(text)
        event = message["event"]
        if event == "media":
            self._media(now)
        elif event == "mark":
            self._mark(message["mark"]["name"], now)
        else:
            self._clear(now)

    def _media(self, now: float) -> None:
        self.stats.media_received += 1
        self.playback.media(now)
        self._frame_heard(now)

    def _mark(self, name: str, now: float) -> None:
        self.stats.marks_received += 1
        self.stats.mark_names.append(name)
        self.playback.mark(name)
        self._mark_arrived(name, now)

    def _clear(self, now: float) -> None:
        self.stats.clears += 1
        self.stats.clear_times.append(now)
        self._clear_arrived(now)
        for name in self.playback.clear(now):
            self._mark_received.pop(name, None)  # echoed because of the clear: no round trip
            self._echo(name, now)

    # ---- playback (LeanListener) -----------------------------------------------------------------
    def mark_reached(self, name: str, now: float) -> None:
        received = self._mark_received.pop(name, None)
        if received is not None:
            self.mark_rtts_ms.append((now - received) * 1000)
        self._echo(name, now)

    def underrun(self, utterance: HeardUtterance, now: float) -> None:
        self.underrun_times.append(now)
        self.note(now, "underrun", f"{utterance.underrun_ms:.0f} ms so far in this utterance")

    def _echo(self, name: str, now: float) -> None:
        self.stats.marks_echoed += 1
        self.note(now, "mark_echoed", name)
        self.send_json({"event": "mark", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                        "mark": {"name": name}})
