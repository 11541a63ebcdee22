"""All networks of the library. Importing this registers them (timm + visionattn registries)."""
from ..registry import NETWORKS, import_submodules, register_network
from .backbones.gqa_vit import convert_mha_to_gqa

for _pkg in ("backbones", "stereo", "detection3d", "restoration"):
    import_submodules(f"{__name__}.{_pkg}")

__all__ = ["NETWORKS", "register_network", "convert_mha_to_gqa"]
