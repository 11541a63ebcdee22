"""BatchNorm of the LiDAR networks (OpenPCDet's settings: eps 1e-3, momentum 0.01).

In eval mode the normalisation is one multiply-add with the folded running statistics. cuDNN's
inference kernels are slow on these shapes: on an H200, fp32, its channels-last BatchNorm2d kernel
takes about 0.2 ms on a (1, 128, 240, 240) BEV map (about 14x the time to read and write it) and its
BatchNorm1d kernel about 3x the multiply-add on (100k, 128) voxel features. Training mode is
PyTorch's (batch statistics, running-average updates).
"""
import torch
import torch.nn as nn


class _FoldedEvalBatchNorm:
    """Mixin for ``nn.BatchNorm{1,2}d``: eval forward = ``x * scale + shift`` per channel (dim 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.track_running_stats or not self.affine or x.dim() < 2:
            return super().forward(x)
        self._check_input_dim(x)
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        shape = (-1,) + (1,) * (x.dim() - 2)  # broadcast over dim 1; keeps x's memory format
        return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))


class BatchNorm1d(_FoldedEvalBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with the folded eval forward (voxel or point features (N, C))."""


class BatchNorm2d(_FoldedEvalBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with the folded eval forward (BEV maps (B, C, H, W), any memory format)."""


def bn1d(dim: int) -> BatchNorm1d:
    return BatchNorm1d(dim, eps=1e-3, momentum=0.01)


def bn2d(dim: int) -> BatchNorm2d:
    return BatchNorm2d(dim, eps=1e-3, momentum=0.01)
