"""Semantic-segmentation metrics: mean IoU, mean class accuracy, overall pixel accuracy."""
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from ..registry import METRICS


@METRICS.register_module()
class MeanIoU(BaseMetric):
    """mIoU / mAcc / aAcc (in %) over a dataset, accumulated per class (no per-image confusion matrix).

    Reads each data sample's ``pred_sem_seg.data`` and ``gt_sem_seg.data`` (1, H, W) integer maps,
    the fields mmsegmentation's models and datasets produce. Pixels whose label is
    ``ignore_index`` are skipped; classes absent from both prediction and label are left out of
    the means (as ADE20K's benchmark does).

    Args:
        num_classes: number of classes; default ``len(dataset_meta['classes'])``.
        ignore_index: label value that is not scored (255 after ADE20K's ``reduce_zero_label``).
    """

    default_prefix: Optional[str] = None

    def __init__(self, num_classes: Optional[int] = None, ignore_index: int = 255,
                 collect_device: str = "cpu", prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def _classes(self) -> int:
        if self.num_classes is not None:
            return self.num_classes
        if self.dataset_meta and "classes" in self.dataset_meta:
            return len(self.dataset_meta["classes"])
        raise ValueError("MeanIoU needs num_classes=... (the dataset has no metainfo 'classes')")

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        n = self._classes()
        for sample in data_samples:
            pred = sample["pred_sem_seg"]["data"].squeeze().to(torch.int64).cpu()
            label = sample["gt_sem_seg"]["data"].squeeze().to(torch.int64).cpu()
            if pred.shape != label.shape:
                raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in size")
            keep = label != self.ignore_index
            pred, label = pred[keep], label[keep]
            if label.numel() and (label.max() >= n or label.min() < 0):
                raise ValueError(f"label values must lie in [0, {n}) or equal ignore_index={self.ignore_index}; "
                                 f"got {label.min().item()}..{label.max().item()}")
            intersect = torch.bincount(label[pred == label], minlength=n)[:n]
            area_pred = torch.bincount(pred.clamp(0, n - 1), minlength=n)[:n]
            area_label = torch.bincount(label, minlength=n)[:n]
            self.results.append((intersect.numpy(), area_pred.numpy(), area_label.numpy()))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        intersect, area_pred, area_label = (np.sum([r[i] for r in results], axis=0).astype(np.float64)
                                            for i in range(3))
        union = area_pred + area_label - intersect
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersect / union  # nan where the class never occurs
            acc = intersect / area_label
        classes = (self.dataset_meta or {}).get("classes")
        if classes is not None:
            worst = np.argsort(np.nan_to_num(iou, nan=np.inf))[:5]
            print_log("lowest IoU: " + ", ".join(f"{classes[i]} {100 * iou[i]:.1f}" for i in worst),
                      logger="current")
        return dict(
            aAcc=float(100 * intersect.sum() / max(area_label.sum(), 1)),
            mIoU=float(100 * np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
            mAcc=float(100 * np.nanmean(acc)) if np.isfinite(acc).any() else 0.0,
        )
