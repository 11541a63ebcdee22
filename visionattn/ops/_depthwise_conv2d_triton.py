"""Triton kernel of the depth-wise 2-D convolution on channels_last maps, registered as
``torch.ops.visionattn.depthwise_conv2d``.

One program computes a (BLOCK_W pixels of one image row) x (BLOCK_C channels) tile of the output:
for each of the K x K taps it loads the shifted input row segment (contiguous channels, zero
outside the image) and accumulates ``x * weight`` in float32, then applies the epilogue (bias,
GELU, scale, residual) and rounds once at the store. Its autograd formula is the reference's,
registered next to the reference in :mod:`.depthwise_conv2d`.
"""
from typing import Optional

import torch

from ._triton import tl, triton

BLOCK_W = 32  # output pixels of one row per program (x up to 64 channels)

if triton is not None:

    @triton.jit
    def _depthwise_conv2d_kernel(x_ptr, w_ptr, bias_ptr, scale_ptr, res_ptr, out_ptr, H, W, C, K: tl.constexpr,
                                 HAS_BIAS: tl.constexpr, GELU: tl.constexpr, HAS_SCALE: tl.constexpr,
                                 HAS_RES: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
        """x, res, out: (B, H, W, C) memory of channels_last maps; w: (K*K, C) taps, row-major over
        (kh, kw); bias, scale: (C,)."""
        bh = tl.program_id(0)  # b * H + h
        h = bh % H
        ws = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cs < C
        img = (bh - h).to(tl.int64) * W * C  # start of image b
        acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
        for kh in tl.static_range(K):
            hh = h + kh - K // 2
            row_ok = (hh >= 0) & (hh < H)
            row = img + hh.to(tl.int64) * W * C
            for kw in tl.static_range(K):
                ww = ws + kw - K // 2
                mask = (row_ok & (ww >= 0) & (ww < W))[:, None] & cmask[None, :]
                x = tl.load(x_ptr + row + ww.to(tl.int64)[:, None] * C + cs[None, :], mask=mask, other=0.0)
                tap = tl.load(w_ptr + (kh * K + kw) * C + cs, mask=cmask, other=0.0)
                acc += x.to(tl.float32) * tap.to(tl.float32)[None, :]
        offs = img + h.to(tl.int64) * W * C + ws.to(tl.int64)[:, None] * C + cs[None, :]
        mask = (ws < W)[:, None] & cmask[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cs, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if GELU:
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        if HAS_SCALE:
            acc = acc * tl.load(scale_ptr + cs, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:
            acc += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)

    def depthwise_conv2d_launch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                                residual: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                                gelu: bool = False) -> torch.Tensor:
        """Channels_last x (B, C, H, W), weight (C, 1, K, K), K odd, stride 1, zero padding K // 2
        -> channels_last ``residual + scale * act(conv(x) + bias)`` (B, C, H, W) of x's dtype."""
        B, C, H, W = x.shape
        K = weight.shape[-1]
        out = torch.empty_like(x, memory_format=torch.channels_last)
        taps = weight.reshape(C, K * K).t().contiguous()  # (K*K, C): a tap's channels are contiguous
        block_c = min(triton.next_power_of_2(C), 64)
        block_w = BLOCK_W if x.is_cuda else 4  # tiny tiles on the interpreter: row-segment borders get tested
        grid = (B * H, triton.cdiv(W, block_w), triton.cdiv(C, block_c))
        _depthwise_conv2d_kernel[grid](
            x, taps, x if bias is None else bias.contiguous(), x if scale is None else scale.contiguous(),
            x if residual is None else residual, out, H, W, C, K=K, HAS_BIAS=bias is not None, GELU=gelu,
            HAS_SCALE=scale is not None, HAS_RES=residual is not None, BLOCK_W=block_w, BLOCK_C=block_c)
        return out

    depthwise_conv2d_triton = torch.library.custom_op("visionattn::depthwise_conv2d", mutates_args=())(
        depthwise_conv2d_launch)

    @depthwise_conv2d_triton.register_fake
    def _(x, weight, bias=None, residual=None, scale=None, gelu=False):
        return torch.empty_like(x, memory_format=torch.channels_last)
