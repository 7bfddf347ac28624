"""What a replayed call expected the bridge to say and what it heard, kept the same way by both load
generators (the emulator-based ``ReplayEmulator`` and the lean ``LeanCaller``): turns sent, the
utterances the bridge's frames make up, which turn each answers (TTFA), and what a ``clear`` or an end
mark does to them. Each generator feeds it from its own wire handling and provides ``idle`` and
``note``."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

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


class TurnLedger:
    """Turn and utterance bookkeeping; the owner calls ``_init_ledger`` and defines ``idle``/``note``."""

    def _init_ledger(self) -> None:
        self.turns: list[Turn] = []
        self.pending: deque[Turn] = deque()
        self.bot_utterances: list[BotUtterance] = []
        self.unattributed_utterances = 0
        self.mark_rtts_ms: list[float] = []
        self.underrun_times: list[float] = []
        self.speech_onsets: list[float] = []
        self.timeline: list[tuple[float, str, str]] = []
        self._boundary = True
        self._mark_received: dict[str, float] = {}

    def idle(self) -> bool:
        raise NotImplementedError

    def note(self, at: float, kind: str, detail: str = "") -> None:
        raise NotImplementedError

    def add_turn(self, kind: str, text: str, sent_at: float) -> Turn:
        turn = Turn(len(self.turns), kind, text, sent_at, overlapped=bool(self.pending) or not self.idle())
        self.turns.append(turn)
        self.pending.append(turn)
        self.note(sent_at, "turn_sent", f"{kind} {turn.index}: {text[:60]}")
        return turn

    def _frame_heard(self, now: float) -> None:
        """A media frame arrived: the first after a boundary opens the next bot utterance."""
        if self._boundary:
            self._boundary = False
            self._new_bot_utterance(now)
        utt = self.bot_utterances[-1]
        utt.frames += 1
        utt.last_frame_at = now

    def _mark_arrived(self, name: str, now: float) -> None:
        """A mark arrived (its echo comes when played); an end mark closes the utterance."""
        self._mark_received[name] = now
        if name.endswith(END_MARK_SUFFIX):
            self._boundary = True
            if self.bot_utterances:
                self.bot_utterances[-1].ended = True
        self.note(now, "mark_received", name)

    def _clear_arrived(self, now: float) -> None:
        """``clear``: the utterance playing is cut, and turns sent by now will not get audio."""
        self._boundary = True
        if self.bot_utterances and not self.bot_utterances[-1].ended:
            self.bot_utterances[-1].cleared = True
        while self.pending and self.pending[0].sent_at <= now:
            self.pending.popleft().outcome = "cleared_before_audio"
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
