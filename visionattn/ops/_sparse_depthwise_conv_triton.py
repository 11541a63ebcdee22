"""Triton kernels of the depth-wise submanifold sparse convolution (forward and backward).

Forward: a program owns ``BLOCK_N`` output rows x ``BLOCK_C`` channels and walks the K offsets,
gathering each row's neighbour (``pairs[k, o]``, -1 = none) and accumulating
``weight[k] * features[neighbour]`` in fp32.

Backward, one kernel over the same tiles (rows are the input voxels now):

* input gradient: ``d_features[i] = sum_k weight[k] * g[o : pairs[k, o] = i]``. Submanifold pairs
  are symmetric (``pairs[k, o] = i`` exactly when ``pairs[K-1-k, i] = o``: the offsets of a centred
  odd kernel negate under k -> K-1-k), so this is the gather ``sum_k weight[K-1-k] * g[pairs[k, i]]``,
  no atomics;
* weight gradient: ``d_weight[k] = sum_o g[o] * features[pairs[k, o]]``: each program writes its
  tile's partial sums (``cdiv(N, BLOCK_N)`` x K x C, fp32), summed over tiles afterwards.

Registered as ``torch.ops.visionattn.sparse_depthwise_conv_triton`` (fake and autograd formulas)
for ``torch.compile``/``torch.export``; eager calls use an ``autograd.Function`` running the same
kernels (the custom-op dispatch layers would double the Python time of this small op).
"""
from typing import Tuple

import torch

from ._triton import tl, triton, unit_last_stride

BLOCK_N = 64
NUM_WARPS = 4

if triton is not None:

    @triton.jit
    def _dw_fwd_kernel(F, W, PAIRS, O, n, channels, n_offsets, sf_n,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        row_ok = rows < n
        col_ok = cols < channels
        acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        for k in range(n_offsets):
            src = tl.load(PAIRS + k * n + rows, mask=row_ok, other=-1).to(tl.int64)
            f = tl.load(F + src[:, None] * sf_n + cols[None, :], mask=(src >= 0)[:, None] & col_ok[None, :],
                        other=0.0)
            w = tl.load(W + k * channels + cols, mask=col_ok, other=0.0)
            acc += f.to(tl.float32) * w.to(tl.float32)[None, :]
        tl.store(O + rows.to(tl.int64)[:, None] * channels + cols[None, :], acc.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def _dw_bwd_kernel(F, W, PAIRS, G, DF, DW_PART, n, channels, n_offsets, sf_n,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        """G and DF contiguous (N, C); DW_PART (tiles, K, C) fp32."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        row_ok = rows < n
        col_ok = cols < channels
        g_rows = tl.load(G + rows.to(tl.int64)[:, None] * channels + cols[None, :],
                         mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        d_features = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        for k in range(n_offsets):
            nb = tl.load(PAIRS + k * n + rows, mask=row_ok, other=-1).to(tl.int64)
            mask = (nb >= 0)[:, None] & col_ok[None, :]
            # input gradient of these rows: their neighbour at offset k took them at offset K-1-k
            g_nb = tl.load(G + nb[:, None] * channels + cols[None, :], mask=mask, other=0.0)
            w_flip = tl.load(W + (n_offsets - 1 - k) * channels + cols, mask=col_ok, other=0.0)
            d_features += g_nb.to(tl.float32) * w_flip.to(tl.float32)[None, :]
            # weight gradient: these output rows times their neighbour's features at offset k
            f_nb = tl.load(F + nb[:, None] * sf_n + cols[None, :], mask=mask, other=0.0)
            dw = tl.sum(g_rows * f_nb.to(tl.float32), 0)
            tl.store(DW_PART + (tl.program_id(0) * n_offsets + k).to(tl.int64) * channels + cols, dw, mask=col_ok)
        tl.store(DF + rows.to(tl.int64)[:, None] * channels + cols[None, :], d_features.to(DF.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])


def _tiles(n: int, channels: int):
    block_c = min(64, max(16, triton.next_power_of_2(channels)))
    return (triton.cdiv(n, BLOCK_N), triton.cdiv(channels, block_c)), dict(BLOCK_N=BLOCK_N, BLOCK_C=block_c,
                                                                          num_warps=NUM_WARPS)


def _forward(features, weight, pairs):
    features, weight, pairs = unit_last_stride(features), weight.contiguous(), pairs.contiguous()
    n, channels = features.shape
    out = torch.empty(n, channels, device=features.device, dtype=features.dtype)
    if n == 0 or channels == 0:
        return out.zero_()
    grid, meta = _tiles(n, channels)
    _dw_fwd_kernel[grid](features, weight, pairs, out, n, channels, pairs.shape[0], features.stride(0), **meta)
    return out


def _backward(features, weight, pairs, grad_out):
    features, weight, pairs = unit_last_stride(features), weight.contiguous(), pairs.contiguous()
    grad_out = grad_out.contiguous()
    n, channels = features.shape
    d_features = torch.empty(n, channels, device=features.device, dtype=features.dtype)
    if n == 0 or channels == 0:
        return d_features.zero_(), torch.zeros_like(weight)
    grid, meta = _tiles(n, channels)
    partial = torch.empty(grid[0], pairs.shape[0], channels, device=features.device, dtype=torch.float32)
    _dw_bwd_kernel[grid](features, weight, pairs, grad_out, d_features, partial, n, channels, pairs.shape[0],
                         features.stride(0), **meta)
    return d_features, partial.sum(0).to(weight.dtype)


class _DwConvFunction(torch.autograd.Function):
    """Eager path: the same kernels as the custom op, without its dispatch layers."""

    @staticmethod
    def forward(ctx, features, weight, pairs):
        ctx.save_for_backward(features, weight, pairs)
        return _forward(features, weight, pairs)

    @staticmethod
    def backward(ctx, grad_out):
        d_features, d_weight = _backward(*ctx.saved_tensors, grad_out)
        return d_features, d_weight, None


if triton is not None:

    @torch.library.custom_op("visionattn::sparse_depthwise_conv_triton", mutates_args=())
    def sparse_depthwise_conv_triton(features: torch.Tensor, weight: torch.Tensor, pairs: torch.Tensor
                                     ) -> torch.Tensor:
        """features (N, C) with unit channel stride, weight (K, C), pairs (K, N) submanifold table."""
        return _forward(features, weight, pairs)

    @sparse_depthwise_conv_triton.register_fake
    def _(features, weight, pairs):
        return features.new_empty(features.shape[0], features.shape[1])

    @torch.library.custom_op("visionattn::sparse_depthwise_conv_triton_backward", mutates_args=())
    def sparse_depthwise_conv_triton_backward(features: torch.Tensor, weight: torch.Tensor, pairs: torch.Tensor,
                                              grad_out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return _backward(features, weight, pairs, grad_out)

    @sparse_depthwise_conv_triton_backward.register_fake
    def _(features, weight, pairs, grad_out):
        return features.new_empty(features.shape[0], features.shape[1]), weight.new_empty(weight.shape)

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _autograd_backward(ctx, grad_out):
        d_features, d_weight = torch.ops.visionattn.sparse_depthwise_conv_triton_backward(*ctx.saved_tensors,
                                                                                         grad_out)
        return d_features, d_weight, None

    sparse_depthwise_conv_triton.register_autograd(_autograd_backward, setup_context=_setup_context)


def sparse_depthwise_conv_triton_autograd(features, weight, pairs) -> torch.Tensor:
    """The triton path with autograd: the custom op while torch.compile/export traces, else the Function."""
    if torch.compiler.is_compiling():
        return torch.ops.visionattn.sparse_depthwise_conv_triton(features, weight, pairs)
    return _DwConvFunction.apply(features, weight, pairs)
