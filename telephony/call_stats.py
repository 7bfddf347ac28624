"""What one call did, counted as it goes and summed up in the one log line written when it ends.

Kept apart from the call so the call's code reads as behaviour, and the summary's fields (which
operators grep and dashboards parse) live in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from telephony.speaker import Utterance


@dataclass
class CallStats:
    """Counters of one call; ``summary`` is the structured end-of-call record."""

    started_at: float = field(default_factory=time.monotonic)
    turns: list[dict[str, Any]] = field(default_factory=list)
    """One record per utterance the agent spoke (outcome, time to first audio, underruns, ...)."""
    protocol_errors: dict[str, int] = field(default_factory=dict)
    barge_ins: int = 0
    dtmf_digits: int = 0
    end_reason: str = "unknown"
    hangup: str | None = None
    """What a requested hang-up came to: hung_up, already_ended, failed or unavailable
    (requested: the stream ended while the REST request was under way)."""

    def protocol_error(self, violation: str) -> int:
        """Count one violation; returns how many of that kind so far (logs are capped by it)."""
        self.protocol_errors[violation] = self.protocol_errors.get(violation, 0) + 1
        return self.protocol_errors[violation]

    def utterance_finished(self, utt: Utterance) -> None:
        done = utt.future.done() and not utt.future.cancelled()
        result = utt.future.result() if done else None
        self.turns.append({
            "utterance": utt.id,
            "outcome": result.outcome.value if result else "unknown",
            "ttfa_ms": _ms(utt.first_frame_at - utt.created_at) if utt.first_frame_at else None,
            "text_wait_ms": _ms(utt.first_segment_at - utt.created_at) if utt.first_segment_at else None,
            "engine_first_chunk_ms": _round(utt.engine_first_chunk_ms),
            "cached": utt.from_cache,
            "frames": utt.frames_sent,
            "underruns": utt.underruns,
            "underrun_ms": _round(utt.underrun_ms),
            "mark_rtt_ms": _round(utt.mark_rtt_ms),
            "chars": len(utt.text),
        })

    def summary(self, *, call_sid: str, stream_sid: str, auth_mode: str, voice_load_ms: float | None,
                caller_turns: list[Any], inbound_frames: int) -> dict[str, Any]:
        return {
            "call_sid": call_sid,
            "stream_sid": stream_sid,
            "auth": auth_mode,
            "voice_load_ms": _round(voice_load_ms),
            "duration_s": round(time.monotonic() - self.started_at, 3),
            "end_reason": self.end_reason,
            "hangup": self.hangup,
            "turns": self.turns,
            "frames_sent": sum(t["frames"] for t in self.turns),
            "underruns": sum(t["underruns"] for t in self.turns),
            "barge_ins": self.barge_ins,
            "caller_turns": caller_turns,
            "inbound_frames": inbound_frames,
            "dtmf": self.dtmf_digits,
            "protocol_errors": self.protocol_errors,
        }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
