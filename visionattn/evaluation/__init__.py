"""Metrics (mmengine BaseMetric subclasses). Every module here is imported (registers itself)."""
from ..registry import import_submodules
from .accuracy import Accuracy
from .lidar_metrics import KittiMetric3D, WaymoStyleMetric
from .stereo_metrics import StereoMetric, disparity_errors

import_submodules(__name__)

__all__ = ["Accuracy", "KittiMetric3D", "StereoMetric", "WaymoStyleMetric", "disparity_errors"]
