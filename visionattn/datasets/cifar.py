"""CIFAR-10 / CIFAR-100 in the official "python version" pickle batches.

CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``; each batch a dict
with ``data`` (N, 3072) uint8 (1024 R, 1024 G, 1024 B values, row-major 32 x 32), ``labels``,
``filenames``, ``batch_label``; ``batches.meta`` has ``label_names``.
CIFAR-100: ``cifar-100-python/{train, test, meta}`` with ``fine_labels`` and ``coarse_labels``;
``meta`` has ``fine_label_names`` and ``coarse_label_names``.
The files are Python 2 pickles; they are read with an unpickler that only builds numpy arrays.
"""
from pathlib import Path
from typing import Callable, Dict, Union

import numpy as np
from PIL import Image

from ..registry import DATASETS
from ..safe_pickle import load_arrays_only
from .corrupt import CorruptSampleError
from .labelled_images import LabelledImages, check_split

def read_batch(path: Path) -> Dict[str, object]:
    """One CIFAR pickle file -> dict with str keys."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file {str(path)!r} does not exist (see datasets/README.md for the layout)")
    with open(path, "rb") as f:
        data = load_arrays_only(f, what=f"CIFAR batch {str(path)!r}", encoding="bytes")
    if not isinstance(data, dict):
        raise CorruptSampleError(path, f"holds a {type(data).__name__}, not the dict of a CIFAR python-version batch")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in data.items()}


def _field(batch: Dict[str, object], key: str, path: Path) -> object:
    if key not in batch:
        raise CorruptSampleError(path, f"has no {key!r} entry (keys: {sorted(batch)}); it is not a CIFAR batch "
                                       f"of this dataset or it is damaged")
    return batch[key]


def _images(batch: Dict[str, object], path: Path) -> np.ndarray:
    data = np.asarray(_field(batch, "data", path))
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise CorruptSampleError(path, f"'data' is a {data.dtype} array of shape {data.shape}; a CIFAR batch holds "
                                       f"uint8 (N, 3072) rows of 32x32 RGB planes")
    return data.reshape(-1, 3, 32, 32)


def _names(values) -> tuple:
    return tuple(v.decode() if isinstance(v, bytes) else v for v in values)


class _CIFAR(LabelledImages):
    folder: str = ""
    files: Dict[str, tuple] = {}
    meta_file: str = ""
    names_key: str = ""
    labels_key: str = ""

    def __init__(self, root: Union[str, Path], split: str = "train", transform: Union[Callable, Dict, None] = None):
        super().__init__(transform)
        check_split(split, tuple(self.files), type(self).__name__)
        root = Path(root)
        self.root = root if (root / self.meta_file).is_file() else root / self.folder
        if not (self.root / self.meta_file).is_file():
            raise FileNotFoundError(f"{type(self).__name__}: no {self.folder}/{self.meta_file} under {str(root)!r}; "
                                    f"extract the official python-version archive there")
        meta = self.root / self.meta_file
        self.classes = _names(_field(read_batch(meta), self.names_key, meta))
        images, labels = [], []
        for name in self.files[split]:
            path = self.root / name
            batch = read_batch(path)
            images.append(_images(batch, path))
            batch_labels = [int(v) for v in np.asarray(_field(batch, self.labels_key, path)).reshape(-1)]
            if len(batch_labels) != len(images[-1]):
                raise CorruptSampleError(path, f"has {len(images[-1])} images but {len(batch_labels)} labels")
            bad = [v for v in batch_labels if not 0 <= v < len(self.classes)]
            if bad:
                raise CorruptSampleError(path, f"has labels {sorted(set(bad))[:5]} outside 0..{len(self.classes) - 1}")
            labels.extend(batch_labels)
        self.images = np.concatenate(images).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.images) != len(labels):
            raise RuntimeError(f"{type(self).__name__}: {len(self.images)} images but {len(labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int):
        return Image.fromarray(self.images[index]), int(self.labels[index])


@DATASETS.register_module()
class CIFAR10(_CIFAR):
    """CIFAR-10 (50,000 train / 10,000 test 32 x 32 images, 10 classes). ``root``: the folder holding
    ``cifar-10-batches-py`` (or that folder)."""

    folder = "cifar-10-batches-py"
    files = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
    meta_file, names_key, labels_key = "batches.meta", "label_names", "labels"


@DATASETS.register_module()
class CIFAR100(_CIFAR):
    """CIFAR-100 (fine labels, 100 classes). ``root``: the folder holding ``cifar-100-python`` (or it)."""

    folder = "cifar-100-python"
    files = {"train": ("train",), "test": ("test",)}
    meta_file, names_key, labels_key = "meta", "fine_label_names", "fine_labels"
