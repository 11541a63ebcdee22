"""Triton kernel of the convolution epilogue, registered as ``torch.ops.visionattn.channel_bias_act``.

One elementwise kernel over the ``(B*H*W, C)`` rows of a channels_last map: bias, optional GELU
(erf), optional per-channel scale and residual, in fp32 with one rounding at the end. Its
autograd formula is the reference's, so it is registered next to the reference, in
:mod:`.channel_bias_act`.
"""
from typing import Optional

import torch

from ._triton import tl, triton

if triton is not None:

    @triton.jit
    def _channel_bias_act_kernel(y_ptr, bias_ptr, res_ptr, scale_ptr, out_ptr, M, C,
                                 GELU: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_RES: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        """One (BLOCK_M rows x BLOCK_C channels) tile of the row-major (M, C) NHWC view."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < C
        mask = (rows < M)[:, None] & cmask[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        z = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        z = z + tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if GELU:
            z = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
        if HAS_SCALE:
            z = z * tl.load(scale_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:
            z = z + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=mask)

    def channel_bias_act_launch(y: torch.Tensor, bias: torch.Tensor, residual: Optional[torch.Tensor],
                                scale: Optional[torch.Tensor], gelu: bool) -> torch.Tensor:
        """Channels_last y/residual (B, C, H, W) -> channels_last out of y's dtype."""
        B, C, H, W = y.shape
        out = torch.empty_like(y, memory_format=torch.channels_last)
        M = B * H * W
        block_c = min(triton.next_power_of_2(C), 128)
        block_m = max(2048 // block_c, 1) if y.is_cuda else 4  # tiny tiles on the CPU interpreter: masks get tested
        grid = (triton.cdiv(M, block_m), triton.cdiv(C, block_c))
        _channel_bias_act_kernel[grid](
            y, bias.contiguous(), y if residual is None else residual, bias if scale is None else scale.contiguous(),
            out, M, C, GELU=gelu, HAS_SCALE=scale is not None, HAS_RES=residual is not None,
            BLOCK_M=block_m, BLOCK_C=block_c)
        return out

    channel_bias_act_triton = torch.library.custom_op("visionattn::channel_bias_act", mutates_args=())(
        channel_bias_act_launch)

    @channel_bias_act_triton.register_fake
    def _(y, bias, residual, scale, gelu):
        return torch.empty_like(y, memory_format=torch.channels_last)
