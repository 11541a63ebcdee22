"""A tiny COCO 2017 instance-segmentation set in the real layout.

    coco/annotations/instances_{train,val}2017.json   (COCO json: boxes [x, y, w, h] + polygons)
    coco/{train,val}2017/<12-digit id>.jpg

All 80 categories with their official (non-contiguous) ids; each image holds a few filled
polygons (boxes, ellipses, triangles) whose annotations match the pixels.
"""
import json
from pathlib import Path

import cv2
import numpy as np

from . import register_sample_writer

COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush")
# COCO's category ids skip 12, 26, 29, 30, 45, 66, 68, 69, 71, 83.
COCO_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
SUPERCATEGORY = "object"  # the real file has per-class supercategories; readers ignore them

_SPLITS = {"train2017": (4, 0), "val2017": (2, 1000)}  # images, first image id offset
_SIZES = ((160, 128), (128, 160), (192, 144))  # (width, height)


def _polygon(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random convex shape as an (N, 2) float polygon inside the image, at least 24 px wide."""
    w, h = rng.uniform(24, width * 0.6), rng.uniform(24, height * 0.6)
    x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
    kind = rng.integers(3)
    if kind == 0:  # box
        pts = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    elif kind == 1:  # ellipse
        t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        pts = np.stack([x0 + w / 2 * (1 + np.cos(t)), y0 + h / 2 * (1 + np.sin(t))], 1)
    else:  # triangle
        pts = [(x0 + w / 2, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    return np.round(np.asarray(pts, np.float64), 1)


def _write_split(root: Path, split: str, count: int, first_id: int, rng: np.random.Generator) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        image_id = first_id + i + 1
        width, height = _SIZES[i % len(_SIZES)]
        img = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            poly = _polygon(rng, width, height)
            cat = int(rng.integers(len(COCO_IDS)))
            cv2.fillPoly(img, [np.round(poly).astype(np.int32)], tuple(int(c) for c in rng.integers(80, 256, 3)))
            x, y = poly.min(0)
            x1, y1 = poly.max(0)
            area = 0.5 * abs(np.dot(poly[:, 0], np.roll(poly[:, 1], 1)) - np.dot(poly[:, 1], np.roll(poly[:, 0], 1)))
            annotations.append(dict(
                id=len(annotations) + 1 + first_id * 10, image_id=image_id, category_id=COCO_IDS[cat],
                segmentation=[poly.reshape(-1).tolist()], area=round(float(area), 2),
                bbox=[round(float(x), 2), round(float(y), 2), round(float(x1 - x), 2), round(float(y1 - y), 2)],
                iscrowd=0))
        file_name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(root / split / file_name), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=image_id, file_name=file_name, width=width, height=height, license=1,
                           date_captured="2013-11-14 11:18:45"))
    ann = dict(
        info=dict(description="visionattn COCO-format sample", version="1.0", year=2017,
                  contributor="visionattn", date_created="2017/09/01"),
        licenses=[dict(id=1, name="Attribution License", url="http://creativecommons.org/licenses/by/2.0/")],
        images=images, annotations=annotations,
        categories=[dict(id=cid, name=name, supercategory=SUPERCATEGORY) for cid, name in zip(COCO_IDS, COCO_NAMES)])
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(ann))


@register_sample_writer("coco")
def write_coco(root: Path) -> None:
    rng = np.random.default_rng(2017)
    for split, (count, first_id) in _SPLITS.items():
        _write_split(Path(root), split, count, first_id, rng)
