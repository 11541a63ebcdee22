"""Per-modality intensity windows (configuration, not constants in code).

``IntensityWindow(lo, hi)`` clips to [lo, hi] and maps linearly to [0, 1]; ``denormalize`` maps
back. ``MODALITY_PRESETS`` holds the Restore-RWKV values (its sheet): training ranges and the test
windows used by its metrics (CT abdomen window [-160, 240] HU). Configs may pass their own.
"""
from dataclasses import dataclass
from typing import Dict, Tuple, Union

import numpy as np


@dataclass(frozen=True)
class IntensityWindow:
    lo: float
    hi: float

    def __post_init__(self):
        if not self.hi > self.lo:
            raise ValueError(f"intensity window needs hi > lo; got ({self.lo}, {self.hi})")

    def normalize(self, x):
        return (np.clip(x, self.lo, self.hi) - self.lo) / (self.hi - self.lo) if isinstance(x, np.ndarray) \
            else (x.clamp(self.lo, self.hi) - self.lo) / (self.hi - self.lo)

    def denormalize(self, x):
        y = x * (self.hi - self.lo) + self.lo
        return np.clip(y, self.lo, self.hi) if isinstance(y, np.ndarray) else y.clamp(self.lo, self.hi)


# modality -> dict(train=(lo, hi) normalisation range, test=(lo, hi) window applied before metrics)
MODALITY_PRESETS: Dict[str, Dict[str, Tuple[float, float]]] = {
    "CT": dict(train=(-1024.0, 3072.0), test=(-160.0, 240.0)),
    "PET": dict(train=(0.0, 20.0), test=(0.0, 20.0)),
    "MRI": dict(train=(0.0, 4095.0), test=(0.0, 4095.0)),
}


def window(spec: Union[str, Tuple[float, float], IntensityWindow], kind: str = "train") -> IntensityWindow:
    """An IntensityWindow from a modality name (preset), a (lo, hi) pair or a window."""
    if isinstance(spec, IntensityWindow):
        return spec
    if isinstance(spec, str):
        if spec not in MODALITY_PRESETS:
            raise ValueError(f"unknown modality {spec!r}; presets: {sorted(MODALITY_PRESETS)} (or pass (lo, hi))")
        return IntensityWindow(*MODALITY_PRESETS[spec][kind])
    lo, hi = spec
    return IntensityWindow(float(lo), float(hi))
