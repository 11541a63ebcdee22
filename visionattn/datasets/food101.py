"""Food-101 in its release layout: ``food-101/images/<class>/<id>.jpg`` and ``food-101/meta/``
(``classes.txt``: one class per line, the label order; ``train.txt`` / ``test.txt``: ``<class>/<id>``
per line, without extension)."""
from pathlib import Path
from typing import Callable, Dict, Union

from ..registry import DATASETS
from .corrupt import CorruptSampleError, read_lines
from .labelled_images import LabelledImages, check_split


@DATASETS.register_module()
class Food101(LabelledImages):
    """Food-101 (75,750 train / 25,250 test images, 101 classes). ``root``: ``food-101`` or its parent."""

    def __init__(self, root: Union[str, Path], split: str = "train", transform: Union[Callable, Dict, None] = None):
        super().__init__(transform)
        check_split(split, ("train", "test"), "Food101")
        root = Path(root)
        self.root = root if (root / "meta").is_dir() else root / "food-101"
        meta = self.root / "meta"
        for name in ("classes.txt", f"{split}.txt"):
            if not (meta / name).is_file():
                raise FileNotFoundError(f"Food101: {str(meta / name)!r} does not exist; extract food-101.tar.gz "
                                        f"so that {str(root)!r} holds food-101/images and food-101/meta")
        self.classes = tuple(read_lines(meta / "classes.txt"))
        if not self.classes:
            raise CorruptSampleError(meta / "classes.txt", "is empty; it should list the 101 class names, one a line")
        index = {c: i for i, c in enumerate(self.classes)}
        records = []
        for line in read_lines(meta / f"{split}.txt"):
            cls = line.split("/")[0]
            if cls not in index:
                raise CorruptSampleError(meta / f"{split}.txt", f"names class {cls!r}, which classes.txt lacks")
            records.append((self.root / "images" / f"{line}.jpg", index[cls]))
        if not records:
            raise CorruptSampleError(meta / f"{split}.txt", f"lists no images; it should hold <class>/<id> lines "
                                                           f"(re-extract food-101.tar.gz)")
        self.set_samples(records)
