"""Tiny Tiny-ImageNet-200 sample set in the release layout (``tiny-imagenet-200/``): wnids.txt,
words.txt, train/<wnid>/{images/<wnid>_<i>.JPEG, <wnid>_boxes.txt}, val/{images, val_annotations.txt},
test/images. 64 x 64 JPEGs."""
from pathlib import Path

import numpy as np
from PIL import Image

from . import register_sample_writer

WNIDS = {"n01443537": "goldfish, Carassius auratus", "n02099601": "golden retriever", "n01629819": "European fire salamander"}


def _image(rng, c: int) -> Image.Image:
    colour = np.array([70 * c + 40, 180 - 40 * c, 120])
    return Image.fromarray(np.clip(colour + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype(np.uint8))


@register_sample_writer("tiny_imagenet")
def write_tiny_imagenet(root: Path) -> None:
    base = Path(root) / "tiny-imagenet-200"
    rng = np.random.default_rng(200)
    wnids = list(WNIDS)  # release order is not sorted
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (base / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in WNIDS.items()))
    for c, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True, exist_ok=True)
        boxes = []
        for i in range(3):
            _image(rng, c).save(folder / f"{wnid}_{i}.JPEG", quality=90)
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(4):
        c = i % len(wnids)
        _image(rng, c).save(base / "val" / "images" / f"val_{i}.JPEG", quality=90)
        lines.append(f"val_{i}.JPEG\t{wnids[c]}\t{4 + i}\t5\t60\t58\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    (base / "test" / "images").mkdir(parents=True, exist_ok=True)
    _image(rng, 0).save(base / "test" / "images" / "test_0.JPEG", quality=90)
