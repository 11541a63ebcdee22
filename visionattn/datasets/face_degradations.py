"""The extending degradation model (EDM) of RestoreFormer++, as seeded, composable pieces.

Two kinds of pieces:

- **Degradations** (registered in ``DEGRADATIONS``): ``deg(image, rng) -> image`` on one image,
  an (H, W, 3) float32 array in [0, 1], **BGR** (OpenCV's order, as ``cv2.imread`` gives it and as
  the official pipeline works; JPEG and grey conversion depend on the order). ``rng`` is a
  ``numpy.random.Generator``: the same generator state gives the same output. Chain them with a
  list (``build_degradation([...])`` composes).
  :class:`RandomGaussianBlur` (isotropic / anisotropic kernels), :class:`Haze`,
  :class:`RandomDownsample` (down by a random factor, inner degradations at the low resolution,
  back up), :class:`GaussianNoise`, :class:`JPEGCompression`, :class:`UnevenMix` (a square patch
  from a second, independently degraded copy).
- **Pair transforms** (registered in ``TRANSFORMS``): ``t(results) -> results`` on the dict a face
  dataset builds: ``gt`` (the clean image, as above), optionally ``lq`` and ``components`` (a (3, 4)
  float array of left-eye, right-eye and mouth boxes ``x1, y1, x2, y2`` in pixels), and ``rng``.
  :class:`FaceFlip`, :class:`RandomShift` (misalignment; moves GT, LQ and boxes alike),
  :class:`MakeLQ` (``lq = degradation(gt)``), :class:`RandomGrayscale` (LQ and, by default, GT),
  :class:`Quantize` (8-bit rounding).

RestoreFormer++'s training pipeline (values of its official configuration; the 512x512 design size):
horizontal flip p 0.5 -> shift p 0.2 by up to +-32 px (symmetric padding) -> [blur with a 39 or
41 px kernel, iso/aniso p 0.5/0.5, sigma in [0.1, 10], angle in [-pi, pi] -> haze p 0.008, alpha in
[0.75, 0.95] -> downsample by U[0.8, 8] (bilinear) -> Gaussian noise sigma U[0, 20] (8-bit units) ->
JPEG quality U[60, 100] -> bilinear back to full size], done twice and mixed through a square patch
of 128-256 px with p 0.1 -> grey p 0.008 (GT too) -> LQ rounded to 8 bits. ``configs/_base_/datasets/
ffhq_restoreformerpp.py`` writes it out; ``tools/show_degradations.py`` draws a gallery.

Differences from the official code, on purpose: every random draw comes from the ``rng`` argument
(the official code mixes numpy's, Python's and torch's global generators), so a pipeline is
reproducible from one seed; a flip mirrors the component boxes exactly as the official code
does (``x -> W + 1 - x`` on box corners); the uneven-mix patch is given as a fraction of the side
(0.25-0.5 = 128-256 px at 512) so that smaller images work too.
"""
import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from ..registry import DEGRADATIONS, TRANSFORMS
from .degradations import build_degradation

Range = Tuple[float, float]


def _check_range(name: str, value: Sequence[float], lo: float = -math.inf, hi: float = math.inf) -> Range:
    if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
        raise ValueError(f"{name} must be (low, high) with {lo} <= low <= high <= {hi}; got {tuple(value)}")
    return float(value[0]), float(value[1])


def _check_prob(name: str, p: float) -> float:
    if not 0 <= p <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1]; got {p}")
    return float(p)


def _check_image(image: np.ndarray, what: str) -> None:
    if image.ndim != 3 or image.dtype != np.float32:
        raise ValueError(f"{what} expects an (H, W, C) float32 image in [0, 1]; got {image.dtype} {image.shape}")


# ---------------------------------------------------------------------------------------------
# Blur kernels


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """A (size, size) bivariate Gaussian kernel summing to 1.

    Covariance ``R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T`` (standard deviations in pixels,
    ``theta`` the angle of the x axis in radians); the kernel is sampled on the integer grid
    centred on the middle pixel. ``sigma_x == sigma_y`` (any theta) is the isotropic kernel.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"blur kernel size must be a positive odd number; got {size}")
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"blur sigmas must be > 0; got ({sigma_x}, {sigma_y})")
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ rot.T
    inv = np.linalg.inv(cov)
    r = np.arange(size) - size // 2
    xx, yy = np.meshgrid(r, r)  # xx varies along columns (x), yy along rows (y)
    xy = np.stack([xx, yy], -1).astype(np.float64)  # (size, size, 2)
    kernel = np.exp(-0.5 * np.einsum("...i,ij,...j->...", xy, inv, xy))
    return (kernel / kernel.sum()).astype(np.float32)


@DEGRADATIONS.register_module()
class RandomGaussianBlur:
    """Blur with a random Gaussian kernel (BasicSR's ``random_mixed_kernels`` with iso/aniso kinds).

    Args:
        kernel_size: (low, high): the size is an odd number drawn uniformly from that range
            (default (39, 41): 39 or 41, the official ``randint(19, 20) * 2 + 1``).
        kernel_types / kernel_probs: ``'iso'`` (one sigma, no rotation) and ``'aniso'`` (two
            sigmas and an angle), with their probabilities.
        sigma: range of the standard deviations in pixels (each axis drawn separately for aniso).
        rotation: range of the anisotropic kernel's angle, radians.
    Filtering is ``cv2.filter2D`` (reflect-101 borders), as the official pipeline.
    """

    def __init__(self, kernel_size: Range = (39, 41), kernel_types: Sequence[str] = ("iso", "aniso"),
                 kernel_probs: Sequence[float] = (0.5, 0.5), sigma: Range = (0.1, 10.0),
                 rotation: Range = (-math.pi, math.pi)):
        lo, hi = _check_range("kernel_size", kernel_size, 1)
        self.sizes = [k for k in range(int(lo), int(hi) + 1) if k % 2 == 1]
        if not self.sizes:
            raise ValueError(f"kernel_size {tuple(kernel_size)} holds no odd size")
        unknown = sorted(set(kernel_types) - {"iso", "aniso"})
        if unknown or len(kernel_types) != len(kernel_probs) or not kernel_types:
            raise ValueError(f"kernel_types must be a non-empty list of 'iso'/'aniso' with one probability each; "
                             f"got {list(kernel_types)} / {list(kernel_probs)}")
        probs = np.asarray(kernel_probs, dtype=np.float64)
        if (probs < 0).any() or probs.sum() <= 0:
            raise ValueError(f"kernel_probs must be >= 0 and not all 0; got {list(kernel_probs)}")
        self.kernel_types, self.kernel_probs = list(kernel_types), probs / probs.sum()
        self.sigma = _check_range("sigma", sigma, 1e-6)
        self.rotation = _check_range("rotation", rotation)

    def sample_kernel(self, rng: np.random.Generator) -> np.ndarray:
        size = self.sizes[int(rng.integers(len(self.sizes)))]
        kind = self.kernel_types[int(rng.choice(len(self.kernel_types), p=self.kernel_probs))]
        sx = rng.uniform(*self.sigma)
        if kind == "iso":
            return gaussian_kernel(size, sx, sx, 0.0)
        return gaussian_kernel(size, sx, rng.uniform(*self.sigma), rng.uniform(*self.rotation))

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return cv2.filter2D(image, -1, self.sample_kernel(rng))


# ---------------------------------------------------------------------------------------------
# Other single-image degradations


@DEGRADATIONS.register_module()
class Haze:
    """With probability ``prob``: ``alpha * image + (1 - alpha)`` (a white veil), alpha ~ U(alpha)."""

    def __init__(self, prob: float = 0.008, alpha: Range = (0.75, 0.95)):
        self.prob, self.alpha = _check_prob("prob", prob), _check_range("alpha", alpha, 0, 1)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.uniform() >= self.prob:
            return image
        alpha = rng.uniform(*self.alpha)
        return (image * alpha + (1.0 - alpha)).astype(np.float32)


@DEGRADATIONS.register_module()
class RandomDownsample:
    """Downsample by a factor ~ U(scale) (``cv2.resize`` bilinear to ``(int(W // s), int(H // s))``,
    as the official code), apply ``inner`` degradations at that size, resize back to (H, W)."""

    def __init__(self, scale: Range = (0.8, 8.0), inner: Optional[Sequence] = None):
        self.scale = _check_range("scale", scale, 1e-3)
        self.inner = build_degradation(list(inner)) if inner else None

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        s = rng.uniform(*self.scale)
        size = (max(1, int(w // s)), max(1, int(h // s)))
        out = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        if self.inner is not None:
            out = self.inner(out, rng)
        return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)


@DEGRADATIONS.register_module()
class GaussianNoise:
    """Additive white Gaussian noise, independent per channel, std ~ U(sigma) in 8-bit units
    (divided by 255), then clipped to [0, 1] (BasicSR's ``random_add_gaussian_noise``)."""

    def __init__(self, sigma: Range = (0.0, 20.0)):
        self.sigma = _check_range("sigma", sigma, 0)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        std = rng.uniform(*self.sigma) / 255.0
        noise = rng.standard_normal(image.shape).astype(np.float32) * std
        return np.clip(image + noise, 0, 1).astype(np.float32)


@DEGRADATIONS.register_module()
class JPEGCompression:
    """JPEG round trip through OpenCV at quality ``int(U(quality))`` (the image is clipped to
    [0, 1] and scaled to 8 bits first, as BasicSR's ``random_add_jpg_compression``)."""

    def __init__(self, quality: Range = (60.0, 100.0)):
        self.quality = _check_range("quality", quality, 0, 100)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        quality = int(rng.uniform(*self.quality))
        # 8 bits by rounding, as OpenCV's own float -> uint8 conversion inside imencode
        pixels = np.round(np.clip(image, 0, 1) * 255.0).astype(np.uint8)
        ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
        out = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255.0
        return out.reshape(image.shape)


@DEGRADATIONS.register_module()
class UnevenMix:
    """Spatially uneven degradation: with probability ``prob``, degrade the image twice
    independently and take a random square patch (side ~ U(patch_fraction) x the shorter side)
    from the first copy, the rest from the second; otherwise degrade once.

    The official patch is 128-256 px on 512 px faces: ``patch_fraction=(0.25, 0.5)``.
    """

    def __init__(self, degradation, prob: float = 0.1, patch_fraction: Range = (0.25, 0.5)):
        self.degradation = build_degradation(degradation)
        self.prob = _check_prob("prob", prob)
        self.patch_fraction = _check_range("patch_fraction", patch_fraction, 0, 1)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        first = self.degradation(image, rng)
        if rng.uniform() >= self.prob:
            return first
        second = self.degradation(image, rng)
        h, w = image.shape[:2]
        lo, hi = (max(1, int(round(f * min(h, w)))) for f in self.patch_fraction)
        size = int(rng.integers(lo, hi + 1))
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        out = second.copy()
        out[y:y + size, x:x + size] = first[y:y + size, x:x + size]
        return out


# ---------------------------------------------------------------------------------------------
# Pair transforms (results dict: gt, lq, components, rng)


@TRANSFORMS.register_module()
class FaceFlip:
    """Horizontal flip of ``gt`` (and ``lq`` if present) with probability ``prob``; the component
    boxes are mirrored (``x -> W + 1 - x`` on the corners, the official rule) and the eyes swapped."""

    def __init__(self, prob: float = 0.5):
        self.prob = _check_prob("prob", prob)

    def __call__(self, results: dict) -> dict:
        if results["rng"].uniform() >= self.prob:
            return results
        for key in ("gt", "lq"):
            if key in results:
                results[key] = np.ascontiguousarray(results[key][:, ::-1])
        boxes = results.get("components")
        if boxes is not None:
            w = results["gt"].shape[1]
            mirrored = boxes.copy()
            mirrored[:, 0], mirrored[:, 2] = w + 1 - boxes[:, 2], w + 1 - boxes[:, 0]
            results["components"] = mirrored[[1, 0, 2]]  # the left eye is now on the right
        return results


@TRANSFORMS.register_module()
class RandomShift:
    """Misalignment: with probability ``prob``, shift the image content by a whole number of
    ``unit`` px, up to ``max_shift`` px along each axis (independently, uniformly), filling from a
    symmetric (mirror) padding; boxes move with the content. Applied before the LQ is made, so GT
    and LQ stay aligned with each other (both are off the canonical face alignment)."""

    def __init__(self, prob: float = 0.2, max_shift: int = 32, unit: int = 1):
        self.prob = _check_prob("prob", prob)
        if max_shift < 0 or unit < 1:
            raise ValueError(f"max_shift must be >= 0 and unit >= 1; got {max_shift}, {unit}")
        self.max_shift, self.unit = int(max_shift), int(unit)

    def __call__(self, results: dict) -> dict:
        rng = results["rng"]
        if rng.uniform() >= self.prob:
            return results
        steps = self.max_shift // self.unit
        dy, dx = (int(rng.integers(0, 2 * steps + 1)) * self.unit for _ in range(2))
        pad = steps * self.unit
        for key in ("gt", "lq"):
            if key in results:
                img = results[key]
                h, w = img.shape[:2]
                padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
                results[key] = np.ascontiguousarray(padded[dy:dy + h, dx:dx + w])
        boxes = results.get("components")
        if boxes is not None:
            results["components"] = boxes + np.array([pad - dx, pad - dy, pad - dx, pad - dy], dtype=boxes.dtype)
        return results


@TRANSFORMS.register_module()
class MakeLQ:
    """``results['lq'] = degradation(results['gt'], results['rng'])``; ``degradation`` is a
    degradation, a ``dict(type=...)`` or a list of them (composed in order)."""

    def __init__(self, degradation):
        self.degradation = build_degradation(degradation)

    def __call__(self, results: dict) -> dict:
        _check_image(results["gt"], "MakeLQ")
        results["lq"] = np.ascontiguousarray(self.degradation(results["gt"], results["rng"]), dtype=np.float32)
        return results


@TRANSFORMS.register_module()
class RandomGrayscale:
    """With probability ``prob``: ``lq`` to grey (``cv2.COLOR_BGR2GRAY``, tiled to 3 channels), and
    ``gt`` too when ``gt_too`` (the official ``gt_gray=True``: the network learns to keep it grey)."""

    def __init__(self, prob: float = 0.008, gt_too: bool = True):
        self.prob, self.gt_too = _check_prob("prob", prob), gt_too

    @staticmethod
    def _gray(img: np.ndarray) -> np.ndarray:
        return np.repeat(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None], 3, axis=2)

    def __call__(self, results: dict) -> dict:
        if results["rng"].uniform() >= self.prob:
            return results
        keys = ("lq", "gt") if self.gt_too else ("lq",)
        for key in keys:
            if key in results:
                results[key] = self._gray(results[key])
        return results


@TRANSFORMS.register_module()
class Quantize:
    """Round ``keys`` to 8 bits: ``clip(round(x * 255), 0, 255) / 255`` (the LQ of the official
    pipeline, which is then saved or fed as an 8-bit image would be)."""

    def __init__(self, keys: Sequence[str] = ("lq",)):
        self.keys = tuple(keys)

    def __call__(self, results: dict) -> dict:
        for key in self.keys:
            if key in results:
                results[key] = (np.clip(np.round(results[key] * 255.0), 0, 255) / 255.0).astype(np.float32)
        return results
