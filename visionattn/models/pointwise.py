"""A 1x1 convolution as a matrix product, for the networks that run them in channels_last."""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["pointwise"]


@torch.fx.wrap  # branches on the memory layout: one node under torch.fx (timm's FX feature extraction)
def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """1x1 conv, (B, C_in, H, W) x (C_out, C_in, 1, 1) -> (B, C_out, H, W).

    On a channels_last input the NHWC view is free and ``F.linear`` adds the bias in the GEMM's
    epilogue (cuBLAS); cuDNN's channels_last 1x1 conv adds it in a separate pass over the output.
    The result is channels_last as conv2d's would be. Other layouts take ``F.conv2d``.
    """
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, bias)
