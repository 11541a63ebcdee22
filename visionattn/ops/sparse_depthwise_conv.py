"""Submanifold depth-wise sparse convolution (ScatterFormer's cross-window interaction), the op's math once.

Voxels are rows of ``features`` (N, C) at integer coordinates ``coords`` (N, 4) = (batch, z, y, x).
A submanifold convolution computes outputs at the input voxels only; a depth-wise one mixes no
channels. With K = kz * ky * kx kernel offsets (row-major over (kz, ky, kx), centre subtracted):

    out[o, c] = sum_k weight[k, c] * features[pairs[k, o], c]     (terms with pairs[k, o] = -1 skipped)

where ``pairs[k, o]`` is the voxel at ``coords[o] + offset_k`` (PyTorch's cross-correlation
convention, as spconv's SubMConv3d). :func:`~visionattn.ops.submanifold_pairs.submanifold_pairs` builds
the pairs (re-exported here with ``kernel_offsets`` and ``voxel_coords``); one set serves every layer of a
stage.

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
from .submanifold_pairs import kernel_offsets, submanifold_pairs, voxel_coords  # noqa: F401 (re-exported)

IMPLS: Tuple[str, ...] = ("triton", "reference")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
