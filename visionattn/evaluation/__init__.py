"""Metrics (mmengine BaseMetric subclasses)."""
