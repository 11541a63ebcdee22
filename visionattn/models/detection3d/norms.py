"""BatchNorm of the LiDAR networks (OpenPCDet's settings: eps 1e-3, momentum 0.01), with the ReLU
and the residual add that follow it in one eval-mode pass.

In eval mode a :class:`BatchNorm1d`/:class:`BatchNorm2d` runs :func:`visionattn.ops.batch_norm_act.batch_norm_act`:
``act(BN(x) + residual)`` reading and writing the map once (a Triton kernel on CUDA for (N, C)
features and channels_last maps). cuDNN's inference kernels are slow on these shapes: on an H200,
fp32, its channels-last BatchNorm2d kernel takes about 0.2 ms on a (1, 128, 240, 240) BEV map
(about 14x the time to read and write it) and its BatchNorm1d kernel about 3x a multiply-add on
(100k, 128) voxel features; the ReLU and the add are passes of their own. Training mode is
PyTorch's (batch statistics, running-average updates), then the add and the ReLU.

``relu=True`` makes the norm apply the ReLU that follows it in the official networks (the
``nn.ReLU`` module is then left out: it holds no weights, so checkpoints are unchanged).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops.batch_norm_act import batch_norm_act


class _FusedBatchNorm:
    """Mixin for ``nn.BatchNorm{1,2}d``: ``forward(x, residual=None) = act(BN(x) + residual)``."""

    def __init__(self, num_features: int, *args, relu: bool = False, **kwargs):
        super().__init__(num_features, *args, **kwargs)
        self.relu = relu

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.training or not self.track_running_stats or not self.affine or x.dim() not in (2, 4):
            out = super().forward(x)
            out = out if residual is None else out + residual
            return F.relu(out) if self.relu else out
        self._check_input_dim(x)
        return batch_norm_act(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps, residual,
                              "relu" if self.relu else None)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")


class BatchNorm1d(_FusedBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with the fused eval forward (voxel or point features (N, C))."""


class BatchNorm2d(_FusedBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with the fused eval forward (BEV maps (B, C, H, W), any memory format)."""


def bn1d(dim: int, relu: bool = False) -> BatchNorm1d:
    return BatchNorm1d(dim, eps=1e-3, momentum=0.01, relu=relu)


def bn2d(dim: int, relu: bool = False) -> BatchNorm2d:
    return BatchNorm2d(dim, eps=1e-3, momentum=0.01, relu=relu)
