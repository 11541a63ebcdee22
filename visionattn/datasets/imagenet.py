"""ImageNet in its usual folder layout: ``<root>/<split>/<class>/<image>.JPEG``.

The class index is the position of ``<class>`` in the sorted list of the split's sub-folders
(torchvision's ImageFolder convention, so 1000-class ImageNet maps ``n01440764`` to 0).
"""
from pathlib import Path
from typing import Callable, Dict, Union

from ..registry import DATASETS
from .labelled_images import LabelledImages

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


@DATASETS.register_module()
class ImageNetFolder(LabelledImages):
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
        super().__init__(transform)
        self.root = Path(root)
        self.split = split
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"ImageNet split folder {str(folder)!r} does not exist. Put the dataset at "
                f"{str(self.root)!r} as {split}/<class>/<image>.JPEG (see datasets/README.md and "
                "datasets/imagenet/README.md), or point the config at it with "
                "--cfg-options train_dataloader.dataset.root=PATH val_dataloader.dataset.root=PATH")
        self.classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir()))
        self.set_samples((path, label)
                         for label, name in enumerate(self.classes)
                         for path in sorted((folder / name).iterdir())
                         if path.suffix.lower() in IMAGE_SUFFIXES)
        if not len(self):
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(folder)!r}/<class>/")
