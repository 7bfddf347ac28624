"""Types for the parts of python-soxr we use (soxr ships annotations but no py.typed marker).

Output samples have the input's dtype (float32 in, float32 out), which the type variable says.
"""

from typing import TypeVar

import numpy as np
from numpy.typing import DTypeLike, NDArray

_Sample = TypeVar("_Sample", np.float32, np.float64, np.int16, np.int32)

class ResampleStream:
    def __init__(self, in_rate: float, out_rate: float, num_channels: int,
                 dtype: DTypeLike = "float32", quality: str = "HQ", vr: bool = False) -> None: ...
    def resample_chunk(self, x: NDArray[_Sample], last: bool = False) -> NDArray[_Sample]: ...
    def num_clips(self) -> int: ...
    def delay(self) -> float: ...
    def clear(self) -> None: ...

def resample(
    x: NDArray[_Sample], in_rate: float, out_rate: float, quality: str = "HQ"
) -> NDArray[_Sample]: ...
