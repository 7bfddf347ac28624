"""What the outbound pipeline tells the call about (metrics, the call log, the echo reference).

One object shared by the queue, the renderer and the pacer, read at the moment of each event, so a
hook set after the ``Speaker`` was built (as tests do) is still called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from telephony.outbound.utterance import Utterance


@dataclass
class SpeakerHooks:
    """Callbacks for metrics and the call log (all optional, all synchronous and cheap)."""

    on_first_frame: Callable[[Utterance, float], None] | None = None
    on_underrun: Callable[[float], None] | None = None
    on_frames_sent: Callable[[int], None] | None = None
    on_audio_sent: Callable[[list[bytes]], None] | None = None
    """The μ-law frames themselves, as sent (the call's echo reference)."""
    on_engine_first_chunk: Callable[[float], None] | None = None
    on_finished: Callable[[Utterance], None] | None = None
    on_error: Callable[[str], None] | None = None
    on_stalled: Callable[[str], None] | None = None
    """Twilio stopped echoing marks: the argument says which and how late; the call should end."""
