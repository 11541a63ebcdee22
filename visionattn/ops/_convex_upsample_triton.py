"""Triton kernel of convex upsampling, registered as ``torch.ops.visionattn.convex_upsample``.

One program takes ``BLOCK_J`` coarse pixels of one row: it loads their ``9 x f^2`` mask logits as a
(pixels, neighbours, sub-pixels) tile, takes the softmax over the neighbour axis in float32, gathers
the 3x3 neighbourhood of the field (zero outside the map) and writes the ``f x f`` fine pixels of
every channel, rounding once. Nothing of size ``9 x f^2`` per pixel is written (the reference
materialises the weights and their products with the neighbours). Its autograd formula is the
reference's, registered next to the reference in :mod:`.convex_upsample`.
"""
import torch

from ._triton import tl, triton

BLOCK_J = 32  # coarse pixels of one row per program

if triton is not None:

    @triton.jit
    def _convex_upsample_kernel(f_ptr, m_ptr, o_ptr, h, w, stride_mb, stride_mc, stride_mh, stride_mw,
                                D: tl.constexpr, F: tl.constexpr, BLOCK_J: tl.constexpr):
        """f: (B, h, w, D) contiguous; m: (B, 9*F*F, h, w) with any strides (channel 9-major:
        neighbour k = 3*(dy+1) + (dx+1), then the F x F sub-pixels row-major); o: (B, F*h, F*w, D)."""
        FF: tl.constexpr = F * F
        bi = tl.program_id(0)  # b * h + i
        i = bi % h
        b = bi // h
        js = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
        jmask = js < w
        ks = tl.arange(0, 16)  # the 9 neighbours, padded to a power of two
        kmask = ks < 9
        uv = tl.arange(0, FF)

        m_off = (b.to(tl.int64) * stride_mb + i.to(tl.int64) * stride_mh + js.to(tl.int64)[:, None, None] * stride_mw
                 + (ks[None, :, None] * FF + uv[None, None, :]).to(tl.int64) * stride_mc)
        logits = tl.load(m_ptr + m_off, mask=jmask[:, None, None] & kmask[None, :, None],
                         other=float("-inf")).to(tl.float32)  # [BJ, 16, FF]
        top = tl.max(logits, axis=1)
        e = tl.exp(logits - top[:, None, :])  # padded neighbours: exp(-inf) = 0
        weights = e / tl.sum(e, axis=1)[:, None, :]

        ii = i + ks // 3 - 1  # [16]
        jj = js[:, None] + (ks % 3 - 1)[None, :]  # [BJ, 16]
        inside = (jmask[:, None] & (kmask & (ii >= 0) & (ii < h))[None, :] & (jj >= 0) & (jj < w))
        f_off = ((b * h + ii).to(tl.int64)[None, :] * w + jj) * D  # [BJ, 16]
        u = uv // F
        v = uv % F
        o_off = (((b * h + i) * F + u).to(tl.int64)[None, :] * (w * F) + js.to(tl.int64)[:, None] * F
                 + v[None, :]) * D  # [BJ, FF]
        for d in tl.static_range(D):
            nb = tl.load(f_ptr + f_off + d, mask=inside, other=0.0).to(tl.float32) * F
            out = tl.sum(weights * nb[:, :, None], axis=1)  # [BJ, FF]
            tl.store(o_ptr + o_off + d, out.to(o_ptr.dtype.element_ty), mask=jmask[:, None])

    def convex_upsample_launch(field: torch.Tensor, mask: torch.Tensor, factor: int) -> torch.Tensor:
        """field (B, h, w, D), mask (B, 9*f*f, h, w) (any layout) -> (B, f*h, f*w, D) in the promoted dtype."""
        field = field.contiguous()
        B, h, w, D = field.shape
        out = field.new_empty(B, factor * h, factor * w, D, dtype=torch.promote_types(field.dtype, mask.dtype))
        block_j = BLOCK_J if field.is_cuda else 4  # tiny tiles on the interpreter: row borders get tested
        grid = (B * h, triton.cdiv(w, block_j))
        _convex_upsample_kernel[grid](field, mask, out, h, w, *mask.stride(), D=D, F=factor, BLOCK_J=block_j)
        return out

    @torch.library.custom_op("visionattn::convex_upsample", mutates_args=())
    def convex_upsample_triton(field: torch.Tensor, mask: torch.Tensor, factor: int) -> torch.Tensor:
        return convex_upsample_launch(field, mask, factor)

    @convex_upsample_triton.register_fake
    def _(field, mask, factor):
        B, h, w, D = field.shape
        return field.new_empty(B, factor * h, factor * w, D, dtype=torch.promote_types(field.dtype, mask.dtype))
