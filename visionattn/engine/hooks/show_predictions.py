"""``tools/test.py --show-dir DIR``: one picture per test sample, whatever the task."""
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from mmengine.dist import master_only
from mmengine.hooks import Hook

from ...registry import HOOKS
from ...visualization import draw_bev
from ...visualization import predictions as drawing


def _image_of(sample, data_batch, i: int):
    """The picture a prediction is drawn on: the file it was read from (mmdet/mmseg samples keep
    ``img_path``; their predictions are in the file's coordinates), else the batch's input ``i``."""
    path = getattr(sample, "metainfo", {}).get("img_path") if hasattr(sample, "metainfo") else None
    if path is None and isinstance(sample, dict):
        path = sample.get("img_path")
    if path is not None and Path(path).is_file():
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")), Path(path).stem
    inputs = data_batch["inputs"] if isinstance(data_batch, dict) else data_batch[0]
    name = next((sample[k] for k in ("name", "frame_id", "sample_idx") if k in sample), None) \
        if isinstance(sample, dict) else None
    image = None if isinstance(inputs, dict) else inputs[i]  # LiDAR batches: dict(points, batch_size)
    return image, (Path(str(name)).stem if name is not None else None)


def _cpu(x):
    return x.detach().cpu() if hasattr(x, "detach") else x


def _frame_points(data_batch, i: int):
    """Points (N, C) of frame ``i`` of a collated LiDAR batch (column 0 of ``inputs['points']`` is the
    frame index), or None when the batch does not have that form."""
    inputs = data_batch.get("inputs") if isinstance(data_batch, dict) else None
    if isinstance(inputs, dict) and "points" in inputs:
        points = inputs["points"]
        return points[points[:, 0] == i][:, 1:]
    if isinstance(inputs, (list, tuple)) and i < len(inputs):
        return inputs[i]
    return None


@HOOKS.register_module()
class ShowPredictionsHook(Hook):
    """After every test iteration, write one PNG per sample into ``out_dir``.

    The picture follows the prediction's fields: ``pred_score`` (classification: top-5 classes and
    probabilities written under the image), ``pred_instances`` (detection: boxes, labels, scores and
    masks scoring at least ``score_thr``), ``pred_sem_seg`` (segmentation: class colours over the
    image), ``pred_instances_3d`` (LiDAR detection: bird's-eye view of the points, ground-truth boxes in
    white, predicted boxes in class colours), ``pred_disp`` (stereo: left image | disparity colour map), ``pred`` (restoration: input |
    restored | target when the sample has one). Anything else raises a ValueError naming its fields.
    Files are named after the input file when known, else ``<batch>_<index>.png``.
    """

    priority = "LOW"

    def __init__(self, out_dir: str, score_thr: float = 0.3, topk: int = 5):
        self.out_dir = Path(out_dir)
        self.score_thr = score_thr
        self.topk = topk
        self.class_names: Optional[Sequence[str]] = None
        self.written = 0

    def before_test(self, runner) -> None:
        dataset = runner.test_dataloader.dataset
        meta = getattr(dataset, "metainfo", None) or {}
        names = meta.get("classes") or getattr(dataset, "classes", None)
        self.class_names = list(names) if names is not None else None

    @master_only
    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs: Optional[Sequence] = None) -> None:
        for i, sample in enumerate(outputs or []):
            image, stem = _image_of(sample, data_batch, i)
            picture = self.draw(sample, image, data_batch, i)
            drawing.save_image(picture, self.out_dir / f"{stem or f'{batch_idx:05d}_{i}'}.png")
            self.written += 1

    def draw(self, sample, image, data_batch, i: int):
        if hasattr(sample, "pred_instances") and not isinstance(sample, dict):
            inst = sample.pred_instances
            return drawing.draw_detection(image, inst.bboxes, inst.labels, inst.scores,
                                          masks=inst.masks if "masks" in inst else None,
                                          class_names=self.class_names, score_thr=self.score_thr)
        if hasattr(sample, "pred_sem_seg"):
            seg = sample.pred_sem_seg.data[0]
            return drawing.draw_segmentation(image, seg, num_classes=len(self.class_names) if self.class_names else None)
        if not isinstance(sample, dict):
            raise ValueError(f"--show-dir cannot draw a {type(sample).__name__} prediction")
        if "pred_score" in sample:
            return drawing.draw_classification(image, sample["pred_score"], self.class_names, topk=self.topk)
        if "pred_instances_3d" in sample:
            inst = {k: np.asarray(_cpu(v)) for k, v in sample["pred_instances_3d"].items()}
            keep = inst["scores_3d"] >= self.score_thr
            points, gt = _frame_points(data_batch, i), sample.get("gt_boxes")
            bgr = draw_bev(np.zeros((0, 3)) if points is None else np.asarray(_cpu(points)),
                           inst["bboxes_3d"][keep], inst["labels_3d"][keep], inst["scores_3d"][keep],
                           gt_boxes=None if gt is None else np.asarray(_cpu(gt))[:, :7],
                           class_names=self.class_names or ())
            return bgr[..., ::-1]  # draw_bev writes OpenCV's BGR
        if "pred_disp" in sample:
            left = image[0] if getattr(image, "ndim", 0) == 4 else image  # (2, 3, H, W) pair -> left
            return drawing.draw_disparity(left, sample["pred_disp"])
        if "pred" in sample:
            target = next((sample[k] for k in ("gt", "target", "gt_img") if k in sample), None)
            return drawing.draw_restoration(image, sample["pred"], target)
        raise ValueError(f"--show-dir does not know how to draw a prediction with fields {sorted(sample)}; "
                         f"expected pred_score, pred_instances, pred_sem_seg, pred_instances_3d, pred_disp or pred")
