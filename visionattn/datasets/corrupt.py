"""Corrupt samples: the error every reader raises for a damaged file, and an opt-in wrapper that
skips such samples (counting them) instead of stopping a long run.

Readers raise :class:`CorruptSampleError` (a ``RuntimeError``) naming the file and what is wrong
with it: truncated, not decodable, a header that does not parse, a size that does not match its
pair. :class:`SkipCorruptSamples` wraps any dataset; in a config::

    train_dataloader = dict(dataset=dict(type='SkipCorruptSamples', max_skipped=100,
                                         dataset=dict(type='ImageNetFolder', root='data/imagenet')))

A skipped sample is replaced by the next readable one and logged (once per file) with the running
count; more
than ``max_skipped`` corrupt samples (per process) stop the run, since that many points at a
broken copy of the dataset rather than a few bad files. Other exceptions (bugs) always propagate.
"""
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
from torch.utils.data import Dataset

from ..registry import DATASETS


class CorruptSampleError(RuntimeError):
    """A data file cannot be used; ``path`` is the file, the message says what is wrong with it."""

    def __init__(self, path: Union[str, Path], problem: Optional[str] = None):
        if problem is None:  # rebuilt from its message alone (a DataLoader worker's error, unpickling)
            super().__init__(str(path))
            self.path, self.problem = "", str(path)
            return
        super().__init__(f"{str(path)!r}: {problem}")
        self.path, self.problem = str(path), problem


def read_lines(path: Union[str, Path]) -> list:
    """The non-blank lines of a text file (stripped); a file that is not UTF-8 text is a
    :class:`CorruptSampleError` naming it."""
    try:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise CorruptSampleError(path, f"is not UTF-8 text ({err.reason} at byte {err.start})") from None


def open_rgb(path: Union[str, Path]):
    """An image file -> PIL RGB image, fully decoded here so that a truncated or damaged file is a
    :class:`CorruptSampleError` naming it (PIL decodes lazily and would fail later, saying only
    "image file is truncated")."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise CorruptSampleError(path, "not an image PIL can identify (damaged header or wrong format)") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated data, broken chunks, bad tables
        raise CorruptSampleError(path, f"damaged image data ({err}); re-download or remove the file") from None


def read_rgb(path: Union[str, Path]) -> np.ndarray:
    """:func:`open_rgb` as an (H, W, 3) uint8 array."""
    return np.array(open_rgb(path))


@DATASETS.register_module()
class SkipCorruptSamples(Dataset):
    """Wrap ``dataset`` (a dataset or its config): a sample whose reader raises
    :class:`CorruptSampleError` is logged and replaced by the next index that reads; ``skipped``
    counts the distinct corrupt files met in this process (``skipped_files``: file -> problem), each
    logged once. More than ``max_skipped`` (None: no limit) raise."""

    def __init__(self, dataset: Union[Dataset, Dict], max_skipped: Optional[int] = 100):
        if isinstance(dataset, dict):
            dataset = DATASETS.build({"_scope_": "visionattn", **dataset})
        if max_skipped is not None and (not isinstance(max_skipped, int) or max_skipped < 0):
            raise ValueError(f"SkipCorruptSamples: max_skipped must be an int >= 0 or None, got {max_skipped!r}")
        self.dataset, self.max_skipped = dataset, max_skipped
        self.skipped = 0
        self.skipped_files: Dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # metainfo, classes, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        n = len(self.dataset)
        for step in range(n):
            try:
                return self.dataset[(index + step) % n]
            except CorruptSampleError as err:
                if err.path in self.skipped_files:  # met before (another epoch): counted and logged once
                    continue
                self.skipped += 1
                self.skipped_files[err.path] = err.problem
                from mmengine.logging import print_log

                print_log(f"skipped corrupt sample {(index + step) % n} ({self.skipped} corrupt files so far in "
                          f"this process): {err}", logger="current", level=30)
                if self.max_skipped is not None and self.skipped > self.max_skipped:
                    raise CorruptSampleError(err.path, f"{self.skipped} corrupt samples, more than max_skipped="
                                             f"{self.max_skipped}: the dataset copy looks broken (last: "
                                             f"{err.problem})") from err
        raise CorruptSampleError(getattr(self.dataset, "root", "dataset"), "no sample of the dataset can be read")
