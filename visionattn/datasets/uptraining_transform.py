"""The key-driven GQA paper's up-training transforms (torchvision), ending in a uint8 tensor.

Train: RandAugment (2 ops, magnitude 9) on the original image, then resize to size x size.
Eval: resize to size x size. Normalisation (mean = std = 0.5) runs batched in the task model's
``ClassificationDataPreprocessor``.
"""
from torchvision import transforms

from ..registry import TRANSFORMS


@TRANSFORMS.register_module(name="UptrainingTransform")
def uptraining_transform(train: bool, input_size: int = 224, num_ops: int = 2, magnitude: int = 9):
    """PIL RGB image -> uint8 tensor (3, input_size, input_size)."""
    steps = [transforms.RandAugment(num_ops=num_ops, magnitude=magnitude)] if train else []
    steps += [transforms.Resize((input_size, input_size)), transforms.PILToTensor()]
    return transforms.Compose(steps)
