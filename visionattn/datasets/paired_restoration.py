"""Paired 2-D slice datasets for image restoration (LQ -> HQ).

One dataset class, three ways to get pairs:
- ``layout='restore_rwkv'``: the official tree ``{root}/{modality}/{split}/{LQ,HQ}/*`` with
  pickled ``.bin`` slices (train) or ``.nii`` volumes (validation/test), several modalities.
- ``lq_dir`` + ``hq_dir``: folders whose files share names (2-D slices, NIfTI volumes sliced along
  ``axis``, or DICOM series folders such as AAPM ``L067/quarter_1mm`` vs ``L067/full_1mm``).
- ``hq_dir`` + ``degradation``: HQ only; LQ made on the fly by a seeded degradation.

Items: ``dict(inputs=(C, H, W) float32 LQ in [0, 1], data_samples=dict(gt=(C, H, W), modality,
name, window))`` after clipping to the modality's training window (config, see ``intensity.py``),
with an optional random ``crop`` (same place in LQ and HQ). ``max_items`` caps the pairs (per
modality with the official layout).
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import DATASETS
from . import medical_io as mio
from .degradations import Degrade
from .intensity import window


def _volume_slices(path: Path, axis: int) -> List[np.ndarray]:
    if path.is_dir():
        return list(mio.read_dicom_series(path))  # (Z, H, W): one slice per image
    if mio.is_nifti(path):
        return mio.nifti_slices(path, axis)
    return [mio.read_slice(path)]


def _entries(folder: Path) -> List[Path]:
    """Readable items of a folder: slices, NIfTI volumes and DICOM series sub-folders, sorted."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {str(folder)!r} does not exist")
    items = [p for p in sorted(folder.iterdir())
             if p.is_dir() or mio.is_nifti(p) or p.suffix.lower() in mio.SLICE_SUFFIXES or p.suffix.lower() in (".dcm", ".ima")]
    if any(p.suffix.lower() in (".dcm", ".ima") for p in items):
        return [folder]  # the folder itself is one DICOM series
    return items


@DATASETS.register_module()
class PairedSliceDataset(Dataset):
    """See the module docstring. ``modality`` is a preset name ('CT', 'PET', 'MRI') or a (lo, hi)
    window; with ``layout='restore_rwkv'`` pass ``modalities`` (the window follows each)."""

    def __init__(self, root: Union[str, Path] = "", layout: Optional[str] = None, split: str = "train",
                 modalities: Sequence[str] = ("MRI",), lq_dir: Optional[str] = None, hq_dir: Optional[str] = None,
                 modality: Union[str, Tuple[float, float]] = "MRI", degradation=None, seed: int = 0,
                 axis: int = 2, crop: Optional[int] = None, max_items: Optional[int] = None, channels: int = 1):
        root = Path(root)
        self.crop, self.channels, self.split = crop, channels, split
        self.degrade = Degrade(degradation, seed) if degradation is not None else None
        self.items: List[Dict] = []  # dict(lq=array or None, hq=array, modality, name)
        if layout == "restore_rwkv":
            for mod in modalities:
                lq_folder = root / mod / split / "LQ"
                start = len(self.items)
                for lq_path in _entries(lq_folder):
                    hq_path = lq_folder.parent / "HQ" / lq_path.name
                    self._add_pairs(lq_path, hq_path, mod, axis)
                if max_items is not None:  # per modality, as the official validation (32 each)
                    del self.items[start + max_items:]
        elif layout is not None:
            raise ValueError(f"unknown layout {layout!r}; use 'restore_rwkv' or lq_dir/hq_dir")
        else:
            if hq_dir is None:
                raise ValueError("pass hq_dir (with lq_dir or a degradation) or layout='restore_rwkv'")
            hq_folder = root / hq_dir
            if lq_dir is None and degradation is None:
                raise ValueError("without lq_dir a degradation is needed to make the LQ images")
            for hq_path in _entries(hq_folder):
                lq_path = (root / lq_dir / hq_path.relative_to(hq_folder)) if lq_dir is not None else None
                if lq_path is not None and hq_path == hq_folder:
                    lq_path = root / lq_dir
                self._add_pairs(lq_path, hq_path, modality, axis)
        if max_items is not None:
            self.items = self.items[:max_items] if layout is None else self.items
        if not self.items:
            raise FileNotFoundError(f"no image pairs found under {str(root)!r} (layout={layout}, lq_dir={lq_dir}, "
                                    f"hq_dir={hq_dir})")

    def _add_pairs(self, lq_path: Optional[Path], hq_path: Path, modality, axis: int) -> None:
        if lq_path is not None and not lq_path.exists():
            raise FileNotFoundError(f"no LQ counterpart {str(lq_path)!r} for {str(hq_path)!r}")
        hq = _volume_slices(hq_path, axis)
        lq = _volume_slices(lq_path, axis) if lq_path is not None else [None] * len(hq)
        if len(lq) != len(hq):
            raise RuntimeError(f"{str(lq_path)!r} has {len(lq)} slices but {str(hq_path)!r} has {len(hq)}")
        base = hq_path.name.split(".")[0]
        for i, (a, b) in enumerate(zip(lq, hq)):
            name = base if len(hq) == 1 else f"{base}_{i:04d}"
            self.items.append(dict(lq=a, hq=b, modality=modality, name=name))

    def __len__(self) -> int:
        return len(self.items)

    def _to_tensor(self, img: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
        t = t.permute(2, 0, 1) if t.dim() == 3 else t[None]
        if t.shape[0] != self.channels:
            raise ValueError(f"image has {t.shape[0]} channels but the dataset was configured with channels="
                             f"{self.channels}")
        return t

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        hq, lq = item["hq"], item["lq"]
        if lq is None:
            lq = self.degrade(dict(gt=hq, index=index))["lq"]
        if lq.shape != hq.shape:
            raise RuntimeError(f"LQ {lq.shape} and HQ {hq.shape} shapes differ for {item['name']}")
        win = window(item["modality"])
        lq_t, hq_t = self._to_tensor(win.normalize(lq)), self._to_tensor(win.normalize(hq))
        if self.crop is not None:
            H, W = hq_t.shape[-2:]
            if H < self.crop or W < self.crop:
                raise ValueError(f"crop {self.crop} is larger than slice {item['name']} ({H}x{W})")
            y = int(torch.randint(0, H - self.crop + 1, (1,)))  # global RNG: seeded by the runner
            x = int(torch.randint(0, W - self.crop + 1, (1,)))
            lq_t = lq_t[:, y:y + self.crop, x:x + self.crop]
            hq_t = hq_t[:, y:y + self.crop, x:x + self.crop]
        meta = dict(gt=hq_t, modality=item["modality"] if isinstance(item["modality"], str) else "custom",
                    name=item["name"], window=(win.lo, win.hi))
        return dict(inputs=lq_t, data_samples=meta)
