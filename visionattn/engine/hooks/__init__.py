"""mmengine hooks of visionattn (mmengine's own, e.g. EMAHook, are used directly)."""
from .random_state import RandomStateHook
from .show_predictions import ShowPredictionsHook
from .train_speed import TrainSpeedHook
from .training_curves import TrainingCurvesHook

__all__ = ["RandomStateHook", "ShowPredictionsHook", "TrainSpeedHook", "TrainingCurvesHook"]
