"""The timm/DeiT image-classification transforms, as TRANSFORMS entries for configs.

Train: RandomResizedCrop + horizontal flip + RandAugment (+ colour jitter when no auto-augment).
Eval: resize to ``size / crop_pct`` + center crop. Both end in a uint8 tensor (3, H, W):
normalisation and random erasing run batched on the device in
:class:`visionattn.engine.ClassificationDataPreprocessor` (timm's "prefetcher" split).
"""
from typing import Dict, Optional, Sequence

from timm.data import create_transform, resolve_data_config
from timm.models import get_pretrained_cfg

from ..registry import TRANSFORMS


def model_data_config(model_name: str) -> Dict:
    """``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct`` of a timm model's pretrained cfg.

    Falls back to timm's ImageNet defaults for fields the model does not set.
    """
    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        raise ValueError(f"{model_name!r} is not a registered timm model; see visionattn.list_models()")
    return resolve_data_config(pretrained_cfg=cfg.to_dict())


@TRANSFORMS.register_module(name="ClassificationTransform")
def classification_transform(
    train: bool,
    model_name: Optional[str] = None,
    input_size: Optional[int] = None,
    interpolation: Optional[str] = None,
    crop_pct: Optional[float] = None,
    scale: Sequence[float] = (0.08, 1.0),
    hflip: float = 0.5,
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
    color_jitter: float = 0.4,
):
    """PIL image -> uint8 tensor (3, size, size), DeiT defaults.

    ``input_size``, ``interpolation`` and ``crop_pct`` default to ``model_name``'s pretrained
    config when it is given, else to 224 / bicubic / 0.875. ``auto_augment`` is a timm policy
    string (``None`` turns it off).
    """
    data_cfg = model_data_config(model_name) if model_name else {}
    size = input_size or data_cfg.get("input_size", (3, 224, 224))[-1]
    interpolation = interpolation or data_cfg.get("interpolation", "bicubic")
    crop_pct = crop_pct or data_cfg.get("crop_pct", 0.875)
    return create_transform(
        size,
        is_training=train,
        scale=tuple(scale),
        hflip=hflip,
        auto_augment=auto_augment if train else None,
        color_jitter=color_jitter,
        interpolation=interpolation,
        crop_pct=crop_pct,
        use_prefetcher=True,  # stop at a uint8 tensor
    )
