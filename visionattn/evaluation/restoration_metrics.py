"""Restoration metrics, one implementation per protocol, each named for it.

Restore-RWKV medical protocol (``medical_*``), per 2-D slice in physical units:
  both images denormalised from [0, 1] with the modality's training window, truncated to its test
  window (CT [-160, 240] HU); ``data_range = gt.max() - gt.min()`` of that slice;
  PSNR = 10 log10(data_range^2 / MSE); SSIM with an 11-tap Gaussian (sigma 1.5), ZERO "same"
  padding and the mean over the FULL map, C1 = (0.01 data_range)^2, C2 = (0.03 data_range)^2;
  RMSE = sqrt(MSE) in physical units. Averages are over slices.

BasicSR protocol (``basicsr_*``): uint8-range images [0, 255] (H, W[, C]) in BGR order, optional
``crop_border`` pixels removed on every side, optional BT.601 studio-swing Y channel
(16 + 65.481 R + 128.553 G + 24.966 B, not rounded), float64; PSNR peak 255; SSIM with the cv2
11-tap Gaussian (sigma 1.5) and the VALID region only ([5:-5, 5:-5]), mean over channels.

Ours because no upstream metric fits: the medical protocol needs physical-unit windows and a
per-slice data range, which mmagic's PSNR/SSIM (fixed 8-bit peak) do not have; the BasicSR protocol
is also mmagic's, but mmagic is not a dependency of this library, so it is implemented here once,
checked against BasicSR's numbers in the tests.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric

from ..datasets.intensity import window
from ..registry import METRICS


# --- Restore-RWKV medical protocol -----------------------------------------------------------

def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def medical_ssim(pred: torch.Tensor, gt: torch.Tensor, data_range: float) -> float:
    """SSIM of two (H, W) slices, zero 'same' padding, mean over the full map."""
    x, y = pred.double()[None, None], gt.double()[None, None]
    win = _gaussian_window().to(x.device)
    conv = lambda t: F.conv2d(t, win, padding=5)  # noqa: E731
    mu_x, mu_y = conv(x), conv(y)
    var_x, var_y = conv(x * x) - mu_x ** 2, conv(y * y) - mu_y ** 2
    cov = conv(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().item()


def medical_psnr_ssim_rmse(pred: torch.Tensor, gt: torch.Tensor) -> Dict[str, float]:
    """Metrics of one (H, W) slice pair already in physical units and test-window truncated."""
    pred, gt = pred.double(), gt.double()
    data_range = (gt.max() - gt.min()).item()
    mse = ((pred - gt) ** 2).mean().item()
    psnr = float("inf") if mse == 0 else 10 * np.log10(data_range ** 2 / mse)
    return dict(psnr=psnr, ssim=medical_ssim(pred, gt, data_range), rmse=float(np.sqrt(mse)))


def to_physical(x: torch.Tensor, modality) -> torch.Tensor:
    """[0, 1] network output -> physical units (training window) -> truncated to the test window."""
    train_w, test_w = window(modality, "train"), window(modality, "test")
    return train_w.denormalize(x.double()).clamp(test_w.lo, test_w.hi)


# --- BasicSR protocol ------------------------------------------------------------------------

def bgr_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 studio-swing luma of a BGR image in [0, 255] -> (H, W, 1) in [16, 235] (not rounded)."""
    b, g, r = img[..., 0], img[..., 1], img[..., 2]
    return (16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0)[..., None]


def _prepare(img: np.ndarray, crop_border: int, y_channel: bool) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 2:
        img = img[..., None]
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel and img.shape[-1] == 3:
        img = bgr_to_y(img)
    return img


def basicsr_psnr(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    a, b = _prepare(img, crop_border, y_channel), _prepare(img2, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def basicsr_ssim(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    import cv2

    a, b = _prepare(img, crop_border, y_channel), _prepare(img2, crop_border, y_channel)
    k = cv2.getGaussianKernel(11, 1.5)
    win = np.outer(k, k.transpose())
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for c in range(a.shape[-1]):
        x, y = a[..., c], b[..., c]
        f = lambda t: cv2.filter2D(t, -1, win)[5:-5, 5:-5]  # noqa: E731  (valid region)
        mu_x, mu_y = f(x), f(y)
        var_x, var_y, cov = f(x * x) - mu_x ** 2, f(y * y) - mu_y ** 2, f(x * y) - mu_x * mu_y
        m = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        vals.append(m.mean())
    return float(np.mean(vals))


# --- mmengine metrics ------------------------------------------------------------------------

@METRICS.register_module()
class MedicalRestorationMetric(BaseMetric):
    """Restore-RWKV protocol: per-slice PSNR/SSIM/RMSE in physical units, averaged per modality and
    overall. Expects predictions/GT in [0, 1] normalised with each sample's ``modality`` window."""

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for s in data_samples:
            mod = s["modality"] if s["modality"] in ("CT", "PET", "MRI") else tuple(s["window"])
            pred, gt = to_physical(s["pred"][0].cpu(), mod), to_physical(s["gt"][0].cpu(), mod)
            self.results.append(dict(modality=str(s["modality"]), **medical_psnr_ssim_rmse(pred, gt)))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        out = {}
        for key in ("psnr", "ssim", "rmse"):
            out[key] = float(np.mean([r[key] for r in results]))
            for mod in sorted({r["modality"] for r in results}):
                out[f"{mod}/{key}"] = float(np.mean([r[key] for r in results if r["modality"] == mod]))
        return out


@METRICS.register_module()
class BasicSRMetric(BaseMetric):
    """BasicSR protocol on [0, 1] predictions: scaled to [0, 255] and rounded (8-bit), RGB tensors
    turned to BGR; ``crop_border`` and ``y_channel`` as BasicSR."""

    def __init__(self, crop_border: int = 0, y_channel: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.crop_border, self.y_channel = crop_border, y_channel

    @staticmethod
    def _to_uint8_bgr(t: torch.Tensor) -> np.ndarray:
        arr = (t.detach().cpu().clamp(0, 1).permute(1, 2, 0).double().numpy() * 255.0).round()
        return arr[..., ::-1] if arr.shape[-1] == 3 else arr

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for s in data_samples:
            p, g = self._to_uint8_bgr(s["pred"]), self._to_uint8_bgr(s["gt"])
            self.results.append(dict(psnr=basicsr_psnr(p, g, self.crop_border, self.y_channel),
                                     ssim=basicsr_ssim(p, g, self.crop_border, self.y_channel)))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        return {k: float(np.mean([r[k] for r in results])) for k in ("psnr", "ssim")}
