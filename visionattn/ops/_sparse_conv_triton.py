"""Triton kernels of the sparse convolution (gather-GEMM, forward and backward).

``table[k, o]`` is the input row seen by output ``o`` through kernel offset ``k`` (-1: none), and
``out[o] = bias + sum_k W[:, k] @ x[table[k, o]]`` with W (Cout, K, Cin).

Forward (``_gather_gemm_kernel``): output-stationary. A program owns ``BLOCK_M`` output rows x
``BLOCK_N`` output channels and keeps their fp32 sums in registers; it walks the K offsets, loads the
rows' neighbours at offset k (a masked gather: absent neighbours read as zeros) in ``BLOCK_K``-channel
chunks and multiplies them with the (BLOCK_K, BLOCK_N) weight tile on tensor cores. Every output row
is written once by one program: no atomics, no zero-filled output, deterministic.

Skipping empty offsets: an offset where no row of the tile has a neighbour costs one small table
load. In spatial (or window) order a 64-row tile holds some neighbour at ~93 % of the 27 offsets of
a LiDAR-like grid while only ~23 % of the (row, offset) pairs exist, so the program walks rows in
an ``order`` sorted by each row's neighbour bitmask (``sum_k [table[k, o] >= 0] << k``, a stable
argsort: equal masks keep their spatial order): rows of a tile then mostly share their empty offsets
and a tile touches ~39 % of the offsets (measured on ``voxel_coords(100000)``, 3x3x3). ``order`` is
a permutation: loads go through it, stores land at the original rows.

Input gradient: ``dx[i] = sum_k W[:, k]^T dy[inv[k, i]]`` with the inverse table ``inv[k, i] = o``
where ``table[k, o] = i``: the same kernel with the weight read transposed (a strided view, no copy)
and the inverse table and its own order. This needs each (k, i) to reach at most one output, which
holds for every dilation-1 convolution with a fixed kernel geometry: through offset k output o reads
input ``o * stride - padding + k`` (submanifold: ``o + k - centre``), an injective map of o.

Weight gradient (``_weight_grad_kernel``): ``dW[:, k] = sum_o dy[o]^T x[table[k, o]]``. One program per
(offset, BLOCK_N x BLOCK_K tile of W, split of the rows): it loops over its rows (in the forward's
order, skipping row tiles without a neighbour at k) with an fp32 (BLOCK_N, BLOCK_K) accumulator and
stores its partial sum; the splits (``_n_splits``: about ``DW_PROGRAMS`` programs whatever K and the
channels) are then summed in a fixed order. A Triton kernel rather than batched torch ops: torch would
need the per-offset pairs (a nonzero, i.e. a host sync, and a gathered copy of x per offset) or a
(K, M, Cin) gathered tensor (1.4 GB in fp32 at 100k voxels x 128 channels).

Precision: fp16/bf16 inputs run on tensor cores with fp32 accumulation. fp32 inputs follow PyTorch's
flag for convolutions, ``torch.backends.cudnn.allow_tf32`` (on by default), as a dense ``nn.Conv3d``
would: TF32 tensor-core dots when it is set (about 1e-3 relative error, 2-3x faster), otherwise
``FP32_DOT`` (three TF32 products per dot on sm80+, fp32-level error).

Registered as ``torch.ops.visionattn.sparse_conv_triton`` and ``..._weight_grad`` (fake and autograd
formulas) for ``torch.compile``/``torch.export``; eager calls use an ``autograd.Function`` running the
same kernels (the custom-op dispatch costs host time per call).
"""
from typing import Optional

import torch

from ._triton import interpreting, tl, triton, unit_last_stride

# Tiles per kernel and input element size (4: fp32, 2: fp16/bf16): (BLOCK_M rows, largest BLOCK_N,
# largest BLOCK_K, num_warps, num_stages). A BLOCK_K of 32 fp32 / 64 half channels reads one 128-byte
# line per gathered row. Chosen with ``benchmarks/sparse_conv_tiles.py`` on an H200 (100k voxels,
# 128 -> 128 channels, 3x3x3; forward + input gradient share the gemm setting): fp32 0.86 + 1.29 ms
# and weight gradient 1.74 ms; bf16 0.30 + 0.30 ms and 0.42 ms (benchmarks/README.md).
TILES = {
    "gemm": {4: (128, 64, 32, 4, 3), 2: (64, 128, 64, 4, 3)},
    "weight_grad": {4: (64, 128, 128, 8, 3), 2: (64, 128, 128, 8, 3)},
}
DW_PROGRAMS = 1024  # weight gradient: rows split so that about this many programs run
FP32_DOT = "tf32x3"  # sm80+; "ieee" elsewhere
_MASK_BITS = 62  # offsets beyond this many do not enter the sort key (K = 27 and 13 fit)

if triton is not None:

    @triton.jit(do_not_specialize=["m"])
    def _gather_gemm_kernel(X, W, B, TABLE, ORDER, OUT, m, n_offsets, c_in, c_out, sx_n, sw_n, sw_k, sw_c,
                            st_k, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
        """OUT[o, n] = B[n] + sum_k sum_c W[n, k, c] X[TABLE[k, o], c] for the tile's rows o = ORDER[slots]."""
        # one grid axis (no 65,535 limit), channel tiles fastest: the programs sharing rows (and their
        # gathered inputs, in L2) run side by side
        tiles_n = tl.cdiv(c_out, BLOCK_N)
        pid = tl.program_id(0)
        cols = pid % tiles_n * BLOCK_N + tl.arange(0, BLOCK_N)
        slots = (pid // tiles_n).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = slots < m
        col_ok = cols < c_out
        rows = tl.load(ORDER + slots, mask=row_ok, other=0)
        kc = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in range(n_offsets):
            src = tl.load(TABLE + k * st_k + rows, mask=row_ok, other=-1)
            if tl.max(src, 0) >= 0:  # some row of the tile has a neighbour at offset k
                has = src >= 0
                for c0 in range(0, c_in, BLOCK_K):
                    c = c0 + kc
                    c_ok = c < c_in
                    a = tl.load(X + src[:, None] * sx_n + c[None, :], mask=has[:, None] & c_ok[None, :], other=0.0)
                    b = tl.load(W + cols[None, :] * sw_n + k * sw_k + c[:, None] * sw_c,
                                mask=c_ok[:, None] & col_ok[None, :], other=0.0)
                    acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(OUT + rows[:, None] * c_out + cols[None, :], acc.to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit(do_not_specialize=["m", "rows_per_split"])
    def _weight_grad_kernel(DY, X, TABLE, ORDER, PART, m, n_offsets, c_in, c_out, sdy_m, sx_n, st_k,
                            rows_per_split, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            PRECISION: tl.constexpr):
        """PART[split, n, k, c] = sum over the split's rows o of DY[o, n] X[TABLE[k, o], c]."""
        tiles_n = tl.cdiv(c_out, BLOCK_N)
        tiles_c = tl.cdiv(c_in, BLOCK_K)
        pid = tl.program_id(0)
        k = pid // (tiles_n * tiles_c)
        cols_n = (pid // tiles_c) % tiles_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cols_c = pid % tiles_c * BLOCK_K + tl.arange(0, BLOCK_K)
        n_ok = cols_n < c_out
        c_ok = cols_c < c_in
        split = tl.program_id(1).to(tl.int64)
        lo = split * rows_per_split
        hi = tl.minimum(lo + rows_per_split, m)
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for r0 in range(lo, hi, BLOCK_M):
            slots = r0 + tl.arange(0, BLOCK_M)
            row_ok = slots < hi
            rows = tl.load(ORDER + slots, mask=row_ok, other=0)
            src = tl.load(TABLE + k * st_k + rows, mask=row_ok, other=-1)
            if tl.max(src, 0) >= 0:
                has = src >= 0
                dy = tl.load(DY + rows[:, None] * sdy_m + cols_n[None, :], mask=has[:, None] & n_ok[None, :],
                             other=0.0)
                x = tl.load(X + src[:, None] * sx_n + cols_c[None, :], mask=has[:, None] & c_ok[None, :], other=0.0)
                acc = tl.dot(tl.trans(dy), x, acc, input_precision=PRECISION)
        part = PART + split * (c_out * n_offsets * c_in) + k * c_in
        tl.store(part + cols_n[:, None] * (n_offsets * c_in) + cols_c[None, :], acc,
                 mask=n_ok[:, None] & c_ok[None, :])


def _precision(x: torch.Tensor) -> str:
    if interpreting() or x.dtype != torch.float32:
        return "ieee"  # (half inputs ignore it: tensor cores with fp32 accumulation)
    if torch.backends.cudnn.allow_tf32:  # the convolution flag, as for cuDNN's convolutions
        return "tf32"
    if FP32_DOT != "ieee" and torch.cuda.get_device_capability(x.device)[0] >= 8:
        return FP32_DOT
    return "ieee"


def _block(size: int, largest: int) -> int:
    return max(16, min(largest, triton.next_power_of_2(size)))  # tl.dot needs >= 16


def row_order(table: torch.Tensor) -> torch.Tensor:
    """(M,) int64 permutation of the output rows sorted by their neighbour bitmask (stable)."""
    k = min(table.shape[0], _MASK_BITS)
    bits = torch.arange(k, device=table.device)[:, None]
    mask = ((table[:k] >= 0).long() << bits).sum(0)
    return torch.argsort(mask, stable=True)


def _gather_gemm(x, weight, bias, table, order):
    """(M, Cout) = gather-GEMM of x (N, Cin) through table (K, M), weight any (Cout, K, Cin) strides."""
    x = unit_last_stride(x)
    table = unit_last_stride(table)
    c_out, n_offsets, c_in = weight.shape
    m = table.shape[1]
    out = torch.empty(m, c_out, device=x.device, dtype=x.dtype)
    if m == 0:
        return out
    if x.shape[0] == 0 or n_offsets == 0:  # no input rows: every neighbour is absent
        return out.copy_(bias.expand(m, c_out)) if bias is not None else out.zero_()
    block_m, block_n, block_k, warps, stages = TILES["gemm"][x.element_size()]
    block_n, block_k = _block(c_out, block_n), _block(c_in, block_k)
    grid = (triton.cdiv(c_out, block_n) * triton.cdiv(m, block_m),)
    _gather_gemm_kernel[grid](x, weight, bias if bias is not None else x, table, order, out, m, n_offsets, c_in,
                              c_out, x.stride(0), *weight.stride(), table.stride(0), HAS_BIAS=bias is not None,
                              BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=_precision(x),
                              num_warps=warps, num_stages=stages)
    return out


def _n_splits(m: int, tiles: int, block_m: int) -> int:
    """Row splits of the weight gradient: about DW_PROGRAMS programs, at least BLOCK_M rows a split."""
    return max(1, min(triton.cdiv(DW_PROGRAMS, tiles), triton.cdiv(m, block_m)))


def _weight_grad(grad, x, table, order, weight_dtype, n_offsets: int):
    """dW (Cout, K, Cin) in ``weight_dtype``: partial sums per row split (fp32), summed in order."""
    grad, x, table = (unit_last_stride(t) for t in (grad, x, table))
    m, c_out = grad.shape
    c_in = x.shape[1]
    if m == 0 or x.shape[0] == 0 or n_offsets == 0:
        return torch.zeros(c_out, n_offsets, c_in, device=x.device, dtype=weight_dtype)
    block_m, block_n, block_k, warps, stages = TILES["weight_grad"][x.element_size()]
    block_n, block_k = _block(c_out, block_n), _block(c_in, block_k)
    tiles = n_offsets * triton.cdiv(c_out, block_n) * triton.cdiv(c_in, block_k)
    splits = _n_splits(m, tiles, block_m)
    rows_per_split = triton.cdiv(triton.cdiv(m, splits), block_m) * block_m
    splits = triton.cdiv(m, rows_per_split)
    part = torch.empty(splits, c_out, n_offsets, c_in, device=x.device, dtype=torch.float32)
    _weight_grad_kernel[(tiles, splits)](grad, x, table, order, part, m, n_offsets, c_in, c_out, grad.stride(0),
                                         x.stride(0), table.stride(0), rows_per_split, BLOCK_M=block_m,
                                         BLOCK_N=block_n, BLOCK_K=block_k, PRECISION=_precision(x),
                                         num_warps=warps, num_stages=stages)
    return part.sum(0).to(weight_dtype)


def _input_grad(grad, weight, inverse, inverse_order):
    """dx (N, Cin): the forward kernel through the inverse table, weight read as (Cin, K, Cout)."""
    return _gather_gemm(grad, weight.permute(2, 1, 0), None, inverse, inverse_order)


class _SparseConvFunction(torch.autograd.Function):
    """Eager path: the same kernels as the custom ops, without their dispatch layers. ``derived``
    builds the order / inverse tables (from a cache when the caller keeps one)."""

    @staticmethod
    def forward(ctx, features, weight, bias, table, order, derived):
        ctx.save_for_backward(features, weight, table, order)
        ctx.derived = derived
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return _gather_gemm(features, weight, bias, table, order)

    @staticmethod
    def backward(ctx, grad):
        features, weight, table, order = ctx.saved_tensors
        grad = grad.contiguous()
        d_features = d_weight = d_bias = None
        if ctx.needs_input_grad[0]:
            inverse, inverse_order = ctx.derived(table, features.shape[0])
            d_features = _input_grad(grad, weight, inverse, inverse_order)
        if ctx.needs_input_grad[1]:
            d_weight = _weight_grad(grad, features, table, order, weight.dtype, weight.shape[1])
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            d_bias = grad.float().sum(0).to(ctx.bias_dtype)
        return d_features, d_weight, d_bias, None, None, None


def inverse_table(table: torch.Tensor, n_inputs: int) -> torch.Tensor:
    """(K, N) int64: ``inv[k, i] = o`` where ``table[k, o] = i``, else -1 (one scatter; each (k, i)
    is reached by at most one output, see the module docstring)."""
    n_offsets, m = table.shape
    # absent entries (-1) write to a spare column N, dropped after
    index = torch.where(table >= 0, table, n_inputs)
    outputs = torch.arange(m, device=table.device).expand(n_offsets, m)
    inv = torch.full((n_offsets, n_inputs + 1), -1, dtype=torch.int64, device=table.device)
    return inv.scatter_(1, index, outputs)[:, :n_inputs]


def _inverse_and_order(table: torch.Tensor, n_inputs: int):
    inverse = inverse_table(table, n_inputs)
    return inverse, row_order(inverse)


if triton is not None:

    @torch.library.custom_op("visionattn::sparse_conv_triton", mutates_args=())
    def sparse_conv_triton(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           table: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """features (N, Cin), weight (Cout, K, Cin) any strides, bias (Cout,) or None, table (K, M) int64,
        order (M,) a permutation of the rows (``row_order(table)``). Returns (M, Cout)."""
        return _gather_gemm(features, weight, bias, table, order)

    @sparse_conv_triton.register_fake
    def _(features, weight, bias, table, order):
        return features.new_empty(table.shape[1], weight.shape[0])

    @torch.library.custom_op("visionattn::sparse_conv_triton_weight_grad", mutates_args=())
    def sparse_conv_triton_weight_grad(grad: torch.Tensor, features: torch.Tensor, table: torch.Tensor,
                                       order: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """dW (Cout, K, Cin) in weight's dtype (``weight`` gives the shape and dtype only)."""
        return _weight_grad(grad, features, table, order, weight.dtype, weight.shape[1])

    @sparse_conv_triton_weight_grad.register_fake
    def _(grad, features, table, order, weight):
        return weight.new_empty(weight.shape)

    def _setup_context(ctx, inputs, output):
        features, weight, bias, table, order = inputs
        ctx.save_for_backward(features, weight, table, order)
        ctx.bias_dtype = bias.dtype if bias is not None else None

    def _autograd_backward(ctx, grad):
        features, weight, table, order = ctx.saved_tensors
        grad = grad.contiguous()
        d_features = d_weight = d_bias = None
        if ctx.needs_input_grad[0]:
            inverse, inverse_order = _inverse_and_order(table, features.shape[0])  # traced torch ops
            d_features = torch.ops.visionattn.sparse_conv_triton(grad, weight.permute(2, 1, 0), None, inverse,
                                                                  inverse_order)
        if ctx.needs_input_grad[1]:
            d_weight = torch.ops.visionattn.sparse_conv_triton_weight_grad(grad, features, table, order, weight)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            d_bias = grad.float().sum(0).to(ctx.bias_dtype)
        return d_features, d_weight, d_bias, None, None

    sparse_conv_triton.register_autograd(_autograd_backward, setup_context=_setup_context)


def sparse_conv_triton_autograd(features, weight, bias, table, order, derived=_inverse_and_order) -> torch.Tensor:
    """The triton path with autograd: the custom op while torch.compile/export traces, else the Function
    (``derived(table, n_inputs) -> (inverse, inverse order)``, e.g. from a cache)."""
    if torch.compiler.is_compiling():
        return torch.ops.visionattn.sparse_conv_triton(features, weight, bias, table, order)
    return _SparseConvFunction.apply(features, weight, bias, table, order, derived)
