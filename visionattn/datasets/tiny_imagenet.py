"""Tiny-ImageNet-200 in its release layout (``tiny-imagenet-200/``):
``wnids.txt`` (the 200 class ids), ``train/<wnid>/images/<wnid>_<i>.JPEG``,
``val/images/val_<i>.JPEG`` with ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1``).
Labels: index of the wnid in sorted order (torchvision ImageFolder's convention, as the official
code's ImageFolder training split)."""
from pathlib import Path
from typing import Callable, Dict, Union

from ..registry import DATASETS
from .corrupt import CorruptSampleError, read_lines
from .labelled_images import LabelledImages, check_split


@DATASETS.register_module()
class TinyImageNet(LabelledImages):
    """Tiny-ImageNet (100,000 train / 10,000 val 64 x 64 images, 200 classes). ``root``:
    ``tiny-imagenet-200`` or its parent."""

    def __init__(self, root: Union[str, Path], split: str = "train", transform: Union[Callable, Dict, None] = None):
        super().__init__(transform)
        check_split(split, ("train", "val"), "TinyImageNet")
        root = Path(root)
        self.root = root if (root / "wnids.txt").is_file() else root / "tiny-imagenet-200"
        if not (self.root / "wnids.txt").is_file():
            raise FileNotFoundError(f"TinyImageNet: no wnids.txt in {str(root)!r} or {str(root / 'tiny-imagenet-200')!r}; "
                                    f"extract tiny-imagenet-200.zip there")
        self.classes = tuple(sorted(w.strip() for w in (self.root / "wnids.txt").read_text().split() if w.strip()))
        index = {w: i for i, w in enumerate(self.classes)}
        if split == "train":
            records = [(p, index[w]) for w in self.classes
                       for p in sorted((self.root / "train" / w / "images").glob("*.JPEG"))]
        else:
            records = []
            ann = self.root / "val" / "val_annotations.txt"
            if not ann.is_file():
                raise FileNotFoundError(f"TinyImageNet: {str(ann)!r} does not exist")
            for n, line in enumerate(read_lines(ann), 1):
                fields = line.split("\t")
                if len(fields) < 2:
                    raise CorruptSampleError(ann, f"line {n} is {line[:60]!r}; expected file<TAB>wnid<TAB>box")
                name, wnid = fields[:2]
                if wnid not in index:
                    raise CorruptSampleError(ann, f"line {n} names {wnid!r}, which wnids.txt lacks")
                records.append((self.root / "val" / "images" / name, index[wnid]))
        self.set_samples(records)
        if not len(self):
            raise FileNotFoundError(f"TinyImageNet: no {split} images under {str(self.root)!r}")
