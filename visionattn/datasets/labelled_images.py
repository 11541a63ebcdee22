"""Base of the classification readers: (image, label) records -> ``dict(inputs, data_samples)`` items."""
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..registry import TRANSFORMS


class LabelledImages(Dataset):
    """Subclasses fill ``self.classes`` and either ``self.samples`` (``(image file, label)`` records,
    read here) or override ``__len__`` and ``load(index) -> (PIL RGB, label)`` (e.g. in-memory arrays).

    Items are ``dict(inputs=uint8 Tensor (3, H, W), data_samples=dict(label=int))`` after ``transform``
    (a callable or a TRANSFORMS config mapping a PIL RGB image to a uint8 tensor), as
    :class:`visionattn.datasets.ImageNetFolder` gives them.
    """

    classes: Tuple[str, ...] = ()

    def __init__(self, transform: Union[Callable, Dict, None] = None):
        self.transform = TRANSFORMS.build(transform) if isinstance(transform, dict) else transform
        self.samples: List[Tuple[Path, int]] = []

    @property
    def metainfo(self) -> Dict:
        return dict(classes=tuple(self.classes))

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Tuple[Image.Image, int]:
        path, label = self.samples[index]
        with Image.open(path) as img:
            return img.convert("RGB"), label

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
