"""Readers of the real on-disk dataset formats, and their transforms."""
from .classification_transforms import classification_transform, model_data_config
from .imagenet import ImageNetFolder
from .stereo import KITTIStereoDataset, MiddleburyDataset, SceneFlowDataset, StereoAugment

__all__ = ["ImageNetFolder", "KITTIStereoDataset", "MiddleburyDataset", "SceneFlowDataset", "StereoAugment",
           "classification_transform", "model_data_config"]
