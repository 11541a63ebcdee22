"""Readers of the real on-disk dataset formats, and their transforms."""
from .classification_transforms import classification_transform, model_data_config
from .imagenet import ImageNetFolder

__all__ = ["ImageNetFolder", "classification_transform", "model_data_config"]
