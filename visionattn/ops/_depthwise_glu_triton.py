"""Triton kernel of the gated depth-wise convolution, registered as ``torch.ops.visionattn.depthwise_glu``.

One program computes a (BLOCK_W pixels of one image row) x (BLOCK_C channels) tile: for each of the
K x K taps it loads the shifted row segment of the conv half (contiguous channels, zero outside the
image) and accumulates ``x * weight`` in float32; then bias, GELU (erf) and the gate, read once at
the output pixels, and one rounding at the store. The output rows have their own pixel stride, so
the kernel can write into the gate half of its input (each output element overwrites the one gate
element it alone reads; the conv half is never written). Its autograd formula is the reference's,
registered next to the reference in :mod:`.depthwise_glu`.
"""
import torch

from ._triton import tl, triton

BLOCK_W = 32  # output pixels of one row per program (x up to 64 channels)

if triton is not None:

    @triton.jit
    def _depthwise_glu_kernel(h_ptr, w_ptr, b_ptr, out_ptr, H, W, C, out_pixel_stride,
                              K: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
        """h: (B, H, W, 2C) rows (conv half, then gate half); w: (K*K, C) taps, row-major over (kh, kw);
        out: (B, H, W, C) with pixel stride ``out_pixel_stride`` (C, or 2C into h's gate half)."""
        bh = tl.program_id(0)  # b * H + h
        i = bh % H
        ws = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cs < C
        row_len = W * 2 * C
        img = (bh - i).to(tl.int64) * row_len  # start of image b in h
        acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
        for kh in tl.static_range(K):
            ii = i + kh - K // 2
            row = img + ii.to(tl.int64) * row_len
            for kw in tl.static_range(K):
                jj = ws + kw - K // 2
                mask = ((ii >= 0) & (ii < H) & (jj >= 0) & (jj < W))[:, None] & cmask[None, :]
                x = tl.load(h_ptr + row + jj.to(tl.int64)[:, None] * (2 * C) + cs[None, :], mask=mask, other=0.0)
                tap = tl.load(w_ptr + (kh * K + kw) * C + cs, mask=cmask, other=0.0)
                acc += x.to(tl.float32) * tap.to(tl.float32)[None, :]
        acc += tl.load(b_ptr + cs, mask=cmask, other=0.0).to(tl.float32)[None, :]
        act = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        here = (ws < W)[:, None] & cmask[None, :]
        pixel = bh.to(tl.int64) * W + ws.to(tl.int64)  # (b, i, j) flat
        gate = tl.load(h_ptr + pixel[:, None] * (2 * C) + C + cs[None, :], mask=here, other=0.0)
        out = act * gate.to(tl.float32)
        tl.store(out_ptr + pixel[:, None] * out_pixel_stride + cs[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=here)

    def depthwise_glu_launch(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             into_gate: bool = False) -> torch.Tensor:
        """Contiguous h (B, H, W, 2C), weight (C, 1, K, K), bias (C,) -> (B, H, W, C) in h's dtype: a new
        contiguous tensor, or with ``into_gate`` a view of h's gate half holding the result."""
        B, H, W, C2 = h.shape
        C = C2 // 2
        K = weight.shape[-1]
        out = h[..., C:] if into_gate else h.new_empty(B, H, W, C)
        taps = weight.reshape(C, K * K).t().contiguous()  # (K*K, C): a tap's channels are contiguous
        block_c = min(triton.next_power_of_2(C), 64)
        block_w = BLOCK_W if h.is_cuda else 4  # tiny tiles on the interpreter: row-segment borders get tested
        grid = (B * H, triton.cdiv(W, block_w), triton.cdiv(C, block_c))
        _depthwise_glu_kernel[grid](h, taps, bias, out, H, W, C, out.stride(2), K=K, BLOCK_W=block_w,
                                    BLOCK_C=block_c)
        return out

    @torch.library.custom_op("visionattn::depthwise_glu", mutates_args=())
    def depthwise_glu_triton(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The functional form (a new output tensor) that torch.compile, export and autograd see."""
        return depthwise_glu_launch(h, weight, bias)

    @depthwise_glu_triton.register_fake
    def _(h, weight, bias):
        return h.new_empty(*h.shape[:-1], h.shape[-1] // 2)
