"""Typed playback marks: which utterance and segment a Twilio ``mark`` stands for.

A mark is built once, when its audio is queued, with its wire name (``g<generation>-u<utterance>-
s<segment>`` or ``...-end``) made then and kept. When Twilio echoes the name, the mark is found by
that name among the ones sent (``MarkWatch``): its meaning is never parsed back from the string.
The generation (bumped on every cut) makes every name unique across ``clear``s.
"""

from __future__ import annotations

from typing import NamedTuple


class Mark(NamedTuple):
    """A point in the outbound audio: the end of segment ``segment``, or (None) of the utterance."""

    generation: int
    utterance: int
    segment: int | None
    wire: str
    """The name sent to Twilio and echoed back."""

    @classmethod
    def segment_end(cls, generation: int, utterance: int, segment: int) -> Mark:
        return cls(generation, utterance, segment, f"g{generation}-u{utterance}-s{segment}")

    @classmethod
    def utterance_end(cls, generation: int, utterance: int) -> Mark:
        return cls(generation, utterance, None, f"g{generation}-u{utterance}-end")

    @property
    def is_end(self) -> bool:
        return self.segment is None
