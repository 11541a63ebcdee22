"""Degradations that turn a clean slice into a low-quality one, for self-made training pairs.

Each is a callable ``deg(image, rng) -> image`` on a 2-D float64 array in physical units (HU for
CT, PET activity, MRI intensity) with ``rng`` a ``numpy.random.Generator``; :class:`Compose` chains
them and :class:`Degrade` applies one with a fixed seed (so a pair is reproducible per index).
"""
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..registry import DEGRADATIONS, TRANSFORMS


@DEGRADATIONS.register_module()
@dataclass
class KSpaceTruncation:
    """MRI x``scale`` super-resolution input: keep the central 1/scale of k-space on each axis
    (zero-filled, same matrix size), as IXI's Restore-RWKV pairs; returns the magnitude image."""
    scale: float = 4.0

    def __call__(self, image: np.ndarray, rng=None) -> np.ndarray:
        if self.scale < 1:
            raise ValueError(f"k-space truncation scale must be >= 1; got {self.scale}")
        k = np.fft.fftshift(np.fft.fft2(image))
        mask = np.zeros(image.shape, dtype=bool)
        (h, w), s = image.shape, self.scale
        kh, kw = max(1, int(round(h / s))), max(1, int(round(w / s)))
        mask[(h - kh) // 2:(h - kh) // 2 + kh, (w - kw) // 2:(w - kw) // 2 + kw] = True
        return np.abs(np.fft.ifft2(np.fft.ifftshift(k * mask)))


@DEGRADATIONS.register_module()
@dataclass
class LowDoseCTNoise:
    """CT dose reduction to ``dose_fraction`` of the full dose (image-domain approximation).

    Quantum noise variance scales with 1/dose, so going from full dose (noise std ``full_dose_sigma``
    HU) to a fraction f adds zero-mean noise of std ``full_dose_sigma * sqrt(1/f - 1)``. CT noise is
    spatially correlated: white Gaussian noise is low-passed by a Gaussian of ``correlation`` pixels
    (then rescaled to the target std). This is an approximation of a sinogram-domain Poisson
    simulation, documented as such; a projection-domain simulator is not implemented.
    """
    dose_fraction: float = 0.25
    full_dose_sigma: float = 10.0
    correlation: float = 0.8

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not 0 < self.dose_fraction <= 1:
            raise ValueError(f"dose_fraction must be in (0, 1]; got {self.dose_fraction}")
        import cv2

        std = self.full_dose_sigma * np.sqrt(1.0 / self.dose_fraction - 1.0)
        noise = rng.standard_normal(image.shape)
        if self.correlation > 0:
            noise = cv2.GaussianBlur(noise, (0, 0), self.correlation)
            noise /= noise.std() + 1e-12
        return image + std * noise


@DEGRADATIONS.register_module()
@dataclass
class PETCountSubsampling:
    """PET dose reduction factor ``drf``: the image (activity) times ``counts_per_unit`` is the mean
    of Poisson counts; keeping each count with probability 1/drf (binomial thinning) and rescaling
    by drf gives the low-dose image in the same units."""
    drf: float = 12.0
    counts_per_unit: float = 50.0

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.drf < 1:
            raise ValueError(f"dose reduction factor must be >= 1; got {self.drf}")
        counts = rng.poisson(np.clip(image, 0, None) * self.counts_per_unit)
        kept = rng.binomial(counts, 1.0 / self.drf)
        return kept * self.drf / self.counts_per_unit


@DEGRADATIONS.register_module()
@dataclass
class Compose:
    steps: Sequence[Callable]

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for step in self.steps:
            image = step(image, rng)
        return image


def build_degradation(cfg) -> Callable:
    """A degradation from a callable, a dict(type=..., **kwargs) or a list of those (composed)."""
    if callable(cfg):
        return cfg
    if isinstance(cfg, (list, tuple)):
        return Compose([build_degradation(c) for c in cfg])
    cfg = dict(cfg)
    name = cfg.pop("type", None)
    if name not in DEGRADATIONS.module_dict:
        raise ValueError(f"unknown degradation {name!r}; choose from {sorted(DEGRADATIONS.module_dict)}")
    return DEGRADATIONS.get(name)(**cfg)


@TRANSFORMS.register_module()
class Degrade:
    """mmengine-style transform: ``results['lq'] = degradation(results['gt'])`` with a fixed seed
    (offset by ``results['index']`` when present, so every sample differs but is reproducible)."""

    def __init__(self, degradation, seed: int = 0):
        self.degradation = build_degradation(degradation)
        self.seed = seed

    def __call__(self, results: dict) -> dict:
        rng = np.random.default_rng([self.seed, int(results.get("index", 0))])
        results["lq"] = self.degradation(results["gt"], rng)
        return results
