"""mmengine hooks of visionattn (mmengine's own, e.g. EMAHook, are used directly)."""
from .random_state import RandomStateHook
from .train_breakdown import TrainBreakdownHook
from .train_speed import TrainSpeedHook
from .training_curves import TrainingCurvesHook

__all__ = ["RandomStateHook", "TrainBreakdownHook", "TrainSpeedHook", "TrainingCurvesHook"]
