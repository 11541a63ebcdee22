"""Face-restoration metrics beyond PSNR/SSIM: LPIPS, identity distance, FID.

PSNR and SSIM of face restoration are :class:`~visionattn.evaluation.restoration_metrics.BasicSRMetric`
with ``crop_border=0`` and ``y_channel=False`` (all three channels, 8-bit, peak 255), the protocol of
RestoreFormer/GFPGAN's ``cal_psnr_ssim.py``.

Every metric here first rounds predictions and GT to 8 bits (the papers score saved PNG files),
reads ``pred`` and ``gt`` (3, H, W) RGB in [0, 1] from each sample, and loads its network from a
file the user points at (nothing is downloaded; a missing file raises FileNotFoundError with the
address of the official one). They need the ``face`` extra (``lpips``, ``pytorch-fid``).

- :class:`LPIPSMetric` (``lpips``): LPIPS-VGG (lpips v0.1 heads, torchvision VGG16 trunk) on RGB
  images mapped to [-1, 1], mean over images. (RestoreFormer's script feeds BGR images to the
  taming-transformers LPIPS in [0, 1] and in [-1, 1]; ``bgr=True`` reproduces the channel order.)
- :class:`IdentityDistanceMetric` (``idd``): RestoreFormer's ``cal_identity_distance.py``: grey =
  0.2989 c0 + 0.5870 c1 + 0.1140 c2 with the channels in **BGR** order (as the script applies the
  RGB weights to OpenCV's BGR arrays; ``channel_order='rgb'`` for the true luma), bilinear to
  128 x 128, values in [0, 1], ArcFace ResNet-18 embeddings, distance ``arccos(cos)`` in radians,
  mean over images.
- :class:`FIDMetric` (``fid``): pytorch-fid's InceptionV3 (the TF-ported FID weights
  ``pt_inception-2015-12-05-6726825d.pth``), bilinear resize to 299, pool3 2048-d features of the
  predictions against reference statistics from a file (BasicSR ``.pth`` with ``mean``/``cov``, e.g.
  ``inception_FFHQ_512-f7b384ab.pth``, which RestoreFormer uses for every test set; or
  pytorch-fid ``.npz`` with ``mu``/``sigma``); Frechet distance by pytorch-fid (scipy ``sqrtm``).
"""
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union
from unittest import mock

import numpy as np
import torch
from mmengine.evaluator import BaseMetric

from ..extras import require_extra
from ..registry import METRICS

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE}"
FFHQ_STATS_SOURCE = ("inception_FFHQ_512-f7b384ab.pth, listed with the FFHQ inception statistics in BasicSR's "
                     "docs/ModelZoo.md (XPixelGroup/BasicSR)")


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] image -> the same image rounded to 8 bits (still float in [0, 1])."""
    return (x.detach().float().clamp(0, 1) * 255.0).round() / 255.0


def _pairs(data_samples: Sequence[dict], metric: str):
    for s in data_samples:
        if "gt" not in s:
            raise ValueError(f"{metric} compares with the ground truth but sample {s.get('name', '?')!r} has no 'gt'; "
                             f"use a paired test set (lq/ + gt/)")
        yield to_8bit(s["pred"]), to_8bit(s["gt"])


@METRICS.register_module()
class LPIPSMetric(BaseMetric):
    """Mean LPIPS-VGG of predictions vs GT (module docstring). ``vgg_path``: torchvision's
    ``vgg16-397923af.pth`` (default: its torch-hub cache path)."""

    default_prefix = ""

    def __init__(self, vgg_path: Optional[str] = None, bgr: bool = False, **kwargs):
        super().__init__(**kwargs)
        from ..models.restoration.lpips_vgg import build_lpips_vgg

        self.net = build_lpips_vgg(vgg_path)
        self.bgr = bgr

    @torch.no_grad()
    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for pred, gt in _pairs(data_samples, "LPIPSMetric"):
            self.net.to(pred.device)
            x, y = pred[None] * 2 - 1, gt[None] * 2 - 1
            if self.bgr:
                x, y = x.flip(1), y.flip(1)
            self.results.append(float(self.net(x, y).item()))

    def compute_metrics(self, results: List[float]) -> Dict[str, float]:
        return dict(lpips=float(np.mean(results)))


@METRICS.register_module()
class IdentityDistanceMetric(BaseMetric):
    """Mean ArcFace identity distance, radians (module docstring). ``arcface_path``:
    ``arcface_resnet18.pth``; ``arcface_kwargs`` for a smaller stand-in of the same layout."""

    default_prefix = ""

    def __init__(self, arcface_path: str, channel_order: str = "bgr", arcface_kwargs: Optional[dict] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if channel_order not in ("bgr", "rgb"):
            raise ValueError(f"channel_order must be 'bgr' (RestoreFormer's script) or 'rgb'; got {channel_order!r}")
        from ..models.restoration.arcface import load_arcface

        self.net = load_arcface(arcface_path, **(arcface_kwargs or {}))
        self.channel_order = channel_order

    @torch.no_grad()
    def embed(self, image: torch.Tensor) -> np.ndarray:
        from ..models.restoration.arcface import gray_resize

        self.net.to(image.device)
        x = image[None].flip(1) if self.channel_order == "bgr" else image[None]  # RGB tensor -> channel order
        return self.net(gray_resize(x, self.net.input_size))[0].double().cpu().numpy()

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for pred, gt in _pairs(data_samples, "IdentityDistanceMetric"):
            a, b = self.embed(pred), self.embed(gt)
            cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
            self.results.append(math.acos(max(-1.0, min(1.0, cos))))

    def compute_metrics(self, results: List[float]) -> Dict[str, float]:
        return dict(idd=float(np.mean(results)))


def fid_inception_network() -> torch.nn.Module:
    """pytorch-fid's FID Inception (torchvision InceptionV3 with the FID blocks), weights not loaded."""
    inception = require_extra("pytorch_fid.inception")
    with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None):
        return inception.fid_inception_v3()


@contextmanager
def _local_fid_weights(path: Path):
    """pytorch-fid's InceptionV3 reads its weights from ``path`` instead of downloading them."""
    inception = require_extra("pytorch_fid.inception")
    from ..hub import extract_state_dict, read_checkpoint

    state = extract_state_dict(read_checkpoint(path))
    with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: state):
        yield


def load_fid_inception(path: Optional[Union[str, Path]] = None) -> torch.nn.Module:
    """pytorch-fid ``InceptionV3([pool3], resize_input=True, normalize_input=True)`` with the FID weights
    of ``path`` (default: ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``)."""
    path = Path(path) if path is not None else Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights {str(path)!r} not found. Download {FID_WEIGHTS_URL} and pass "
                                f"its path (inception_path=...); nothing is downloaded automatically")
    inception = require_extra("pytorch_fid.inception")
    with _local_fid_weights(path):
        model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                                      normalize_input=True, use_fid_inception=True)
    return model.eval().requires_grad_(False)


def load_fid_statistics(path: Union[str, Path]):
    """(mean (2048,), covariance (2048, 2048)) float64 from a BasicSR ``.pth`` or a pytorch-fid ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID reference statistics {str(path)!r} not found. RestoreFormer and GFPGAN use "
                                f"FFHQ-512 statistics: {FFHQ_STATS_SOURCE}")
    if path.suffix == ".npz":
        with np.load(path) as f:
            return np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    from ..hub import read_checkpoint  # weights-only load with numpy arrays allowed

    stats = read_checkpoint(path)
    if not isinstance(stats, Mapping) or not {"mean", "cov"} <= set(stats):
        raise ValueError(f"{str(path)!r} is not a BasicSR FID statistics file (a dict with 'mean' and 'cov')")
    return np.asarray(stats["mean"], np.float64), np.asarray(stats["cov"], np.float64)


@METRICS.register_module()
class FIDMetric(BaseMetric):
    """FID of the predictions against reference statistics (module docstring).

    Args:
        stats_path: the reference statistics file. inception_path: the FID Inception weights.
        batch_size: images per Inception forward.
    """

    default_prefix = ""

    def __init__(self, stats_path: str, inception_path: Optional[str] = None, batch_size: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.ref_mean, self.ref_cov = load_fid_statistics(stats_path)
        self.net = load_fid_inception(inception_path)
        self.batch_size = batch_size

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) RGB in [0, 1] -> (N, 2048) float64 pool3 features."""
        self.net.to(images.device)
        out = [self.net(images[i:i + self.batch_size])[0].flatten(1) for i in range(0, len(images), self.batch_size)]
        return torch.cat(out).double().cpu().numpy()

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        preds = torch.stack([to_8bit(s["pred"]) for s in data_samples])
        self.results.extend(list(self.features(preds)))

    def compute_metrics(self, results: List[np.ndarray]) -> Dict[str, float]:
        if len(results) < 2:
            raise ValueError(f"FID needs at least 2 images (a covariance); got {len(results)}")
        fid_score = require_extra("pytorch_fid.fid_score")
        feats = np.stack(results)
        mean, cov = feats.mean(0), np.cov(feats, rowvar=False)
        return dict(fid=float(fid_score.calculate_frechet_distance(mean, cov, self.ref_mean, self.ref_cov)))
