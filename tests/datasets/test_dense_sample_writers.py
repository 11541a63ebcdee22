"""COCO and ADE20K sample sets: real formats, annotations that match the pixels."""
import json

import cv2
import numpy as np
import pytest


def test_coco_sample_is_valid_coco(samples_root):
    pycocotools = pytest.importorskip("pycocotools.coco")
    from pycocotools import mask as mask_utils

    root = samples_root / "coco"
    for split in ("train2017", "val2017"):
        coco = pycocotools.COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert len(coco.getCatIds()) == 80 and max(coco.getCatIds()) == 90
        assert coco.getImgIds() and coco.getAnnIds()
        for img in coco.loadImgs(coco.getImgIds()):
            pixels = cv2.imread(str(root / split / img["file_name"]))
            assert pixels.shape[:2] == (img["height"], img["width"])
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
                m = coco.annToMask(ann).astype(bool)
                x, y, w, h = ann["bbox"]
                ys, xs = np.nonzero(m)
                assert abs(xs.min() - x) <= 1.5 and abs(xs.max() + 1 - (x + w)) <= 1.5
                assert abs(ys.min() - y) <= 1.5 and abs(ys.max() + 1 - (y + h)) <= 1.5
                assert abs(mask_utils.area(mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))) - ann["area"]) \
                    < 0.25 * ann["area"] + 30
    json.loads((root / "annotations" / "instances_val2017.json").read_text())


def test_ade20k_sample_layout_and_labels(samples_root):
    root = samples_root / "ade20k"
    for split, tag in (("training", "train"), ("validation", "val")):
        images = sorted((root / "images" / split).glob("*.jpg"))
        assert images and all(p.name.startswith(f"ADE_{tag}_") for p in images)
        for img in images:
            label = cv2.imread(str(root / "annotations" / split / (img.stem + ".png")), cv2.IMREAD_UNCHANGED)
            assert label.dtype == np.uint8 and label.ndim == 2
            assert label.shape == cv2.imread(str(img)).shape[:2]
            assert label.max() <= 150 and (label == 0).any() and (label > 0).any()
