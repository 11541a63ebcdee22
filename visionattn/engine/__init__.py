"""mmengine glue: registries, task models, hooks, the runner set-up of tools/.

Every module here is imported (so its registrations run): a family adds its task model
(a BaseModel subclass next to ImageClassifier) by dropping a file in.
"""
from ..models.registry import import_submodules
from .classifier import ImageClassifier
from .data_preprocessor import ClassificationDataPreprocessor
from .hooks import RandomStateHook, TrainingCurvesHook
from .launch import build_runner, load_config
from .registry import DATASETS, HOOKS, METRICS, MODELS, TRANSFORMS
from .safe_globals import allow_mmengine_checkpoints
from .stereo_matcher import StereoMatcher

allow_mmengine_checkpoints()
import_submodules(__name__)

__all__ = ["ImageClassifier", "StereoMatcher", "ClassificationDataPreprocessor", "RandomStateHook", "TrainingCurvesHook",
           "build_runner", "load_config", "allow_mmengine_checkpoints",
           "DATASETS", "HOOKS", "METRICS", "MODELS", "TRANSFORMS"]
