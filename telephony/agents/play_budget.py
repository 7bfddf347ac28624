"""How much decoded ``play`` audio a call may hold at once.

A WAV of a few MB decodes to several times that in float32 samples (μ-law: 4x), and an agent may
queue many plays: without a bound one hostile agent's plays took a process from 318 to 963 MB and
starved a neighbouring call. Each play reserves its decoded size here before it decodes (read from
the WAV header) and gives it back when it has finished playing; a play that does not fit is refused
(the agent gets an ``error``), never queued. Loops play the same buffer again, so they cost nothing.
"""

from __future__ import annotations


class PlayBudget:
    """A byte budget with a high-water mark. Not thread-safe: used on the event loop only."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self.peak_bytes = 0

    def reserve(self, n: int) -> bool:
        """Take ``n`` bytes if they fit under the limit; False (nothing taken) otherwise."""
        if n < 0 or self.held_bytes + n > self.limit_bytes:
            return False
        self.held_bytes += n
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        return True

    def release(self, n: int) -> None:
        self.held_bytes = max(0, self.held_bytes - n)


def megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"
