"""Triton kernel of the forward-backward consistency check (:mod:`.consistency_mask`), registered as
``torch.ops.visionattn.consistency_mask`` (no autograd formula: the mask has no gradient).

One program takes ``BLOCK`` pixels of the flattened (2B, H, W) map: it reads each pixel's (x, y)
field, computes the sampling position in the other view as ``grid_sample(align_corners=True)``
does after the reference's normalisation (``2 * pos / (size - 1) - 1``, then back to pixels), reads
the four neighbours of both channels in the other view (zeros outside), and writes the comparison
of the L1 round trip with the threshold. Float32 arithmetic in the reference's order, divisions
rounded to nearest (Triton's default float32 division is approximate).
"""
import torch

from ._triton import tl, triton

BLOCK = 512  # pixels per program

if triton is not None:

    @triton.jit
    def _tap(f_ptr, base, sc, xi, yi, w, H, W, stride_h, stride_w, ok):
        """w * other-view field at integer pixel (xi, yi) (both channels; 0 outside the map)."""
        inside = ok & (xi >= 0) & (xi <= W - 1) & (yi >= 0) & (yi <= H - 1)
        off = base + tl.where(inside, yi, 0).to(tl.int64) * stride_h + tl.where(inside, xi, 0).to(tl.int64) * stride_w
        vx = tl.load(f_ptr + off, mask=inside, other=0.0).to(tl.float32)
        vy = tl.load(f_ptr + off + sc, mask=inside, other=0.0).to(tl.float32)
        return vx * w, vy * w

    @triton.jit
    def _consistency_mask_kernel(f_ptr, o_ptr, n, H, W, half, stride_b, stride_h, stride_w, stride_c, threshold,
                                 wm1, hm1, BLOCK: tl.constexpr):
        """wm1, hm1: W - 1 and H - 1 as floats (an int argument equal to 1 becomes a constant in Triton)."""
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = p < n
        j = p % W
        t = p // W
        i = t % H
        b = t // H
        own = b.to(tl.int64) * stride_b + i.to(tl.int64) * stride_h + j.to(tl.int64) * stride_w
        fx = tl.load(f_ptr + own, mask=ok, other=0.0).to(tl.float32)
        fy = tl.load(f_ptr + own + stride_c, mask=ok, other=0.0).to(tl.float32)
        # the reference's normalised coordinates, then grid_sample's unnormalisation
        nx = tl.math.div_rn(2.0 * (fx + j.to(tl.float32)), tl.maximum(wm1, 1.0)) - 1.0
        ny = tl.math.div_rn(2.0 * (fy + i.to(tl.float32)), tl.maximum(hm1, 1.0)) - 1.0
        ix = ((nx + 1.0) * 0.5) * wm1
        iy = ((ny + 1.0) * 0.5) * hm1
        x0 = tl.floor(ix)
        y0 = tl.floor(iy)
        finite = ok & (x0 >= -1.0) & (x0 <= wm1) & (y0 >= -1.0) & (y0 <= hm1)  # else all taps outside (or NaN)
        xi = tl.where(finite, x0, 0.0).to(tl.int32)
        yi = tl.where(finite, y0, 0.0).to(tl.int32)
        dx1 = (x0 + 1.0) - ix
        dx0 = ix - x0
        dy1 = (y0 + 1.0) - iy
        dy0 = iy - y0
        other_b = (b + half) % (2 * half)
        base = other_b.to(tl.int64) * stride_b
        # the four taps in grid_sample's order: north-west, north-east, south-west, south-east
        ax, ay = _tap(f_ptr, base, stride_c, xi, yi, dx1 * dy1, H, W, stride_h, stride_w, finite)
        ox = ax
        oy = ay
        ax, ay = _tap(f_ptr, base, stride_c, xi + 1, yi, dx0 * dy1, H, W, stride_h, stride_w, finite)
        ox += ax
        oy += ay
        ax, ay = _tap(f_ptr, base, stride_c, xi, yi + 1, dx1 * dy0, H, W, stride_h, stride_w, finite)
        ox += ax
        oy += ay
        ax, ay = _tap(f_ptr, base, stride_c, xi + 1, yi + 1, dx0 * dy0, H, W, stride_h, stride_w, finite)
        ox += ax
        oy += ay
        err = tl.abs(fx + ox) + tl.abs(fy + oy)
        tl.store(o_ptr + p, (err < threshold).to(o_ptr.dtype.element_ty), mask=ok)

    def consistency_mask_launch(field: torch.Tensor, threshold: float, dtype: torch.dtype) -> torch.Tensor:
        """field (2B, H, W, 2), any strides -> (2B, H, W, 1) contiguous mask of ``dtype``."""
        N, H, W, _ = field.shape
        out = torch.empty(N, H, W, 1, device=field.device, dtype=dtype)
        n = N * H * W
        if n:
            block = BLOCK if field.is_cuda else 64  # small tiles on the interpreter: several programs get tested
            _consistency_mask_kernel[(triton.cdiv(n, block),)](
                field, out, n, H, W, N // 2, *field.stride(), float(threshold), float(W - 1), float(H - 1),
                BLOCK=block)
        return out

    @torch.library.custom_op("visionattn::consistency_mask", mutates_args=())
    def consistency_mask_triton(field: torch.Tensor, threshold: float, dtype: torch.dtype) -> torch.Tensor:
        return consistency_mask_launch(field, threshold, dtype)

    @consistency_mask_triton.register_fake
    def _(field, threshold, dtype):
        return field.new_empty(*field.shape[:3], 1, dtype=dtype)
