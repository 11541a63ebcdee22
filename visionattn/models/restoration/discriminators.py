"""Discriminators of face-restoration GAN training (RestoreFormer / RestoreFormer++, GFPGAN).

- :class:`PatchGANDiscriminator`: pix2pix's N-layer PatchGAN as taming-transformers builds it
  (4x4 convolutions, stride 2 then 1, BatchNorm, LeakyReLU 0.2, normal(0, 0.02) initialisation):
  (B, 3, H, W) -> (B, 1, H/8 - 2, W/8 - 2) logits for ``num_layers=3``.
- :class:`FacialComponentDiscriminator`: GFPGAN's eye/mouth discriminator, StyleGAN2 layers
  (equalised-learning-rate 3x3 convolutions, blur [1, 3, 3, 1] before each stride-2 convolution,
  bias + LeakyReLU(0.2) x sqrt(2)): (B, 3, h, w) crop -> ((B, 1, h/4, w/4) logits, [two feature maps]).

Module names follow the official ones (``main.<i>``; ``conv1.0.weight``, ``conv1.1.bias``...) so
the ``loss.discriminator.*`` / ``loss.net_d_*`` tensors of an official Lightning checkpoint load.
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchGANDiscriminator(nn.Module):
    """N-layer PatchGAN (taming ``NLayerDiscriminator``, BatchNorm variant).

    Args:
        in_channels: image channels. width: channels of the first layer (``ndf``), doubled per layer
            up to 8x. num_layers: stride-2 layers (3 -> a 70x70 receptive field).
    """

    def __init__(self, in_channels: int = 3, width: int = 64, num_layers: int = 3):
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(width * prev, width * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(width * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(width * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class EqualConv2d(nn.Module):
    """Convolution whose N(0, 1) weight is scaled by 1/sqrt(fan_in) at run time (StyleGAN2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)


class Blur(nn.Module):
    """Depth-wise FIR low-pass with the normalised outer product of ``kernel``, zero padding ``pad``."""

    def __init__(self, kernel=(1, 3, 3, 1), pad: Tuple[int, int] = (2, 2)):
        super().__init__()
        k = torch.tensor(kernel, dtype=torch.float32)
        k = k[None, :] * k[:, None]
        self.register_buffer("kernel", k / k.sum())
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (self.pad[0], self.pad[1], self.pad[0], self.pad[1]))
        weight = self.kernel.flip(0, 1).to(x.dtype)[None, None].expand(c, 1, -1, -1)
        return F.conv2d(x, weight, groups=c)


class FusedLeakyReLU(nn.Module):
    """``leaky_relu(x + bias, 0.2) * sqrt(2)`` (StyleGAN2's activation with the layer's bias)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)


class ConvLayer(nn.Sequential):
    """StyleGAN2 discriminator layer: [Blur ->] EqualConv2d (stride 2 when downsampling) [-> FusedLeakyReLU]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, downsample: bool = False,
                 activate: bool = True):
        layers: List[nn.Module] = []
        if downsample:
            p = (4 - 2) + (kernel_size - 1)  # blur taps - factor + kernel - 1
            layers.append(Blur(pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channels))
        super().__init__(*layers)


class FacialComponentDiscriminator(nn.Module):
    """GFPGAN's facial-component (eye / mouth) discriminator.

    ``forward(x, return_feats=False)`` -> ``(logits (B, 1, h/4, w/4), feats)`` where ``feats`` is the
    list of the 128-channel (1/2 size) and 256-channel (1/4 size) maps when ``return_feats`` (for a
    Gram-matrix style loss), else None. ``width`` scales the channels (64 in the released models).
    """

    def __init__(self, width: int = 64):
        super().__init__()
        w = width
        self.conv1 = ConvLayer(3, w, 3)
        self.conv2 = ConvLayer(w, 2 * w, 3, downsample=True)
        self.conv3 = ConvLayer(2 * w, 2 * w, 3)
        self.conv4 = ConvLayer(2 * w, 4 * w, 3, downsample=True)
        self.conv5 = ConvLayer(4 * w, 4 * w, 3)
        self.final_conv = ConvLayer(4 * w, 1, 3, activate=False)

    def forward(self, x: torch.Tensor, return_feats: bool = False) -> Tuple[torch.Tensor, Optional[List[torch.Tensor]]]:
        f1 = self.conv3(self.conv2(self.conv1(x)))
        f2 = self.conv5(self.conv4(f1))
        return self.final_conv(f2), ([f1, f2] if return_feats else None)
