"""Readers of the real on-disk dataset formats, and their transforms.

Every module here is imported (so its DATASETS/TRANSFORMS registrations run): a family adds a
reader by dropping a file in, without editing this one.
"""
from ..models.registry import import_submodules
from .classification_transforms import classification_transform, model_data_config
from .imagenet import ImageNetFolder

import_submodules(__name__)

__all__ = ["ImageNetFolder", "classification_transform", "model_data_config"]
