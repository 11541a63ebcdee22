"""Neighbour table of a submanifold sparse convolution: for every voxel and kernel offset, the row of the
voxel at that offset, or -1.

Voxels are rows of ``coords`` (N, 4) = (batch, z, y, x), unique, inside the grid (Z, Y, X). With K =
kz * ky * kx offsets (row-major over (kz, ky, kx), centre subtracted; odd kernel sizes)::

    table[k, o] = i   where coords[i] = coords[o] + (0, offset_k),   or -1 (no such voxel, or outside the grid)

Both implementations sort a linear key of (batch, z, y, x) once (``torch.sort``, stable) and look each
neighbour's key up among the sorted keys by binary search. Users: ScatterFormer's depth-wise
convolutions (:func:`~visionattn.ops.sparse_depthwise_conv.sparse_depthwise_conv`, kernels (3, 3, 3),
(1, 1, 13), (1, 13, 1)) and the submanifold convolutions of the voxel networks' sparse backend
(``torch_pairs(..., subm=True)``, fed to :func:`~visionattn.ops.sparse_conv.sparse_conv`).

Implementations (``impl=``):

- ``"triton"``: one kernel does the whole lookup for every (offset, voxel): neighbour coordinate, grid
  check, a fixed number of binary-search steps, the write of ``table[k, o]``. The reference makes about
  ten passes over (K, N) int64 tensors instead (neighbour coordinates, masks, keys, ``searchsorted``,
  gathers, ``where``), which at ~100k voxels of a Waymo frame was most of the time of building the
  tables. Nothing reads a value back to the host, so the stream never waits (CUDA graphs can capture
  it). CUDA; on CPU under ``TRITON_INTERPRET=1`` when asked for by name (``impl="triton"``, the
  tests): ``"auto"`` keeps the reference there, as other ops' tests build their tables on CPU.
- ``"reference"``: the same lookup with PyTorch tensor ops (``torch.searchsorted``), any device.

Coordinates are checked (range, duplicates) only on CPU: checking CUDA values would wait for the GPU.
"""
from typing import Sequence, Tuple

import torch

from ._checks import check_tensors
from ._submanifold_pairs_triton import submanifold_pairs_triton
from ._triton import can_run, interpreting
from .dispatch import pick

IMPLS: Tuple[str, ...] = ("triton", "reference")
_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _triple(name: str, value: Sequence[int]) -> Tuple[int, int, int]:
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"submanifold_pairs: {name} must have 3 entries (z, y, x); got {value}")
    return value


def kernel_offsets(kernel_size: Sequence[int], device=None) -> torch.Tensor:
    """(K, 3) offsets (dz, dy, dx) from the kernel centre, row-major over (kz, ky, kx)."""
    axes = [torch.arange(k, device=device) - k // 2 for k in kernel_size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def _linear(batch: torch.Tensor, zyx: torch.Tensor, shape: Tuple[int, int, int]) -> torch.Tensor:
    """Row-major key over (batch, Z, Y, X); ``zyx`` (..., 3)."""
    return ((batch * shape[0] + zyx[..., 0]) * shape[1] + zyx[..., 1]) * shape[2] + zyx[..., 2]


def _check_values(c: torch.Tensor, sorted_key: torch.Tensor, shape: Tuple[int, int, int]) -> None:
    """Range and uniqueness of CPU coordinates (reading values: CPU only, no GPU to wait for)."""
    zyx = c[:, 1:]
    outside = (c[:, 0] < 0) | (zyx < 0).any(1)
    for axis, size in enumerate(shape):
        outside |= zyx[:, axis] >= size
    if bool(outside.any()):
        first = c[outside][0].tolist()
        raise ValueError(f"submanifold_pairs: coords outside the grid {shape} (or a negative batch index), e.g. "
                         f"(batch, z, y, x) = {tuple(first)}; drop those voxels or enlarge spatial_shape")
    if bool((sorted_key[1:] == sorted_key[:-1]).any()):
        raise ValueError("submanifold_pairs: coords has duplicate voxels; merge them first (e.g. torch.unique "
                         "with return_inverse and a scatter of the features)")


def _reference(c: torch.Tensor, sorted_key: torch.Tensor, order: torch.Tensor, shape: Tuple[int, int, int],
               kernel: Tuple[int, int, int]) -> torch.Tensor:
    """c (N, 4) int64; sorted_key, order (N,) from the stable sort of the voxels' keys -> (K, N) int64."""
    n = c.shape[0]
    neighbour = c[None, :, 1:] + kernel_offsets(kernel, c.device)[:, None, :]  # (K, N, 3)
    inside = (neighbour >= 0).all(-1)  # (K, N); the sizes are Python ints (no host-to-device copy)
    for axis, size in enumerate(shape):
        inside &= neighbour[..., axis] < size
    wanted = _linear(c[None, :, 0], neighbour, shape)  # (K, N) keys of the neighbours
    pos = torch.searchsorted(sorted_key, wanted).clamp_(max=n - 1)  # first sorted key >= wanted
    found = inside & (sorted_key[pos] == wanted)
    return torch.where(found, order[pos], torch.full_like(pos, -1))


def _triton_supports(coords: torch.Tensor, impl: str) -> bool:
    """CUDA coordinates; CPU ones under the interpreter only when ``impl="triton"`` is asked for."""
    if not can_run(coords, dtypes=_INDEX_DTYPES):
        return False
    return coords.is_cuda or (interpreting() and impl == "triton")


def submanifold_pairs(coords: torch.Tensor, spatial_shape: Sequence[int], kernel_size: Sequence[int],
                      impl: str = "auto") -> torch.Tensor:
    """Neighbour table of a submanifold convolution.

    Args:
        coords: (N, 4) integer voxel coordinates (batch, z, y, x), unique, inside ``spatial_shape``.
        spatial_shape: (Z, Y, X) grid size.
        kernel_size: (kz, ky, kx), odd.
        impl: ``"auto"`` (triton on CUDA, reference elsewhere), ``"triton"`` or ``"reference"``.

    Returns:
        (K, N) int64, K = kz * ky * kx: ``pairs[k, o]`` = row of the voxel at ``coords[o] + offset_k``
        (offsets row-major over (kz, ky, kx), centre subtracted), or -1 where there is none or it is
        outside the grid. Coordinates are checked (range, uniqueness) when on CPU only: checking CUDA
        values would wait for the GPU.
    """
    return submanifold_pairs_many(coords, spatial_shape, [kernel_size], impl)[0]


def submanifold_pairs_many(coords: torch.Tensor, spatial_shape: Sequence[int],
                           kernel_sizes: Sequence[Sequence[int]], impl: str = "auto") -> Tuple[torch.Tensor, ...]:
    """:func:`submanifold_pairs` of one set of voxels for each of ``kernel_sizes``, in that order: the
    voxels' keys are sorted once for all the tables (ScatterFormer's depth-wise convolutions use three
    kernel shapes on the same voxels)."""
    check_tensors("submanifold_pairs", dict(coords=coords), floating=False)
    shape = _triple("spatial_shape", spatial_shape)
    kernels = [_triple("kernel_size", k) for k in kernel_sizes]
    for kernel in kernels:
        if any(k < 1 or k % 2 == 0 for k in kernel):
            raise ValueError(f"submanifold_pairs: kernel_size must be odd and positive (a centred submanifold "
                             f"kernel); got {kernel}")
    if any(s < 1 for s in shape):
        raise ValueError(f"submanifold_pairs: spatial_shape must be positive; got {shape}")
    if coords.dim() != 2 or coords.shape[1] != 4 or coords.dtype not in _INDEX_DTYPES:
        raise ValueError(f"submanifold_pairs: coords must be an (N, 4) integer tensor (batch, z, y, x); "
                         f"got shape {tuple(coords.shape)} and dtype {coords.dtype}")
    impl = pick("submanifold_pairs", impl, {"triton": _triton_supports(coords, impl), "reference": True})
    if coords.shape[0] == 0:
        return tuple(torch.empty(k[0] * k[1] * k[2], 0, dtype=torch.int64, device=coords.device) for k in kernels)
    c = coords.long()
    sorted_key, order = torch.sort(_linear(c[:, 0], c[:, 1:], shape), stable=True)  # (N,), (N,)
    if c.device.type == "cpu" and not torch.compiler.is_compiling():
        _check_values(c, sorted_key, shape)
    table = submanifold_pairs_triton if impl == "triton" else _reference
    return tuple(table(c, sorted_key, order, shape, kernel) for kernel in kernels)


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


def example_inputs(device="cpu", dtype=torch.float32, n_voxels: int = 100000,
                   kernel_size: Sequence[int] = (3, 3, 3), seed: int = 0) -> dict:
    """One Waymo frame of ScatterFormer: ~100k voxels on the grid (32, 480, 480), int32 coordinates (as the
    networks' sparse tensors hold them), a 3x3x3 kernel. ``dtype`` is unused (the op has no float input)."""
    coords = voxel_coords(n_voxels, seed=seed).int().to(device)
    return dict(coords=coords, spatial_shape=(32, 480, 480), kernel_size=tuple(int(k) for k in kernel_size))
