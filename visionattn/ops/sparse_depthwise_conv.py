"""Submanifold depth-wise sparse convolution (ScatterFormer's cross-window interaction), the op's math once.

Voxels are rows of ``features`` (N, C) at integer coordinates ``coords`` (N, 4) = (batch, z, y, x).
A submanifold convolution computes outputs at the input voxels only; a depth-wise one mixes no
channels. With K = kz * ky * kx kernel offsets (row-major over (kz, ky, kx), centre subtracted):

    out[o, c] = sum_k weight[k, c] * features[pairs[k, o], c]     (terms with pairs[k, o] = -1 skipped)

where ``pairs[k, o]`` is the voxel at ``coords[o] + offset_k`` (PyTorch's cross-correlation
convention, as spconv's SubMConv3d). :func:`submanifold_pairs` builds the pairs in plain PyTorch
(sort + searchsorted on a linearised key, CPU or GPU); one set serves every layer of a stage.

Official weights: the official ``SparseDwConv`` stores ``weight`` as (kz, ky, kx, C) and feeds the
same "pairs[k, out] = input" table (spconv's implicit-GEMM ``pair_fwd``) to its CUDA kernel, with
the kernel offsets in the same row-major order, so ``weight.reshape(-1, C)`` is ours unchanged
(ScatterFormer: ``conv_k`` (3, 3, 3, 32) -> (27, 32), ``conv_h`` (1, 1, 13, 32) -> (13, 32) with
kernel (1, 1, 13), ``conv_w`` (1, 13, 1, 32) -> (13, 32) with kernel (1, 13, 1)).

Implementations (``impl=``):

- ``"triton"``: a gather kernel per output tile for the forward; the backward is one kernel that
  gathers the input gradient as the same convolution with the kernel flipped (submanifold pairs
  are symmetric: ``pairs[k, o] = i`` exactly when ``pairs[K-1-k, i] = o``, so no atomics) and
  per-tile partial weight gradients, summed after. fp32/fp16/bf16 features, fp32 accumulation,
  weight in the features' dtype or fp32. CUDA (CPU only under ``TRITON_INTERPRET=1``, for tests).
- ``"reference"``: a loop over the K offsets gathering rows (with a zero row for absent
  neighbours), computed in fp32 (fp64 for fp64 inputs); autograd differentiates it, so it also
  accepts pairs that are not symmetric (e.g. a strided convolution's).
"""
from typing import Sequence, Tuple

import torch

from ._checks import param_dtypes, check_params, check_tensors
from ._sparse_depthwise_conv_triton import sparse_depthwise_conv_triton_autograd
from ._triton import can_run
from .dispatch import pick

IMPLS: Tuple[str, ...] = ("triton", "reference")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _triple(name: str, value: Sequence[int]) -> Tuple[int, int, int]:
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"submanifold_pairs: {name} must have 3 entries (z, y, x); got {value}")
    return value


def kernel_offsets(kernel_size: Sequence[int], device=None) -> torch.Tensor:
    """(K, 3) offsets (dz, dy, dx) from the kernel centre, row-major over (kz, ky, kx)."""
    axes = [torch.arange(k, device=device) - k // 2 for k in kernel_size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def submanifold_pairs(coords: torch.Tensor, spatial_shape: Sequence[int], kernel_size: Sequence[int]) -> torch.Tensor:
    """Neighbour table of a submanifold convolution.

    Args:
        coords: (N, 4) integer voxel coordinates (batch, z, y, x), unique, inside ``spatial_shape``.
        spatial_shape: (Z, Y, X) grid size.
        kernel_size: (kz, ky, kx), odd.

    Returns:
        (K, N) int64, K = kz * ky * kx: ``pairs[k, o]`` = row of the voxel at ``coords[o] + offset_k``
        (offsets row-major over (kz, ky, kx), centre subtracted), or -1 where there is none or it is
        outside the grid. Coordinates are checked (range, uniqueness) when on CPU only: checking CUDA
        values would wait for the GPU.
    """
    check_tensors("submanifold_pairs", dict(coords=coords), floating=False)
    shape = _triple("spatial_shape", spatial_shape)
    kernel = _triple("kernel_size", kernel_size)
    if any(k < 1 or k % 2 == 0 for k in kernel):
        raise ValueError(f"submanifold_pairs: kernel_size must be odd and positive (a centred submanifold kernel); "
                         f"got {kernel}")
    if any(s < 1 for s in shape):
        raise ValueError(f"submanifold_pairs: spatial_shape must be positive; got {shape}")
    if coords.dim() != 2 or coords.shape[1] != 4 or coords.is_floating_point() or coords.is_complex():
        raise ValueError(f"submanifold_pairs: coords must be an (N, 4) integer tensor (batch, z, y, x); "
                         f"got shape {tuple(coords.shape)} and dtype {coords.dtype}")
    n = coords.shape[0]
    n_offsets = kernel[0] * kernel[1] * kernel[2]
    if n == 0:
        return torch.empty(n_offsets, 0, dtype=torch.int64, device=coords.device)
    c = coords.long()
    bounds = torch.tensor(shape, device=c.device)

    def linear(batch, zyx):  # row-major key over (batch, Z, Y, X)
        return ((batch * shape[0] + zyx[..., 0]) * shape[1] + zyx[..., 1]) * shape[2] + zyx[..., 2]

    key = linear(c[:, 0], c[:, 1:])  # (N,)
    sorted_key, order = torch.sort(key)
    if c.device.type == "cpu" and not torch.compiler.is_compiling():  # values: where no GPU sync is needed
        if bool((c[:, 0] < 0).any()) or bool(((c[:, 1:] < 0) | (c[:, 1:] >= bounds)).any()):
            raise ValueError(f"submanifold_pairs: coords outside the grid {shape} (or a negative batch index)")
        if bool((sorted_key[1:] == sorted_key[:-1]).any()):
            raise ValueError("submanifold_pairs: coords has duplicate voxels; merge them first (e.g. torch.unique "
                             "with return_inverse and a scatter of the features)")
    neighbour = c[None, :, 1:] + kernel_offsets(kernel, c.device)[:, None, :]  # (K, N, 3)
    inside = ((neighbour >= 0) & (neighbour < bounds)).all(-1)  # (K, N)
    wanted = linear(c[None, :, 0], neighbour)  # (K, N)
    pos = torch.searchsorted(sorted_key, wanted).clamp_(max=n - 1)
    found = inside & (sorted_key[pos] == wanted)
    return torch.where(found, order[pos], torch.full_like(pos, -1))


def _check(features: torch.Tensor, weight: torch.Tensor, pairs: torch.Tensor) -> None:
    name = "sparse_depthwise_conv"
    check_tensors(name, dict(features=features))
    check_params(name, features, dict(weight=weight), param_dtypes(features))
    check_tensors(name, dict(features=features, pairs=pairs), floating=False, same_dtype=False)
    if features.dim() != 2 or weight.dim() != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(f"{name}: features must be (N, C) and weight (K, C) with one C; got {tuple(features.shape)} "
                         f"and {tuple(weight.shape)} (official (kz, ky, kx, C) weights: weight.reshape(-1, C))")
    if features.dtype not in _FLOATS or weight.dtype not in (features.dtype, torch.float32):
        raise ValueError(f"{name}: features must be floating and weight of the same dtype or float32; got "
                         f"{features.dtype} and {weight.dtype}")
    if pairs.dim() != 2 or pairs.shape != (weight.shape[0], features.shape[0]) or \
            pairs.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: pairs must be a (K, N) = ({weight.shape[0]}, {features.shape[0]}) int64/int32 "
                         f"neighbour table from submanifold_pairs; got shape {tuple(pairs.shape)}, dtype {pairs.dtype}")
    if not (features.device == weight.device == pairs.device):
        raise ValueError(f"{name}: features, weight and pairs must be on one device; got {features.device}, "
                         f"{weight.device}, {pairs.device}")


def _reference(features, weight, pairs):
    n, c = features.shape
    acc = torch.float64 if features.dtype == torch.float64 else torch.float32
    padded = torch.cat([features.to(acc), features.new_zeros(1, c, dtype=acc)])  # row N: absent neighbour
    index = torch.where(pairs >= 0, pairs.long(), n)  # (K, N)
    out = features.new_zeros(pairs.shape[1], c, dtype=acc)
    for k in range(pairs.shape[0]):
        out = out + padded[index[k]] * weight[k].to(acc)  # (N, C) * (C,)
    return out.to(features.dtype)


def _triton_supports(features: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the Triton kernels can run these inputs (CUDA, or the CPU interpreter for tests)."""
    return can_run(features) and weight.device == features.device


def _triton(features, weight, pairs):
    return sparse_depthwise_conv_triton_autograd(features, weight, pairs)


def sparse_depthwise_conv(features: torch.Tensor, weight: torch.Tensor, pairs: torch.Tensor,
                          impl: str = "auto") -> torch.Tensor:
    """Depth-wise submanifold sparse convolution.

    Args:
        features: (N, C) voxel features (rows may be strided, e.g. a channel slice of a wider tensor).
        weight: (K, C) per-offset, per-channel weights (offsets as in :func:`submanifold_pairs`), in the
            features' dtype or float32.
        pairs: (K, N) int64 (or int32) neighbour table from :func:`submanifold_pairs`.
        impl: ``"auto"`` (triton on CUDA, reference elsewhere), ``"triton"`` or ``"reference"``.

    Returns:
        (N, C) in the features' dtype: ``out[o, c] = sum_k weight[k, c] * features[pairs[k, o], c]``.
    """
    _check(features, weight, pairs)
    impl = pick("sparse_depthwise_conv", impl, {"triton": _triton_supports(features, weight), "reference": True})
    fn = _triton if impl == "triton" else _reference
    return fn(features, weight, pairs)


def voxel_coords(n_voxels: int, spatial_shape: Sequence[int] = (32, 480, 480), seed: int = 0) -> torch.Tensor:
    """(N, 4) unique (batch 0, z, y, x) coordinates of a synthetic LiDAR frame: occupied BEV cells much
    denser near the sensor (the grid centre), each holding a stack of 1-6 voxels from about the ground level;
    rows grouped by 12 x 12 BEV window like ScatterFormer's sorted voxels."""
    z_size, y_size, x_size = _triple("spatial_shape", spatial_shape)
    g = torch.Generator().manual_seed(seed)
    # candidate cells at range R u^2 (BEV density falling as r^-1.5), first occurrences kept in order
    m = n_voxels + 64
    r = torch.rand(m, generator=g) ** 2 * (min(y_size, x_size) / 2)
    angle = torch.rand(m, generator=g) * 2 * torch.pi
    y = (y_size / 2 + r * angle.sin()).long().clamp(0, y_size - 1)
    x = (x_size / 2 + r * angle.cos()).long().clamp(0, x_size - 1)
    unique, inverse = torch.unique(y * x_size + x, return_inverse=True)
    first = torch.full(unique.shape, m).scatter_reduce(0, inverse, torch.arange(m), "amin")
    cells = unique[first.argsort()]
    height = torch.randint(1, 7, cells.shape, generator=g).clamp(max=z_size)
    base = (z_size // 4 + torch.randint(0, 3, cells.shape, generator=g)).clamp(max=z_size - height)  # near ground
    cells, height, base = (t[: int((height.cumsum(0) < n_voxels).sum()) + 1] for t in (cells, height, base))
    if int(height.sum()) < n_voxels:
        raise ValueError(f"voxel_coords: {n_voxels} voxels do not fit the grid {spatial_shape}")
    level = torch.arange(int(height.max()))
    keep = level[None, :] < height[:, None]  # (cells, levels): the stack of each cell
    z = (base[:, None] + level[None, :])[keep][:n_voxels]
    cell = cells[:, None].expand_as(keep)[keep][:n_voxels]
    zyx = torch.stack([z, cell // x_size, cell % x_size], 1)
    window = (zyx[:, 1] // 12) * x_size + zyx[:, 2] // 12  # rows ordered by 12 x 12 BEV window, as in the network
    zyx = zyx[torch.argsort(window * (z_size * y_size * x_size) + (zyx[:, 0] * y_size + zyx[:, 1]) * x_size
                            + zyx[:, 2])]
    return torch.cat([torch.zeros(zyx.shape[0], 1, dtype=torch.int64), zyx], 1)


def example_inputs(device="cpu", dtype=torch.float32, n_voxels: int = 30000, channels: int = 32,
                   kernel_size: Sequence[int] = (3, 3, 3), seed: int = 0) -> dict:
    """A ScatterFormer CWI group: ~30k voxels on the Waymo grid (32, 480, 480), 32 channels, 3x3x3 kernel."""
    coords = voxel_coords(n_voxels, seed=seed)
    pairs = submanifold_pairs(coords, (32, 480, 480), kernel_size).to(device)
    g = torch.Generator().manual_seed(seed)
    k = pairs.shape[0]
    features = torch.randn(n_voxels, channels, generator=g).to(device, dtype)
    weight = (torch.randn(k, channels, generator=g) / k ** 0.5).to(device, dtype)
    return dict(features=features, weight=weight, pairs=pairs)
