"""mmengine hooks of visionattn (mmengine's own, e.g. EMAHook, are used directly)."""
from .gt_sampling_off import GTSamplingOffHook
from .random_state import RandomStateHook
from .runtime_info import DeferredRuntimeInfoHook
from .safe_checkpoint import SafeCheckpointHook, latest_complete_checkpoint
from .show_predictions import ShowPredictionsHook
from .train_breakdown import TrainBreakdownHook
from .train_speed import TrainSpeedHook
from .training_curves import TrainingCurvesHook

__all__ = ["DeferredRuntimeInfoHook", "GTSamplingOffHook", "RandomStateHook", "SafeCheckpointHook", "ShowPredictionsHook", "TrainBreakdownHook",
           "TrainSpeedHook", "TrainingCurvesHook", "latest_complete_checkpoint"]
