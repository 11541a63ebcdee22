"""Triton kernel of BatchNorm with running statistics, registered as ``torch.ops.visionattn.batch_norm_act``.

One elementwise kernel over the ``(M, C)`` rows of a row-major view: (N, C) voxel or point features,
or a channels_last (B, C, H, W) map (M = B*H*W). Each program folds the statistics and affine
parameters of its channel tile into one scale and shift in float32, then reads its rows once,
adds the residual, applies the ReLU and writes once, rounding to the output dtype at the end. The
autograd formula is the reference's, registered next to it in :mod:`.batch_norm_act`.
"""
from typing import Optional

import torch

from ._triton import tl, triton

if triton is not None:

    @triton.jit
    def _batch_norm_act_kernel(x_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, res_ptr, out_ptr, M, C, eps,
                               HAS_RES: tl.constexpr, RELU: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        """One (BLOCK_M rows x BLOCK_C channels) tile of the row-major (M, C) view."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < C
        mean = tl.load(mean_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        var = tl.load(var_ptr + cols, mask=cmask, other=1.0).to(tl.float32)
        scale = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32) / tl.sqrt_rn(var + eps)
        shift = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32) - mean * scale
        mask = (rows < M)[:, None] & cmask[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * scale[None, :] + shift[None, :]
        if HAS_RES:
            z = z + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if RELU:
            z = tl.maximum(z, 0.0)
        tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=mask)

    def batch_norm_act_launch(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                              weight: torch.Tensor, bias: torch.Tensor, eps: float, residual: Optional[torch.Tensor],
                              act: Optional[str]) -> torch.Tensor:
        """x (and residual) (N, C) contiguous or (B, C, H, W) channels_last -> out of x's shape, layout, dtype."""
        C = x.shape[1]
        M = x.numel() // C if C else 0
        out = torch.empty_like(x)  # keeps the channels_last strides of a 4-D map
        if M == 0:
            return out
        block_c = min(triton.next_power_of_2(C), 128)
        block_m = max(4096 // block_c, 1) if x.is_cuda else 4  # tiny tiles on the CPU interpreter: masks get tested
        grid = (triton.cdiv(M, block_m), triton.cdiv(C, block_c))
        _batch_norm_act_kernel[grid](
            x, running_mean, running_var, weight, bias, x if residual is None else residual, out, M, C, eps,
            HAS_RES=residual is not None, RELU=act == "relu", BLOCK_M=block_m, BLOCK_C=block_c)
        return out

    batch_norm_act_triton = torch.library.custom_op("visionattn::batch_norm_act", mutates_args=())(
        batch_norm_act_launch)

    @batch_norm_act_triton.register_fake
    def _(x, running_mean, running_var, weight, bias, eps, residual, act):
        return torch.empty_like(x)
