"""Tiny CIFAR-10 / CIFAR-100 sample sets in the official python-version pickle format.

Each class is a colour with a class-dependent stripe pattern plus noise; a few images per batch
file. Keys are bytes and the files protocol-2 pickles, as the released (Python 2) files read with
``encoding='bytes'``.
"""
import pickle
from pathlib import Path

import numpy as np

from . import register_sample_writer


def _images(rng: np.random.Generator, labels, num_classes: int) -> np.ndarray:
    """(N, 3072) uint8: channel planes R, G, B of 32 x 32, row-major."""
    out = np.empty((len(labels), 3, 32, 32), dtype=np.uint8)
    yy, xx = np.mgrid[0:32, 0:32]
    for i, label in enumerate(labels):
        hue = np.array([(label * 97) % 256, (label * 57 + 80) % 256, (label * 23 + 160) % 256], dtype=float)
        stripes = ((xx + yy * (label % 3)) // (2 + label % 5)) % 2
        img = hue[:, None, None] * (0.6 + 0.4 * stripes) + rng.normal(0, 12, (3, 32, 32))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out.reshape(len(labels), 3072)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump({k.encode(): v for k, v in obj.items()}, f, protocol=2)


def _batch(rng, name: str, labels, num_classes: int, label_keys) -> dict:
    batch = {"batch_label": f"{name} (visionattn sample)".encode(), "data": _images(rng, labels, num_classes),
             "filenames": [f"sample_{name.replace(' ', '_')}_{i}.png".encode() for i in range(len(labels))]}
    batch.update({key: list(values) for key, values in label_keys.items()})
    return batch


@register_sample_writer("cifar10")
def write_cifar10(root: Path) -> None:
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(10)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": [n.encode() for n in names], "num_cases_per_batch": 4,
                                    "num_vis": 3072})
    for i in range(1, 6):
        labels = [(2 * i + j) % 10 for j in range(4)]
        _dump(folder / f"data_batch_{i}", _batch(rng, f"training batch {i} of 5", labels, 10, {"labels": labels}))
    labels = list(range(0, 10, 2))
    _dump(folder / "test_batch", _batch(rng, "testing batch 1 of 1", labels, 10, {"labels": labels}))


@register_sample_writer("cifar100")
def write_cifar100(root: Path) -> None:
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(100)
    _dump(folder / "meta", {"fine_label_names": [f"class_{i:02d}".encode() for i in range(100)],
                            "coarse_label_names": [f"superclass_{i:02d}".encode() for i in range(20)]})
    for split, fine in (("train", [i * 7 % 100 for i in range(12)]), ("test", [i * 13 % 100 for i in range(6)])):
        _dump(folder / split, _batch(rng, split, fine, 100, {"fine_labels": fine,
                                                             "coarse_labels": [f // 5 for f in fine]}))
