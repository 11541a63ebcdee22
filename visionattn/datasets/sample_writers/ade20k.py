"""A tiny ADE20K (SceneParsing, ADEChallengeData2016) set in the real layout.

    ade20k/images/{training,validation}/ADE_{train,val}_000000NN.jpg
    ade20k/annotations/{training,validation}/ADE_{train,val}_000000NN.png

Label maps are single-channel uint8 PNGs: 0 = "other" (ignored after ``reduce_zero_label``),
1..150 the ADE20K classes. Each image shows a few filled regions whose pixels match the labels.
"""
from pathlib import Path

import cv2
import numpy as np

from . import register_sample_writer

NUM_CLASSES = 150
_SPLITS = {"training": ("train", 4), "validation": ("val", 2)}
_SIZES = ((160, 128), (128, 160))  # (width, height)


@register_sample_writer("ade20k")
def write_ade20k(root: Path) -> None:
    rng = np.random.default_rng(150)
    root = Path(root)
    for split, (tag, count) in _SPLITS.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            width, height = _SIZES[i % len(_SIZES)]
            label = np.zeros((height, width), np.uint8)
            # A background class over most of the image, leaving some 0 ("other") pixels.
            label[: height * 3 // 4] = rng.integers(1, NUM_CLASSES + 1)
            for _ in range(3):
                x0, y0 = int(rng.integers(0, width - 32)), int(rng.integers(0, height - 32))
                w, h = int(rng.integers(16, 64)), int(rng.integers(16, 64))
                cv2.rectangle(label, (x0, y0), (x0 + w, y0 + h), int(rng.integers(1, NUM_CLASSES + 1)), -1)
            palette = rng.integers(0, 256, (NUM_CLASSES + 1, 3), dtype=np.uint8)
            image = palette[label] // 2 + rng.integers(0, 128, (height, width, 3), dtype=np.uint8)
            name = f"ADE_{tag}_{i + 1:08d}"
            cv2.imwrite(str(root / "images" / split / f"{name}.jpg"), image[:, :, ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(root / "annotations" / split / f"{name}.png"), label)
