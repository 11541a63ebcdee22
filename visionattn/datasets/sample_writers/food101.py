"""Tiny Food-101 sample set in the release layout: ``food-101/images/<class>/<id>.jpg`` + ``meta/``."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

from . import register_sample_writer

CLASSES = ["apple_pie", "baby_back_ribs", "baklava"]


@register_sample_writer("food101")
def write_food101(root: Path) -> None:
    base = Path(root) / "food-101"
    (base / "meta").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(101)
    splits = {"train": [], "test": []}
    for c, name in enumerate(CLASSES):
        (base / "images" / name).mkdir(parents=True, exist_ok=True)
        for j in range(4):
            image_id = str(100000 + 37 * c + j)
            colour = np.array([60 + 60 * c, 200 - 50 * c, 90 + 30 * j])
            img = np.clip(colour + rng.normal(0, 20, (48 + 8 * j, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(base / "images" / name / f"{image_id}.jpg", quality=90)
            splits["train" if j < 3 else "test"].append(f"{name}/{image_id}")
    (base / "meta" / "classes.txt").write_text("".join(f"{n}\n" for n in CLASSES))
    (base / "meta" / "labels.txt").write_text("".join(f"{n.replace('_', ' ').capitalize()}\n" for n in CLASSES))
    for split, items in splits.items():
        (base / "meta" / f"{split}.txt").write_text("".join(f"{i}\n" for i in items))
        grouped = {n: [i for i in items if i.startswith(n + "/")] for n in CLASSES}
        (base / "meta" / f"{split}.json").write_text(json.dumps(grouped))
