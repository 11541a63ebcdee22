"""Batch normalisation + random erasing on the device (timm's prefetcher, as an mmengine preprocessor)."""
from typing import Dict, Optional, Sequence

from mmengine.model import ImgDataPreprocessor
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing

from ..registry import MODELS


@MODELS.register_module()
class ClassificationDataPreprocessor(ImgDataPreprocessor):
    """uint8 images (B, 3, H, W) -> normalised float images on the model's device.

    Args:
        mean / std: per-channel, in [0, 1] units (timm's convention); default ImageNet's.
            ``model_name`` instead takes them from that timm model's pretrained config.
        random_erasing: kwargs of ``timm.data.random_erasing.RandomErasing`` applied to each
            training batch after normalisation (DeiT: ``dict(probability=0.25, mode='pixel')``).
    """

    def __init__(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 model_name: Optional[str] = None, random_erasing: Optional[Dict] = None, **kwargs):
        if model_name is not None:
            from ..datasets.classification_transforms import model_data_config

            data_cfg = model_data_config(model_name)
            mean, std = mean or data_cfg["mean"], std or data_cfg["std"]
        mean, std = mean or IMAGENET_DEFAULT_MEAN, std or IMAGENET_DEFAULT_STD
        super().__init__(mean=[255 * m for m in mean], std=[255 * s for s in std], **kwargs)
        self.random_erasing = random_erasing

    def forward(self, data: dict, training: bool = False) -> dict:
        data = super().forward(data, training)
        if training and self.random_erasing:
            inputs = data["inputs"]
            RandomErasing(**self.random_erasing, device=inputs.device)(inputs)  # in place
        return data
