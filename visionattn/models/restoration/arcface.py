"""ArcFace ResNet (IR blocks) identity embedder, as GFPGAN/RestoreFormer use it for the identity
loss and the identity-distance metric.

``ResNetArcFace`` (IRBlock, layers [2, 2, 2, 2], no squeeze-excitation: ``arcface_resnet18.pth``
of GFPGAN's v0.1.0 release): (B, 1, 128, 128) grey faces in [0, 1] -> (B, 512) embeddings.
Module names follow the released state dict, so it loads strictly (a ``module.`` prefix from
DataParallel is stripped). ``widths``/``layers``/``embed_dim`` make smaller stand-ins with the
same layout for tests.
"""
from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCFACE_URL = "https://github.com/TencentARC/GFPGAN/releases/download/v0.1.0/arcface_resnet18.pth"


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class IRBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride) -> BN, + shortcut, -> PReLU (one shared PReLU)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cin)
        self.bn1 = nn.BatchNorm2d(cin)
        self.prelu = nn.PReLU()
        self.conv2 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        return self.prelu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetArcFace(nn.Module):
    """(B, 1, S, S) grey faces in [0, 1] (S = ``input_size``, 128) -> (B, embed_dim) embeddings."""

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512),
                 embed_dim: int = 512, input_size: int = 128):
        super().__init__()
        self.input_size = input_size
        self.conv1 = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(2, 2)
        cin = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = [IRBlock(cin, w, 1 if i == 0 else 2)] + [IRBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.num_layers = len(layers)
        self.bn4 = nn.BatchNorm2d(cin)
        self.dropout = nn.Dropout()
        side = input_size // 2 ** len(layers)  # maxpool + (len - 1) stride-2 stages
        self.fc5 = nn.Linear(cin * side * side, embed_dim)
        self.bn5 = nn.BatchNorm1d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"ArcFace takes (B, 1, {self.input_size}, {self.input_size}) grey faces; got "
                             f"{tuple(x.shape)} (see gray_resize)")
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.dropout(self.bn4(x))
        return self.bn5(self.fc5(x.flatten(1)))


def gray_resize(images: torch.Tensor, size: int = 128, weights=(0.2989, 0.5870, 0.1140)) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, size, size): ``weights`` applied to channels 0, 1, 2 in that order, then
    bilinear resize (align_corners=False). RGB input gives the usual luma."""
    w = torch.tensor(weights, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    gray = (images * w).sum(1, keepdim=True)
    return F.interpolate(gray, (size, size), mode="bilinear", align_corners=False)


def load_arcface(path: Union[str, Path], **kwargs) -> ResNetArcFace:
    """An eval-mode, frozen :class:`ResNetArcFace` with the weights of ``path`` (strict).

    ``kwargs`` go to the constructor (the released model takes none). A missing file raises
    FileNotFoundError naming where the official file is published.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ArcFace weights {str(path)!r} not found. Download arcface_resnet18.pth from "
                                f"{ARCFACE_URL} and pass its path (nothing is downloaded automatically)")
    from ...hub import extract_state_dict, read_checkpoint

    state = extract_state_dict(read_checkpoint(path))
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model = ResNetArcFace(**kwargs)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"{str(path)!r} does not fit ResNetArcFace({kwargs}): missing keys "
                           f"{result.missing_keys[:6]}, unexpected keys {result.unexpected_keys[:6]}")
    return model.eval().requires_grad_(False)
