"""visionattn: dense prediction and restoration models built around recent attention designs.

``import visionattn`` registers every backbone with timm and every module with the mmengine
registries; optional extras (mmdet, spconv) are imported only by the modules that need them.
"""
__version__ = "0.1.0"

from . import models  # noqa: F401  (registers the networks)
from . import inference  # noqa: F401  (visionattn.inference.predict_disparity, restore_image, ...)
from .factory import create_model, list_models

__all__ = ["create_model", "list_models", "__version__"]
