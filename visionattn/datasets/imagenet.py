"""ImageNet in its usual folder layout: ``<root>/<split>/<class>/<image>.JPEG``.

The class index is the position of ``<class>`` in the sorted list of the split's sub-folders
(torchvision's ImageFolder convention, so 1000-class ImageNet maps ``n01440764`` to 0).
"""
from pathlib import Path
from typing import Callable, Dict, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..registry import DATASETS, TRANSFORMS

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


@DATASETS.register_module()
class ImageNetFolder(Dataset):
    """Images of ``<root>/<split>/<class>/*`` with integer labels.

    Each item is ``dict(inputs=uint8 Tensor (3, H, W), data_samples=dict(label=int))`` after
    ``transform`` (a callable or a TRANSFORMS config, e.g. ``dict(type='ClassificationTransform')``)
    which maps a PIL RGB image to a uint8 tensor; batch them with mmengine's ``default_collate``.

    Args:
        root: dataset root holding one folder per split.
        split: ``'train'`` or ``'val'`` (any sub-folder name works).
        transform: PIL image -> uint8 tensor (3, H, W). Default: convert without resizing.
    """

    def __init__(self, root: str, split: str = "train", transform: Union[Callable, Dict, None] = None):
        self.root = Path(root)
        self.split = split
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"ImageNet split folder {str(folder)!r} does not exist. Put the dataset at "
                f"{str(self.root)!r} as {split}/<class>/<image>.JPEG (see datasets/README.md and "
                "datasets/imagenet/README.md), or point the config at it with "
                "--cfg-options train_dataloader.dataset.root=PATH val_dataloader.dataset.root=PATH")
        self.classes: Tuple[str, ...] = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir()))
        samples = [(str(path), label)
                   for label, name in enumerate(self.classes)
                   for path in sorted((folder / name).iterdir())
                   if path.suffix.lower() in IMAGE_SUFFIXES]
        if not samples:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(folder)!r}/<class>/")
        # numpy arrays, not lists of Python objects: forked data workers then share the 1.3M
        # ImageNet paths instead of copying them page by page as reference counts change
        self.paths = np.array([p for p, _ in samples])  # (N,) str
        self.labels = np.array([lbl for _, lbl in samples], dtype=np.int64)  # (N,)
        if isinstance(transform, dict):
            transform = TRANSFORMS.build({"_scope_": "visionattn", **transform})
        self.transform = transform

    @property
    def metainfo(self) -> Dict:
        """Saved by mmengine in checkpoints and handed to metrics as ``dataset_meta``."""
        return dict(classes=self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict:
        path, label = self.paths[index], int(self.labels[index])
        with Image.open(path) as img:
            img = img.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        if not isinstance(img, torch.Tensor):
            img = torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1)))
        return dict(inputs=img, data_samples=dict(label=label))
