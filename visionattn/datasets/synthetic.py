"""In-memory synthetic training sets: GPU throughput and scaling measurements without a dataset on disk.

Both readers generate a small pool of distinct samples once (seeded, so every process of a
distributed run builds the same pool) and serve ``length`` items from it, item ``i`` being pool
sample ``i % pool``. Items have exactly the format of the real readers, so any recipe trains on
them by swapping ``train_dataloader.dataset``:

- :class:`SyntheticClassification`: as ``ImageNetFolder``, ``dict(inputs=uint8 (3, H, W),
  data_samples=dict(label=int))``. Each class has its own smooth colour pattern; an image is its
  class pattern plus per-image noise, so the loss falls as a network learns.
- :class:`SyntheticStereo`: as the stereo readers, ``dict(inputs=uint8 (2, 3, H, W) [left, right],
  data_samples=dict(disp, valid, disp_right, valid_right))`` with (1, H, W) float32 disparities and
  bool masks. A pair is one random texture seen from two views with a constant disparity ``d``
  per pair: ``right(x) = left(x - d)``; ``valid`` marks the left pixels whose match is inside the
  right image, ``valid_right`` the right pixels whose match is inside the left one.

There is no augmentation: the item of an index never changes, which is what a measurement of
throughput or a one-GPU versus several-GPU comparison needs.
"""
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..registry import DATASETS


def _check_positive(dataset: str, **values) -> None:
    bad = {k: v for k, v in values.items() if not (isinstance(v, int) and v >= 1)}
    if bad:
        raise ValueError(f"{dataset}: {', '.join(f'{k}={v!r}' for k, v in bad.items())} must be integers >= 1")


def _smooth_noise(gen: torch.Generator, n: int, channels: int, h: int, w: int, cells: int) -> torch.Tensor:
    """(n, channels, h, w) values in [0, 1]: uniform noise on a ``cells`` x ``cells`` grid, upsampled."""
    coarse = torch.rand(n, channels, cells, cells, generator=gen)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


@DATASETS.register_module()
class SyntheticClassification(Dataset):
    """Class-patterned random images held in memory (module docstring).

    Args:
        length: items per epoch (``len(dataset)``).
        num_classes: labels ``0 .. num_classes - 1``; pool sample ``j`` has label ``j % num_classes``.
        input_size: image side, or (height, width).
        pool: distinct images generated (memory: pool x 3 x H x W bytes).
        noise: amplitude (0-255 units) of the per-image noise on top of the class pattern.
        seed: seed of the generator (same pool in every process).
    """

    def __init__(self, length: int = 1_000_000, num_classes: int = 1000, input_size=224, pool: int = 256,
                 noise: float = 48.0, seed: int = 0):
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        _check_positive("SyntheticClassification", length=length, num_classes=num_classes, pool=pool, height=h, width=w)
        self.length, self.num_classes = length, num_classes
        gen = torch.Generator().manual_seed(seed)
        patterns = _smooth_noise(gen, min(num_classes, pool), 3, h, w, cells=4) * 255.0
        self.labels = torch.arange(pool) % num_classes
        images = patterns[self.labels % len(patterns)] + noise * (torch.rand(pool, 3, h, w, generator=gen) - 0.5)
        self.images = images.round().clamp(0, 255).to(torch.uint8)  # (pool, 3, H, W)

    @property
    def metainfo(self) -> Dict:
        """Saved by mmengine in checkpoints and handed to metrics as ``dataset_meta``."""
        return dict(classes=tuple(f"class_{i}" for i in range(self.num_classes)))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        j = index % len(self.images)
        return dict(inputs=self.images[j], data_samples=dict(label=int(self.labels[j])))


@DATASETS.register_module()
class SyntheticStereo(Dataset):
    """Random-texture stereo pairs with exact constant disparities, held in memory (module docstring).

    Args:
        length: items per epoch.
        crop_size: (height, width) of every pair (MatchStereo trains on multiples of 32, >= 192).
        disparity_range: (min, max) integer disparity of a pair, drawn uniformly; max < width.
        pool: distinct pairs generated (memory: pool x 2 x 3 x H x W bytes plus the float32 maps).
        seed: seed of the generator (same pool in every process).
    """

    def __init__(self, length: int = 1_000_000, crop_size: Sequence[int] = (320, 736),
                 disparity_range: Sequence[int] = (4, 64), pool: int = 32, seed: int = 0):
        h, w = (int(s) for s in crop_size)
        lo, hi = (int(d) for d in disparity_range)
        _check_positive("SyntheticStereo", length=length, pool=pool, height=h, width=w)
        if not 0 <= lo <= hi < w:
            raise ValueError(f"SyntheticStereo: disparity_range {tuple(disparity_range)} must satisfy "
                             f"0 <= min <= max < width ({w})")
        self.length, self.disparity_range = length, (lo, hi)
        gen = torch.Generator().manual_seed(seed)
        disps = torch.randint(lo, hi + 1, (pool,), generator=gen)
        texture = (_smooth_noise(gen, pool, 3, h, w + hi, cells=24) * 0.7
                   + torch.rand(pool, 3, h, w + hi, generator=gen) * 0.3) * 255.0
        texture = texture.round().clamp(0, 255).to(torch.uint8)
        x = torch.arange(w)
        pairs, disp, valid, valid_right = [], [], [], []
        for t, d in zip(texture, disps.tolist()):
            # left(x) = texture(hi + x), right(x) = texture(hi - d + x) = left(x - d)
            pairs.append(torch.stack((t[:, :, hi:hi + w], t[:, :, hi - d:hi - d + w])))
            disp.append(torch.full((1, h, w), float(d)))
            valid.append((x >= d).expand(1, h, w))
            valid_right.append((x + d < w).expand(1, h, w))
        self.pairs = torch.stack(pairs).contiguous()  # (pool, 2, 3, H, W) uint8
        self.disp = torch.stack(disp)  # (pool, 1, H, W) float32; the right view's is the same constant
        self.valid = torch.stack(valid).contiguous()
        self.valid_right = torch.stack(valid_right).contiguous()

    @property
    def metainfo(self) -> Dict:
        return dict(disparity_range=self.disparity_range)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        j = index % len(self.pairs)
        return dict(inputs=self.pairs[j], data_samples=dict(disp=self.disp[j], valid=self.valid[j],
                                                            disp_right=self.disp[j], valid_right=self.valid_right[j]))
