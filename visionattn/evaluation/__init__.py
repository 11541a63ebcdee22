"""Metrics (mmengine BaseMetric subclasses)."""
from .accuracy import Accuracy
from .stereo_metrics import StereoMetric, disparity_errors

__all__ = ["Accuracy", "StereoMetric", "disparity_errors"]
