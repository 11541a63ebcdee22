"""Metrics (mmengine BaseMetric subclasses). Every module here is imported (registers itself)."""
from ..registry import import_submodules
from .accuracy import Accuracy
from .stereo_metrics import StereoMetric, disparity_errors

import_submodules(__name__)

__all__ = ["Accuracy", "StereoMetric", "disparity_errors"]
