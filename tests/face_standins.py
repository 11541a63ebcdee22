"""Random-weight stand-ins, saved in the real file formats, for the pretrained networks the face
losses and metrics load (no download in tests): torchvision's VGG16 (features only), a small ArcFace
of the released layout (``module.`` prefix, as the released DataParallel file), pytorch-fid's FID
Inception and BasicSR-format FID statistics."""
from pathlib import Path

import numpy as np
import torch

ARCFACE_TINY = dict(layers=(1, 1, 1, 1), widths=(8, 8, 8, 8), embed_dim=16)


def write_vgg16(path: Path) -> Path:
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, path)
    return path


def write_arcface(path: Path) -> Path:
    from visionattn.models.restoration.arcface import ResNetArcFace

    torch.manual_seed(0)
    torch.save({f"module.{k}": v for k, v in ResNetArcFace(**ARCFACE_TINY).state_dict().items()}, path)
    return path


def write_fid_inception(path: Path) -> Path:
    from visionattn.evaluation.face_metrics import fid_inception_network

    torch.manual_seed(0)
    torch.save(fid_inception_network().state_dict(), path)
    return path


def write_fid_stats(path: Path, dim: int = 2048) -> Path:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((dim, 8)) * 0.1
    torch.save(dict(mean=rng.standard_normal(dim) * 0.1, cov=a @ a.T + 1e-3 * np.eye(dim)), path)
    return path
