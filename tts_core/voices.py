"""Voices: reference audio for cloning engines, found locally or fetched from a voice server.

(VoiceStore is being written; the Voice type below is the contract engines rely on.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

VOICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, eq=False)
class Voice:
    """A cloning voice: mono float32 reference audio plus an optional transcript."""

    id: str
    audio: np.ndarray
    sample_rate: int
    transcript: str | None = None
    source: str = "local"
    conditioning: dict[str, object] = field(default_factory=dict)
    """Per-engine prepared conditioning (speaker embeddings), keyed by engine name."""
