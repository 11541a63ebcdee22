"""Triton kernel of the submanifold neighbour table: one program per (block of voxels, kernel offset).

Each program takes ``BLOCK`` voxels and one offset k, and per voxel o: adds the offset to its
(z, y, x), checks the neighbour lies inside the grid, binary-searches its linear key among the sorted
keys of all voxels (lower bound, ``steps`` = N.bit_length() halvings, enough to empty a range of N
candidates) and writes ``table[k, o]`` = the original row of the key found, or -1.

Registered as ``torch.ops.visionattn.submanifold_pairs_triton`` (with a fake function) for
``torch.compile``/``torch.export``; eager calls launch the kernel directly.
"""
from typing import List, Sequence

import torch

from ._triton import launch_directly, tl, triton

BLOCK = 256
NUM_WARPS = 4

if triton is not None:

    @triton.jit(do_not_specialize=["n", "steps"])  # one compilation for every frame size
    def _subm_pairs_kernel(COORDS, SORTED_KEY, ORDER, TABLE, n, steps, size_z, size_y, size_x,
                           kernel_y, kernel_x, half_z, half_y, half_x, BLOCK: tl.constexpr):
        """COORDS (N, 4) int64 contiguous; SORTED_KEY, ORDER (N,) int64; TABLE (K, N) int64."""
        k = tl.program_id(1)
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        row_ok = rows < n
        # offset k of the row-major (kz, ky, kx) kernel, centre subtracted
        dz = k // (kernel_y * kernel_x) - half_z
        dy = (k // kernel_x) % kernel_y - half_y
        dx = k % kernel_x - half_x
        voxel = COORDS + rows.to(tl.int64) * 4
        b = tl.load(voxel, mask=row_ok, other=0)
        z = tl.load(voxel + 1, mask=row_ok, other=0) + dz
        y = tl.load(voxel + 2, mask=row_ok, other=0) + dy
        x = tl.load(voxel + 3, mask=row_ok, other=0) + dx
        inside = row_ok & (z >= 0) & (z < size_z) & (y >= 0) & (y < size_y) & (x >= 0) & (x < size_x)
        wanted = ((b * size_z + z) * size_y + y) * size_x + x  # the neighbour's key (int64)
        # lower bound: the first position whose key is >= wanted, in [lo, hi)
        lo = tl.zeros([BLOCK], dtype=tl.int32)
        hi = tl.zeros([BLOCK], dtype=tl.int32) + n
        for _ in range(steps):
            mid = (lo + hi) >> 1
            searching = inside & (lo < hi)
            key = tl.load(SORTED_KEY + mid, mask=searching, other=0)
            below = key < wanted
            lo = tl.where(searching & below, mid + 1, lo)
            hi = tl.where(searching & (key >= wanted), mid, hi)
        pos = tl.minimum(lo, n - 1)
        found = inside & (tl.load(SORTED_KEY + pos, mask=inside, other=0) == wanted)
        row = tl.load(ORDER + pos, mask=found, other=-1)
        tl.store(TABLE + k.to(tl.int64) * n + rows, row, mask=row_ok)


def _launch(coords: torch.Tensor, sorted_key: torch.Tensor, order: torch.Tensor, spatial_shape: Sequence[int],
            kernel_size: Sequence[int]) -> torch.Tensor:
    kz, ky, kx = (int(k) for k in kernel_size)
    n = coords.shape[0]
    table = torch.empty(kz * ky * kx, n, dtype=torch.int64, device=coords.device)
    if n == 0:
        return table
    coords, sorted_key, order = coords.long().contiguous(), sorted_key.contiguous(), order.contiguous()
    size_z, size_y, size_x = (int(s) for s in spatial_shape)
    grid = (triton.cdiv(n, BLOCK), kz * ky * kx)
    _subm_pairs_kernel[grid](coords, sorted_key, order, table, n, n.bit_length(), size_z, size_y, size_x,
                             ky, kx, kz // 2, ky // 2, kx // 2, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return table


if triton is not None:

    @torch.library.custom_op("visionattn::submanifold_pairs_triton", mutates_args=())
    def _submanifold_pairs_op(coords: torch.Tensor, sorted_key: torch.Tensor, order: torch.Tensor,
                              spatial_shape: List[int], kernel_size: List[int]) -> torch.Tensor:
        """coords (N, 4) int64, sorted_key/order (N,) from the stable sort of the keys -> table (K, N) int64."""
        return _launch(coords, sorted_key, order, spatial_shape, kernel_size)

    @_submanifold_pairs_op.register_fake
    def _(coords, sorted_key, order, spatial_shape, kernel_size):
        n_offsets = int(kernel_size[0]) * int(kernel_size[1]) * int(kernel_size[2])
        return coords.new_empty(n_offsets, coords.shape[0], dtype=torch.int64)


def submanifold_pairs_triton(coords: torch.Tensor, sorted_key: torch.Tensor, order: torch.Tensor,
                             spatial_shape: Sequence[int], kernel_size: Sequence[int]) -> torch.Tensor:
    """The table from the kernel: the custom op while torch.compile/export traces, else a direct launch."""
    if launch_directly():
        return _launch(coords, sorted_key, order, spatial_shape, kernel_size)
    return torch.ops.visionattn.submanifold_pairs_triton(coords, sorted_key, order, list(spatial_shape),
                                                         list(kernel_size))
