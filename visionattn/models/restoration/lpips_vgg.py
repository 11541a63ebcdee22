"""LPIPS with the VGG16 trunk (Zhang et al. 2018), from the ``lpips`` package, built without any
download: the trunk's ImageNet weights come from a torchvision ``vgg16-397923af.pth`` file the
user points at, the linear heads from the package's own ``weights/v0.1/vgg.pth`` (or a given file).

``build_lpips_vgg(vgg_path)`` -> a frozen, eval-mode ``lpips.LPIPS``: ``model(x, y)`` on (B, 3, H, W)
RGB images in [-1, 1] -> (B, 1, 1, 1) distances. Needs the ``face`` extra (``lpips``).
"""
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from ...extras import require_extra

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILE = "vgg16-397923af.pth"


def default_vgg16_path() -> Path:
    """Where torchvision keeps its VGG16 download: ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def build_lpips_vgg(vgg_path: Optional[Union[str, Path]] = None, lin_path: Optional[Union[str, Path]] = None) -> nn.Module:
    """LPIPS-VGG with the trunk weights of ``vgg_path`` (default :func:`default_vgg16_path`).

    ``vgg_path``: torchvision's VGG16 state dict (``features.<i>.weight`` keys; the classifier, if
    present, is ignored). ``lin_path``: the LPIPS linear heads (default: the ``lpips`` package's
    v0.1 VGG heads). A missing file raises FileNotFoundError with the download address.
    """
    path = Path(vgg_path) if vgg_path is not None else default_vgg16_path()
    if not path.is_file():
        raise FileNotFoundError(f"VGG16 weights for LPIPS not found at {str(path)!r}. Download {VGG16_URL} and pass "
                                f"its path (vgg_path=...), or put it there; nothing is downloaded automatically")
    lpips = require_extra("lpips")
    import warnings

    with warnings.catch_warnings():  # torchvision's notice about the 'pretrained' argument lpips passes
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False,
                            model_path=None if lin_path is None else str(lin_path))
    from ...hub import extract_state_dict, read_checkpoint

    state = extract_state_dict(read_checkpoint(path))
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    trunk = {}
    for name, _ in model.net.named_parameters():  # slice<k>.<index in vgg16.features>.<weight|bias>
        key = name.split(".", 1)[1]
        if key not in features:
            raise RuntimeError(f"{str(path)!r} is not a torchvision VGG16 state dict: features.{key} is missing")
        trunk[name] = features[key]
    model.net.load_state_dict(trunk, strict=True)
    return model.eval().requires_grad_(False)
