"""Sparse convolution through a neighbour table (spconv's SubMConv3d / SparseConv3d compute), the op's math once.

Inputs are the rows of ``features`` (N, Cin); outputs are M rows. ``table`` (K, M) int64 holds, for
kernel offset ``k`` and output ``o``, the input row that ``o`` sees through that offset, or -1:

    out[o] = bias + sum_k W[:, k] @ features[table[k, o]]      (W = weight (Cout, K, Cin); -1 terms skipped)

Offsets are row-major over (kz, ky, kx), so an spconv KRSC weight (Cout, kz, ky, kx, Cin) is
``weight.reshape(Cout, -1, Cin)``. The table of a submanifold convolution comes from
:func:`.submanifold_pairs.submanifold_pairs`; the voxel networks build theirs (strided
convolutions too) in ``visionattn.models.detection3d.sparse_backend``.

Implementations (``impl=``):

- ``"triton"``: an output-stationary gather-GEMM (:mod:`._sparse_conv_triton`): tiles of output rows
  x output channels loop over the offsets a tile uses and over Cin, gathering the neighbour rows;
  the input gradient is the same kernel through the inverse table, the weight gradient a
  per-offset kernel with split rows summed in a fixed order. fp32/fp16/bf16 with fp32 accumulation,
  deterministic, no atomics. CUDA (on CPU only under ``TRITON_INTERPRET=1``, for the tests).
- ``"reference"``: per offset one gather, one matrix product and one ``index_add`` over the pairs
  that exist, in fp32 (fp64 for fp64 inputs); autograd differentiates it. It is the CPU path of the
  voxel networks (exactly their former per-offset loop).

``cache``: a dict kept with a table (the networks keep one per ``indice_key``, shared by the layers
that reuse the table): the index tensors derived from the table (reference: the per-offset pairs;
triton: the rows' order and the inverse table with its order) are built at first use and stored
there. Pass a fresh dict (or None) for a new table. Ignored while torch.compile traces (the
derived tensors are then part of the graph).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import _sparse_conv_triton as _kernels
from ._checks import check_params, check_tensors, param_dtypes
from ._triton import can_run
from .dispatch import pick
from .submanifold_pairs import submanifold_pairs, voxel_coords

IMPLS: Tuple[str, ...] = ("triton", "reference")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NAME = "sparse_conv"


def _check(features, weight, table, bias, cache) -> None:
    check_tensors(_NAME, dict(features=features, weight=weight))
    check_params(_NAME, features, dict(bias=bias), param_dtypes(features))
    check_tensors(_NAME, dict(features=features, table=table), floating=False, same_dtype=False)
    if features.dim() != 2 or weight.dim() != 3 or weight.shape[2] != features.shape[1]:
        raise ValueError(f"{_NAME}: features must be (N, Cin) and weight (Cout, K, Cin) with one Cin; got "
                         f"{tuple(features.shape)} and {tuple(weight.shape)} (an spconv weight (Cout, kz, ky, kx, "
                         f"Cin): weight.reshape(Cout, -1, Cin))")
    if table.dtype != torch.int64 or table.dim() != 2 or table.shape[0] != weight.shape[1]:
        raise ValueError(f"{_NAME}: table must be a (K, M) int64 tensor with K = weight.shape[1] = {weight.shape[1]} "
                         f"kernel offsets; got shape {tuple(table.shape)} and dtype {table.dtype} (use table.long())")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{_NAME}: bias must be (Cout,) = ({weight.shape[0]},); got {tuple(bias.shape)}")
    if cache is not None and not isinstance(cache, dict):
        raise TypeError(f"{_NAME}: cache must be a dict (kept with the table) or None, got {type(cache).__name__}")
    if table.device.type == "cpu" and table.numel() and not torch.compiler.is_compiling():  # values: no GPU sync
        low, high = int(table.min()), int(table.max())
        if low < -1 or high >= features.shape[0]:
            raise ValueError(f"{_NAME}: table entries must be input rows in [0, N={features.shape[0]}) or -1 "
                             f"(no neighbour); got values in [{low}, {high}]")


def _cached(cache: Optional[dict], key, build):
    if cache is None or torch.compiler.is_compiling():
        return build()
    if key not in cache:
        cache[key] = build()
    return cache[key]


def offset_pairs(table: torch.Tensor, cache: Optional[dict] = None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Per offset k, the (output rows, input rows) pairs that exist: ``table[k, o] >= 0``, o increasing
    (kept in ``cache`` when given: the reference reads them from there). One nonzero and one count
    transfer for all offsets (each a host sync on a GPU)."""

    def build():
        offset_of, rows = (table >= 0).nonzero(as_tuple=True)  # ordered by offset, then output row
        counts = torch.bincount(offset_of, minlength=table.shape[0]).tolist()
        return [(o, table[k, o]) for k, o in enumerate(rows.split(counts))]

    return _cached(cache, "pairs", build)


def _reference(features, weight, table, bias, cache):
    acc = torch.float64 if features.dtype == torch.float64 else torch.float32
    x, w = features.to(acc), weight.to(acc)
    out = x.new_zeros(table.shape[1], weight.shape[0])
    for k, (o, i) in enumerate(offset_pairs(table, cache)):
        # outputs are unique within an offset: index_add sums deterministically; in place, as no
        # product's backward needs ``out``; empty offsets too (no cost), so that ``out`` always
        # depends on the weight and a backward gives it zeros (under autocast the product comes in its dtype)
        out.index_add_(0, o, (x[i] @ w[:, k].t()).to(acc))
    if bias is not None:
        out = out + bias.to(acc)
    return out.to(features.dtype)


def _triton_supports(features: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the Triton kernels can run these inputs (CUDA, or the CPU interpreter for tests)."""
    return _kernels.triton is not None and can_run(features, weight)


def _triton(features, weight, table, bias, cache):
    order = _cached(cache, "order", lambda: _kernels.row_order(table))

    def derived(table, n_inputs):  # the backward's inverse table and its order, built at first need
        return _cached(cache, ("inverse", n_inputs), lambda: _kernels._inverse_and_order(table, n_inputs))

    return _kernels.sparse_conv_triton_autograd(features, weight, bias, table, order, derived)


def sparse_conv(features: torch.Tensor, weight: torch.Tensor, table: torch.Tensor,
                bias: Optional[torch.Tensor] = None, impl: str = "auto",
                cache: Optional[Dict[object, object]] = None) -> torch.Tensor:
    """Sparse convolution ``out[o] = bias + sum_k weight[:, k] @ features[table[k, o]]``.

    Args:
        features: (N, Cin) input rows.
        weight: (Cout, K, Cin), in the features' dtype (under autocast both are cast to its dtype).
        table: (K, M) int64: ``table[k, o]`` the input row output ``o`` sees through offset ``k``, or -1.
            Each (k, input row) must be reached by at most one output (true of every dilation-1
            sparse convolution, submanifold or strided) for the triton backward. Values are checked
            on CPU only (checking CUDA values would wait for the GPU).
        bias: (Cout,) in the features' dtype or float32, or None.
        impl: ``"auto"`` (triton on CUDA, reference elsewhere), ``"triton"`` or ``"reference"``.
        cache: optional dict kept with ``table`` for the index tensors derived from it (module docstring).

    Returns:
        (M, Cout) in the features' dtype.
    """
    device = features.device.type if isinstance(features, torch.Tensor) else None
    if device in ("cuda", "cpu") and torch.is_autocast_enabled(device) and isinstance(weight, torch.Tensor):
        dtype = torch.get_autocast_dtype(device)  # like nn.Linear under autocast
        features, weight = features.to(dtype), weight.to(dtype)
    _check(features, weight, table, bias, cache)
    impl = pick(_NAME, impl, {"triton": _triton_supports(features, weight), "reference": True})
    fn = _triton if impl == "triton" else _reference
    return fn(features, weight, table, bias, cache)


def example_inputs(device="cpu", dtype=torch.float32, n_voxels: int = 100000, channels: int = 128,
                   kernel_size: Sequence[int] = (3, 3, 3), seed: int = 0) -> dict:
    """A ScatterFormer CPE convolution: ~100k voxels of a synthetic LiDAR frame on the Waymo grid
    (32, 480, 480) (:func:`.submanifold_pairs.voxel_coords`), 128 -> 128 channels, a 3x3x3
    submanifold kernel, with bias."""
    coords = voxel_coords(n_voxels, seed=seed)
    table = submanifold_pairs(coords, (32, 480, 480), kernel_size).to(device)
    g = torch.Generator().manual_seed(seed)
    k = table.shape[0]
    features = torch.randn(n_voxels, channels, generator=g).to(device, dtype)
    weight = (torch.randn(channels, k, channels, generator=g) / (k * channels) ** 0.5).to(device, dtype)
    bias = (0.1 * torch.randn(channels, generator=g)).to(device, dtype)
    return dict(features=features, weight=weight, table=table, bias=bias)
