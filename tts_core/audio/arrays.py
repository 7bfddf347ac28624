"""Names for the sample arrays that pass between engines, DSP and the phone line.

Engines produce float32 mono in [-1, 1]; μ-law, voice activity detection and WAV files work on
int16. Naming the dtype in every signature lets the type checker catch an int16 buffer handed over
where float audio is expected (the two are the same ``np.ndarray`` to Python, not to the ear).
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
from numpy.typing import NDArray

FloatAudio: TypeAlias = NDArray[np.float32]
"""float32 samples in [-1, 1] (mono unless a signature says otherwise)."""

Pcm16Audio: TypeAlias = NDArray[np.int16]
"""Signed 16-bit linear PCM samples."""

__all__ = ["FloatAudio", "Pcm16Audio"]
