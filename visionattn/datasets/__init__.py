"""Readers of the real on-disk dataset formats, and their transforms.

Every module here is imported (so its DATASETS/TRANSFORMS registrations run): a family adds a
reader by dropping a file in, without editing this one.
"""
from ..registry import import_submodules
from .cifar import CIFAR10, CIFAR100
from .corrupt import CorruptSampleError, SkipCorruptSamples
from .classification_transforms import classification_transform, model_data_config
from .food101 import Food101
from .imagenet import ImageNetFolder
from .stereo import KITTIStereoDataset, MiddleburyDataset, SceneFlowDataset, StereoAugment
from .tiny_imagenet import TinyImageNet
from .uptraining_transform import uptraining_transform

import_submodules(__name__)

__all__ = ["ImageNetFolder", "CIFAR10", "CIFAR100", "Food101", "TinyImageNet", "uptraining_transform",
           "KITTIStereoDataset", "MiddleburyDataset", "SceneFlowDataset", "StereoAugment",
           "classification_transform", "model_data_config", "CorruptSampleError", "SkipCorruptSamples"]
