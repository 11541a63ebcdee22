"""Metrics (mmengine BaseMetric subclasses)."""
from .accuracy import Accuracy

__all__ = ["Accuracy"]
