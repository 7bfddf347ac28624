"""What a replayed call measured (``CallResult``) and how it is judged (``collect_result``)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from telephony.testing.replay_emulator import ReplayEmulator
from tts_core.audio.telephony_format import FRAME_S

BARGE_IN_WINDOW_S = 5.0
"""A clear counts as a barge-in reaction if caller speech started at most this long before it."""


def summarize(values: Iterable[float], digits: int = 1) -> dict[str, Any]:
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if data.size == 0:
        return {"n": 0, "p50": None, "p90": None, "p95": None, "p99": None, "max": None, "mean": None}
    p50, p90, p95, p99 = np.percentile(data, [50, 90, 95, 99])
    return {"n": int(data.size), "p50": round(float(p50), digits), "p90": round(float(p90), digits),
            "p95": round(float(p95), digits), "p99": round(float(p99), digits),
            "max": round(float(data.max()), digits), "mean": round(float(data.mean()), digits)}


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


def collect_result(result: CallResult, emulator: ReplayEmulator, *, clock_zero: float,
                   agent_expected: bool, agent_ended: bool, twilio_done: bool,
                   keep_timeline: bool) -> None:
    """Fill ``result`` from what the emulator saw, and judge the call: a turn without audio, an
    invalid message, an unexpected close or an agent that never connected fail it."""
    stats = emulator.stats
    zero = clock_zero
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
        elif not agent_ended and not twilio_done:
            result.errors.append(f"unexpected_close: bridge closed the stream early "
                                 f"({stats.close_reason!r}) without an agent 'end'")
    if agent_expected and not result.agent_connected and result.status == "completed":
        result.errors.append("agent_not_connected: the bridge never opened the agent socket")
    if result.errors and result.status == "completed":
        result.status = "failed"
    if keep_timeline:
        result.timeline = [{"t": round(at - (emulator.start_sent_at or zero), 3), "event": kind,
                            **({"detail": detail} if detail else {})}
                           for at, kind, detail in sorted(emulator.timeline, key=lambda x: x[0])]
