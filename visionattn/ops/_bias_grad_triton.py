"""Triton kernels of the bias gradient, registered as ``torch.ops.visionattn.bias_grad``.

A column sum over the ``(M, C)`` rows of a row-major view in two launches:

1. ``_partial_sums_kernel``: program (i, j) sums rows ``[i * R, (i + 1) * R)`` of channel tile j in
   float32 (a (BLOCK_M, BLOCK_C) accumulator, reduced once at the end) into row i of a
   (programs, C) float32 table. R is chosen so that a few programs per SM cover the rows: the reduction
   has only C outputs, so the rows must be split for the GPU to read at full bandwidth.
2. ``_sum_table_kernel`` (:func:`sum_table`): each program sums its channels' column of the table and
   rounds once to the output dtype.

The split depends only on the shape and the GPU, so the result is the same on every call.
"""
import functools

import torch

from ._triton import tl, triton

if triton is not None:

    @triton.jit
    def _partial_sums_kernel(g_ptr, table_ptr, M, C, rows_per_program,
                             BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < C
        first = tl.program_id(0) * rows_per_program
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
        for start in range(0, rows_per_program, BLOCK_M):  # rows_per_program is a multiple of BLOCK_M
            rows = first + start + tl.arange(0, BLOCK_M)
            mask = (rows < M)[:, None] & cmask[None, :]
            offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
            acc += tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(table_ptr + tl.program_id(0) * C + cols, tl.sum(acc, axis=0), mask=cmask)

    @triton.jit
    def _sum_table_kernel(table_ptr, out_ptr, S, N, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr):
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < N
        acc = tl.zeros((BLOCK_S, BLOCK_N), dtype=tl.float32)
        for start in range(0, S, BLOCK_S):
            rows = start + tl.arange(0, BLOCK_S)
            mask = (rows < S)[:, None] & cmask[None, :]
            acc += tl.load(table_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], mask=mask, other=0.0)
        tl.store(out_ptr + cols, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=cmask)

    def sum_table(table: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A contiguous float32 (S, N) table of per-program partial sums -> its (N,) column sums, rounded once to
        ``dtype``: one launch where ``table.sum(0).to(dtype)`` takes two or three (also the LayerNorm backward's
        weight and bias gradients)."""
        S, N = table.shape
        out = torch.empty(N, device=table.device, dtype=dtype)
        if N:
            block_s = 64 if table.is_cuda else 2
            _sum_table_kernel[(triton.cdiv(N, 32),)](table, out, S, N, BLOCK_S=block_s, BLOCK_N=32)
        return out

    @functools.lru_cache(maxsize=None)
    def _programs_wanted(device: torch.device) -> int:
        """Enough programs to keep every SM reading (about eight each); a few on the CPU interpreter,
        so that the tests run programs that loop over several row blocks."""
        if device.type != "cuda":
            return 3
        return 8 * torch.cuda.get_device_properties(device).multi_processor_count

    def bias_grad_launch(grad: torch.Tensor, channels: int) -> torch.Tensor:
        """grad, a row-major (M, channels) view ((..., C) contiguous or a channels_last map) -> (channels,)
        sums in grad's dtype."""
        C = channels
        M = grad.numel() // C if C else 0
        if M == 0 or C == 0:
            return grad.new_zeros((C,))
        on_gpu = grad.is_cuda
        block_c = min(triton.next_power_of_2(C), 64)  # 128-byte row segments in bf16
        block_m = max(4096 // block_c, 1) if on_gpu else 4  # tiny tiles on the CPU interpreter: masks get tested
        col_tiles = triton.cdiv(C, block_c)
        splits = max(1, min(triton.cdiv(M, block_m), triton.cdiv(_programs_wanted(grad.device), col_tiles)))
        rows_per_program = triton.cdiv(triton.cdiv(M, splits), block_m) * block_m
        splits = triton.cdiv(M, rows_per_program)
        table = torch.empty((splits, C), device=grad.device, dtype=torch.float32)
        _partial_sums_kernel[(splits, col_tiles)](grad, table, M, C, rows_per_program,
                                                  BLOCK_M=block_m, BLOCK_C=block_c, num_warps=4)
        return sum_table(table, grad.dtype)

    bias_grad_triton = torch.library.custom_op("visionattn::bias_grad", mutates_args=())(bias_grad_launch)

    @bias_grad_triton.register_fake
    def _(grad, channels):
        return grad.new_empty((channels,))
