"""Cascade of dense encoder-decoder (DED) BEV backbones (HEDNet's, used by ScatterFormer).

Each DED block encodes the BEV map over ``len(down_strides)`` levels of ResNet basic blocks and
decodes it back with transposed convolutions and skip additions; the cascade applies
``num_layers`` such blocks in turn. (B, C_in, H, W) -> (B, dim, H, W); H and W must be divisible
by the product of the strides (4 for the default (1, 2, 2)).
"""
from typing import Sequence

import torch
import torch.nn as nn

from .norms import bn2d as _bn2d


class BasicBlock(nn.Module):
    """ResNet basic block (3x3 conv-BN-ReLU, 3x3 conv-BN, residual, ReLU); ``downsample`` adds a
    strided 1x1 conv-BN on the residual path."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, downsample: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn2d(out_channels, relu=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _bn2d(out_channels, relu=True)  # relu(bn2(conv2(.)) + identity): the add inside the norm
        self.downsample = downsample
        if downsample:
            self.downsample_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _bn2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample_layer(x) if self.downsample else x
        out = self.bn1(self.conv1(x))
        return self.bn2(self.conv2(out), residual=identity)


class DEDBackbone(nn.Module):
    """One dense encoder-decoder: level i = (a strided downsampling block for i > 0) + ``num_sbb[i]``
    basic blocks; the decoder upsamples level by level (ConvTranspose-BN-ReLU), adds the encoder's
    map of that level and normalises (BN)."""

    def __init__(self, in_channels: int, dim: int = 128, num_sbb: Sequence[int] = (2, 1, 1),
                 down_strides: Sequence[int] = (1, 2, 2)):
        super().__init__()
        if len(num_sbb) != len(down_strides):
            raise ValueError(f"num_sbb {tuple(num_sbb)} and down_strides {tuple(down_strides)} differ in length")
        first = [BasicBlock(in_channels, dim, down_strides[0], downsample=True)] if in_channels != dim else []
        first += [BasicBlock(dim, dim) for _ in range(num_sbb[0])]
        self.encoder = nn.ModuleList([nn.Sequential(*first)])
        for i in range(1, len(down_strides)):
            self.encoder.append(nn.Sequential(BasicBlock(dim, dim, down_strides[i], downsample=True),
                                              *[BasicBlock(dim, dim) for _ in range(num_sbb[i])]))
        self.decoder = nn.ModuleList()
        self.decoder_norm = nn.ModuleList()
        for i in range(len(down_strides) - 1, 0, -1):
            s = down_strides[i]
            self.decoder.append(nn.Sequential(nn.ConvTranspose2d(dim, dim, s, stride=s, bias=False),
                                              _bn2d(dim, relu=True)))
            self.decoder_norm.append(_bn2d(dim))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for level in self.encoder:
            x = level(x)
            feats.append(x)
        for up, norm, skip in zip(self.decoder, self.decoder_norm, feats[-2::-1]):
            x = norm(up(x) + skip)
        return x


class CascadeDEDBackbone(nn.Module):
    """``num_layers`` DED blocks applied in turn; (B, in_channels, H, W) -> (B, dim, H, W)."""

    def __init__(self, in_channels: int, dim: int = 128, num_layers: int = 4, num_sbb: Sequence[int] = (2, 1, 1),
                 down_strides: Sequence[int] = (1, 2, 2)):
        super().__init__()
        self.layers = nn.ModuleList(
            DEDBackbone(in_channels if i == 0 else dim, dim, num_sbb, down_strides) for i in range(num_layers))
        self.num_out_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
