"""Metrics (mmengine BaseMetric subclasses)."""
from .accuracy import Accuracy
from .segmentation_iou import MeanIoU

__all__ = ["Accuracy", "MeanIoU"]
