"""mmengine glue: task models, losses, hooks, the runner set-up of tools/.

Every module here is imported (so its registrations run): a family adds its task model
(a :class:`TaskModel` subclass, see task_model.py) by dropping a file in; its losses go in losses.py.
"""
from ..registry import import_submodules, lazy
from .classifier import ImageClassifier
from .data_preprocessor import ClassificationDataPreprocessor
from .hooks import RandomStateHook, TrainingCurvesHook, TrainSpeedHook
from .launch import build_runner, load_config
from .losses import build_loss
from ..registry import DATASETS, HOOKS, METRICS, MODELS, TRANSFORMS
from .safe_globals import allow_mmengine_checkpoints
from .stereo_matcher import StereoMatcher
from .task_model import DataSamples, TaskModel, build_network

allow_mmengine_checkpoints()
# OpenMMLab backbone glue: registers in mmdet's/mmseg's MODELS, imported by configs' custom_imports.
lazy(f"{__name__}.mm_backbone", extra="mmdet")
# LiDAR detection trains spconv networks: imported when a config builds ScatterFormerDetector.
lazy(f"{__name__}.lidar_detector", extra="spconv", models=["ScatterFormerDetector", "LidarDataPreprocessor"])
import_submodules(__name__)

__all__ = ["TaskModel", "DataSamples", "build_network", "build_loss", "ImageClassifier", "StereoMatcher",
           "ClassificationDataPreprocessor", "RandomStateHook", "TrainingCurvesHook", "TrainSpeedHook",
           "build_runner", "load_config", "allow_mmengine_checkpoints",
           "DATASETS", "HOOKS", "METRICS", "MODELS", "TRANSFORMS"]
