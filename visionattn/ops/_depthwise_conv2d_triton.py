"""Triton kernel of the depth-wise 2-D convolution on channels_last maps with a fused epilogue,
registered as ``torch.ops.visionattn.depthwise_conv2d``.

Tiling: the pixels of a channels_last batch are one list of ``B*H*W`` rows of ``C`` contiguous
channels. One program computes a (BLOCK_P consecutive pixels) x (BLOCK_C channels) tile of the
output. For a tap (dh, dw) the input pixel of output pixel ``p`` is ``p + dh*W + dw`` (same image
when ``h + dh`` and ``w + dw`` are inside it, which the mask checks), so every tap is the output
tile's offsets shifted by one scalar: no index math per element, 16-byte channel vectors, and no
idle lanes at the end of short rows (FFNet's 7x7 and 14x14 maps) because a tile runs on into the
next rows and images. The K x K taps are unrolled; a tile spans one or more image rows, so the K
horizontal shifts of an input row segment, and neighbouring rows, are read from L1/L2 rather than
memory. float32 accumulation, then the epilogue ``residual + scale * act(acc + bias)`` (act = GELU
(erf) or identity), one rounding at the store. Its autograd formula is the reference's, registered
next to the reference in :mod:`.depthwise_conv2d`.
"""
from typing import Optional, Tuple

import torch

from ._triton import tl, triton

TILE_ELEMENTS = 4096  # BLOCK_P * BLOCK_C: 32 fp32 accumulators per thread at 4 warps
NUM_WARPS = 4


def pick_tiles(C: int, cuda: bool = True) -> Tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, num_warps) for ``C`` channels.

    BLOCK_C: the widest of 64/32/16 whose channel blocks waste < 10 % of lanes (FFNet: 80 -> 16,
    160 -> 32, 320/640 -> 64, 88 -> 32), else the least wasteful; BLOCK_P fills TILE_ELEMENTS. On the
    CPU interpreter the tiles are tiny so that tile and image borders fall inside the tests' maps.
    """
    candidates = (64, 32, 16)
    waste = {b: 1 - C / (triton.cdiv(C, b) * b) for b in candidates}
    good = [b for b in candidates if waste[b] < 0.1]
    block_c = good[0] if good else min(candidates, key=lambda b: (waste[b], b))
    if not cuda:
        return 16, block_c, 1
    return TILE_ELEMENTS // block_c, block_c, NUM_WARPS


if triton is not None:

    @triton.jit
    def _depthwise_conv2d_kernel(x_ptr, w_ptr, bias_ptr, res_ptr, scale_ptr, out_ptr, M, H, W, C,
                                 K: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr,
                                 HAS_SCALE: tl.constexpr, HAS_RES: tl.constexpr, EVEN_C: tl.constexpr,
                                 BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """x, res, out: (B*H*W, C) rows of channels_last maps; w: (K*K, C) taps, row-major over (kh, kw); bias, scale: (C,)."""
        p0 = tl.program_id(0) * BLOCK_P
        ps = p0 + tl.arange(0, BLOCK_P)  # flat pixel index b*H*W + h*W + w
        cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        pmask = ps < M
        cmask = cs < C
        w = ps % W
        h = (ps // W) % H
        base = p0.to(tl.int64) * C  # the tile's first pixel; offsets below are relative (int32)
        local = tl.arange(0, BLOCK_P)[:, None] * C + cs[None, :]
        acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        for kh in range(K):  # rolled: one row of taps in flight keeps registers low (K=7)
            dh = kh - K // 2
            row_ok = pmask & (h + dh >= 0) & (h + dh < H)
            for kw in tl.static_range(K):
                dw = kw - K // 2
                ok = row_ok & (w + dw >= 0) & (w + dw < W)
                if EVEN_C:
                    mask = ok[:, None]
                    tap = tl.load(w_ptr + (kh * K + kw) * C + cs)
                else:
                    mask = ok[:, None] & cmask[None, :]
                    tap = tl.load(w_ptr + (kh * K + kw) * C + cs, mask=cmask, other=0.0)
                x = tl.load(x_ptr + base + (local + (dh * W + dw) * C), mask=mask, other=0.0)
                acc += x.to(tl.float32) * tap.to(tl.float32)[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cs, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if GELU:
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        if HAS_SCALE:
            acc = acc * tl.load(scale_ptr + cs, mask=cmask, other=0.0).to(tl.float32)[None, :]
        out_mask = pmask[:, None] & cmask[None, :]
        if HAS_RES:
            acc += tl.load(res_ptr + base + local, mask=out_mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + base + local, acc.to(out_ptr.dtype.element_ty), mask=out_mask)

    def launch_with_tiles(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          residual: Optional[torch.Tensor], scale: Optional[torch.Tensor], gelu: bool,
                          block_p: int, block_c: int, num_warps: int) -> torch.Tensor:
        """The kernel at explicit tiles (benchmarks sweep them; :func:`depthwise_conv2d_launch` picks them)."""
        B, C, H, W = x.shape
        K = weight.shape[-1]
        M = B * H * W
        if M + block_p > 2 ** 31 or block_p * C > 2 ** 31:
            raise ValueError(f"depthwise_conv2d (triton): {M} pixels of {C} channels exceed the kernel's int32 "
                             "pixel index; split the batch or use impl='reference'")
        out = torch.empty_like(x, memory_format=torch.channels_last)
        taps = weight.reshape(C, K * K).t().contiguous()  # (K*K, C): a tap's channels are contiguous
        grid = (triton.cdiv(M, block_p), triton.cdiv(C, block_c))
        _depthwise_conv2d_kernel[grid](
            x, taps, x if bias is None else bias.contiguous(), x if residual is None else residual,
            x if scale is None else scale.contiguous(), out, M, H, W, C, K=K, HAS_BIAS=bias is not None,
            GELU=gelu, HAS_SCALE=scale is not None, HAS_RES=residual is not None, EVEN_C=C % block_c == 0,
            BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps)
        return out

    def depthwise_conv2d_launch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                                residual: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                                gelu: bool = False) -> torch.Tensor:
        """Channels_last x (B, C, H, W) [and residual], weight (C, 1, K, K) with K odd, bias/scale (C,) or
        None; stride 1, zero padding K // 2 -> channels_last (B, C, H, W) of x's dtype."""
        return launch_with_tiles(x, weight, bias, residual, scale, gelu, *pick_tiles(x.shape[1], x.is_cuda))

    depthwise_conv2d_triton = torch.library.custom_op("visionattn::depthwise_conv2d", mutates_args=())(
        depthwise_conv2d_launch)

    @depthwise_conv2d_triton.register_fake
    def _(x, weight, bias=None, residual=None, scale=None, gelu=False):
        return torch.empty_like(x, memory_format=torch.channels_last)
