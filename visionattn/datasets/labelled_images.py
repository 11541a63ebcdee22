"""Base of the classification readers: (image, label) records -> ``dict(inputs, data_samples)`` items."""
from pathlib import Path
from typing import Callable, Dict, Iterable, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..registry import TRANSFORMS
from .corrupt import open_rgb


class LabelledImages(Dataset):
    """Subclasses fill ``self.classes`` and either call :meth:`set_samples` with ``(image file,
    label)`` records (read here) or override ``__len__`` and ``load(index) -> (PIL RGB, label)``
    (e.g. in-memory arrays).

    Items are ``dict(inputs=uint8 Tensor (3, H, W), data_samples=dict(label=int))`` after ``transform``
    (a callable or a TRANSFORMS config mapping a PIL RGB image to a uint8 tensor); batch them with
    mmengine's ``default_collate``.
    """

    classes: Tuple[str, ...] = ()

    def __init__(self, transform: Union[Callable, Dict, None] = None):
        if isinstance(transform, dict):
            transform = TRANSFORMS.build({"_scope_": "visionattn", **transform})
        self.transform = transform
        self.paths = np.array([], dtype=str)  # (N,) image files
        self.labels = np.array([], dtype=np.int64)  # (N,)

    def set_samples(self, records: Iterable[Tuple[Union[str, Path], int]]) -> None:
        """Keep ``(image file, label)`` records as two numpy arrays, not a list of Python objects:
        forked data workers then share the 1.3M ImageNet paths instead of copying them page by page
        as reference counts change."""
        records = list(records)
        self.paths = np.array([str(p) for p, _ in records])
        self.labels = np.array([label for _, label in records], dtype=np.int64)

    @property
    def metainfo(self) -> Dict:
        """Saved by mmengine in checkpoints and handed to metrics as ``dataset_meta``."""
        return dict(classes=tuple(self.classes))

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Tuple[Image.Image, int]:
        return open_rgb(self.paths[index]), int(self.labels[index])

    def __getitem__(self, index: int) -> Dict:
        img, label = self.load(index)
        if self.transform is not None:
            img = self.transform(img)
        if not isinstance(img, torch.Tensor):
            img = torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1)))
        return dict(inputs=img, data_samples=dict(label=int(label)))


def check_split(split: str, allowed: Sequence[str], dataset: str) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset}: unknown split {split!r}; use one of {list(allowed)}")
