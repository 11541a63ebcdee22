"""Dynamic voxelisation and the voxel feature encoder of OpenPCDet's ``DynamicVoxelVFE``.

Every point inside the range is kept (no per-voxel point limit): a point gets the voxel
``floor((xyz - range_min) / voxel_size)``, is described by 11 numbers (its own x, y, z and features,
its offset from the mean of its voxel's points, its offset from the voxel centre) and two
PointNet layers with a max over each voxel turn these into one feature vector per voxel.
Pure PyTorch; runs on any device.
"""
from typing import Sequence, Tuple

import torch
import torch.nn as nn

from .norms import bn1d


def scatter_max(x: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
    """Per-group maximum: out[g] = max over rows i with index[i] == g of x[i] (x (N, C) -> (num, C))."""
    out = x.new_zeros(num, x.shape[1])
    return out.scatter_reduce_(0, index[:, None].expand_as(x), x, reduce="amax", include_self=False)


def scatter_mean(x: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
    """Per-group mean of the rows of x (N, C) -> (num, C)."""
    out = x.new_zeros(num, x.shape[1])
    return out.scatter_reduce_(0, index[:, None].expand_as(x), x, reduce="mean", include_self=False)


class PFNLayer(nn.Module):
    """Linear (no bias) -> BatchNorm1d -> ReLU per point, then the max over each voxel; all but the
    last layer return [point feature | its voxel's max] (so their linear has half the width)."""

    def __init__(self, in_channels: int, out_channels: int, last_layer: bool = False):
        super().__init__()
        self.last_layer = last_layer
        width = out_channels if last_layer else out_channels // 2
        self.linear = nn.Linear(in_channels, width, bias=False)
        self.norm = bn1d(width, relu=True)

    def forward(self, x: torch.Tensor, voxel_of_point: torch.Tensor, num_voxels: int) -> torch.Tensor:
        x = self.norm(self.linear(x))  # ReLU(BN(linear(x))), (N, width)
        x_max = scatter_max(x, voxel_of_point, num_voxels)  # (M, width)
        if self.last_layer:
            return x_max
        return torch.cat([x, x_max[voxel_of_point]], dim=1)  # (N, 2 * width)


class DynamicVoxelVFE(nn.Module):
    """Points (N, 1 + 3 + C) ``[batch, x, y, z, features...]`` -> voxel features (M, filters[-1]) and
    voxel coordinates (M, 4) int32 ``[batch, z, y, x]``.

    Args:
        num_point_features: 3 + C, the columns after the batch index (Waymo: x, y, z, intensity,
            elongation = 5).
        voxel_size, point_cloud_range: (vx, vy, vz) and (x0, y0, z0, x1, y1, z1) in metres.
        num_filters: output widths of the PointNet layers.

    Voxels come out sorted by (batch, x, y, z), the order OpenPCDet's version produces. Points
    outside the range are dropped; coordinates are computed in at least float32 whatever the model dtype.
    """

    def __init__(self, num_point_features: int, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                 num_filters: Sequence[int] = (64, 64)):
        super().__init__()
        self.num_point_features = num_point_features
        widths = [num_point_features + 6] + list(num_filters)  # + offsets to the voxel mean and centre
        self.pfn_layers = nn.ModuleList(
            PFNLayer(widths[i], widths[i + 1], last_layer=i == len(widths) - 2) for i in range(len(widths) - 1))
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.grid_size = grid_size(voxel_size, point_cloud_range)  # (X, Y, Z)
        self.num_out_features = num_filters[-1]
        self._constant_cache = {}

    def _constants(self, like: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(range minimum, voxel size, voxel centre offset) in ``like``'s dtype and the grid size (int64), on its
        device; made once per (device, dtype): a tensor built from Python numbers is a host-to-device copy,
        after which PyTorch waits for the GPU."""
        key = (like.device, like.dtype)
        if key not in self._constant_cache:
            centre = [v / 2 + lo for v, lo in zip(self.voxel_size, self.point_cloud_range)]
            self._constant_cache[key] = tuple(torch.tensor(v, device=like.device, dtype=like.dtype) for v in (
                self.point_cloud_range[:3], self.voxel_size, centre)) + (torch.tensor(self.grid_size, device=like.device),)
        return self._constant_cache[key]

    def voxelize(self, points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(points in range (n, 1 + 3 + C) float32, their (x, y, z) voxel (n, 3), voxel of each point (n,),
        unique voxel keys (M,))."""
        pts = points.to(torch.promote_types(points.dtype, torch.float32))  # fp16/bf16 cannot hold coordinates
        lo, size, _, grid = self._constants(pts)
        coords = torch.floor((pts[:, 1:4] - lo) / size).long()  # (N, 3) x, y, z
        inside = ((coords >= 0) & (coords < grid)).all(dim=1)
        pts, coords = pts[inside], coords[inside]
        X, Y, Z = self.grid_size
        key = ((pts[:, 0].long() * X + coords[:, 0]) * Y + coords[:, 1]) * Z + coords[:, 2]
        unique_keys, voxel_of_point = torch.unique(key, return_inverse=True)
        return pts, coords, voxel_of_point, unique_keys

    def forward(self, points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pts, coords, voxel_of_point, keys = self.voxelize(points)
        num_voxels = keys.numel()
        xyz = pts[:, 1:4]
        f_cluster = xyz - scatter_mean(xyz, voxel_of_point, num_voxels)[voxel_of_point]
        _, size, centre_offset, _ = self._constants(xyz)
        f_center = xyz - (coords.to(xyz.dtype) * size + centre_offset)
        x = torch.cat([pts[:, 1:], f_cluster, f_center], dim=1)  # (n, 3 + C + 6)
        x = x.to(self.pfn_layers[0].linear.weight.dtype)
        for pfn in self.pfn_layers:
            x = pfn(x, voxel_of_point, num_voxels)
        X, Y, Z = self.grid_size
        voxel_coords = torch.stack([keys // (X * Y * Z), keys % Z, (keys // Z) % Y, (keys // (Y * Z)) % X], dim=1)
        return x, voxel_coords.int()  # (M, C_out), (M, 4) [batch, z, y, x]


def grid_size(voxel_size: Sequence[float], point_cloud_range: Sequence[float]) -> Tuple[int, int, int]:
    """Voxels along (x, y, z): round((max - min) / voxel size), as OpenPCDet computes it."""
    return tuple(int(round((point_cloud_range[i + 3] - point_cloud_range[i]) / voxel_size[i])) for i in range(3))
