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
from typing import Any

from telephony.testing.turn_ledger import BotUtterance, Turn, TurnLedger
from telephony.testing.twilio_emulator import HeardUtterance, TwilioEmulator

__all__ = ["BotUtterance", "ReplayEmulator", "Turn"]


class ReplayEmulator(TurnLedger, TwilioEmulator):
    """TwilioEmulator plus the bookkeeping of a replay (all times ``time.monotonic``)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._init_ledger()
        self.dtmf_sent: list[tuple[float, str]] = []
        self._clearing = False

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
            self._frame_heard(now)
        elif event == "mark":
            self._mark_arrived(message["mark"]["name"], now)
        elif event == "clear":
            self._clear_arrived(now)

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
