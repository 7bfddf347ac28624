"""The Twilio emulator with the bookkeeping a replay needs (all times ``time.monotonic``).

Which bot utterance answers which turn (the greeting, or a recorded agent turn) and so each turn's
time to first audio; mark round trips; when underruns, clears and DTMF happened; and a timeline of
all of it. When the caller *hears* things (utterance starts, underruns) is the emulator's playback
(twilio_playback.py), observed through its hooks; this class only adds what the bridge *sent*:
utterances as runs of frames between end marks.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from telephony.testing.twilio_emulator import HeardUtterance, TwilioEmulator
from telephony.testing.twilio_playback import END_MARK_SUFFIX


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
        return self.playback.idle()

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
            utt = self.bot_utterances[-1]
            utt.frames += 1
            utt.last_frame_at = now
        elif event == "mark":
            name = message["mark"]["name"]
            self._mark_received[name] = now
            if name.endswith(END_MARK_SUFFIX):
                self._boundary = True
                if self.bot_utterances:
                    self.bot_utterances[-1].ended = True
            self.note(now, "mark_received", name)
        elif event == "clear":
            self._boundary = True
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

    # ---- playback (Twilio's playback reports through these hooks) -----------------------------------
    def playing(self, utterance: HeardUtterance, now: float) -> None:
        self.note(now, "playing")

    def underrun(self, utterance: HeardUtterance, now: float) -> None:
        self.underrun_times.append(now)
        self.note(now, "underrun", f"{utterance.underrun_ms:.0f} ms so far in this utterance")

    def utterance_ended(self, utterance: HeardUtterance, now: float) -> None:
        self.note(now, "utterance_end", f"{utterance.outcome} frames={utterance.frames} "
                  f"underruns={utterance.underruns}")

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
