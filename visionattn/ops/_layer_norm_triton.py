"""Triton kernel of LayerNorm over the last axis, registered as ``torch.ops.visionattn.layer_norm_triton``.

One program normalises ``BLOCK_M`` rows of ``D <= 8192`` channels in one pass (statistics in
float32), reading the rows through a stride so that a channel slice of a wider tensor needs no
copy; a width like 272 is covered by two power-of-two column ranges (256 + 16) rather than one
half-masked 512 tile. The backward is written with PyTorch ops and recomputes the statistics.

``add_layer_norm_triton`` is the residual form ``s = x + r, y = LN(s)`` (both returned, with the row
statistics), ``r`` optionally scaled per sample; its backward ``layer_norm_bwd_triton`` is a Triton
kernel that reads ``s`` and the statistics, adds the gradient of ``s`` to the input gradient in the
same pass (and writes the scaled residual's gradient beside it), and sums the weight/bias gradients
per program (then over programs in one launch, ``_bias_grad_triton.sum_table``).
"""
from typing import Optional, Tuple

import torch

from ._triton import power_of_two_ranges, tl, triton


def rows_are_a_view(x: torch.Tensor) -> bool:
    """Whether ``x (..., D)`` reads as ``(rows, D)`` with one row stride (e.g. a channel slice)."""
    try:
        x.view(-1, x.shape[-1])
        return True
    except RuntimeError:
        return False


if triton is not None:

    @triton.jit
    def _row_part(x_rows, cols, row_mask, D: tl.constexpr):
        """Channels ``cols`` of the rows as float32 (0 past D) and their sum."""
        x = tl.load(x_rows + cols[None, :], mask=row_mask[:, None] & (cols < D)[None, :], other=0.0)
        x = x.to(tl.float32)
        return x, tl.sum(x, axis=1)

    @triton.jit
    def _normalised_store(y_rows, xc, rstd, w_ptr, b_ptr, cols, row_mask, D: tl.constexpr, OUT_W: tl.constexpr,
                          HAS_BIAS: tl.constexpr):
        y = xc * rstd[:, None] * tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            y += tl.load(b_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
        # y is 0 past D (x, w and b load as 0 there): the zero channels up to OUT_W
        tl.store(y_rows + cols[None, :], y.to(y_rows.dtype.element_ty), mask=row_mask[:, None] & (cols < OUT_W)[None, :])

    @triton.jit
    def _layer_norm_fwd(x_ptr, w_ptr, b_ptr, y_ptr, rows, stride_x, eps,
                        D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, OUT_W: tl.constexpr,
                        BLOCK_M: tl.constexpr, HAS_BIAS: tl.constexpr):
        """Rows of D channels in, rows of OUT_W >= D channels out (the ones past D written as zeros).

        The OUT_W columns are covered by one power-of-two range ``D1`` or two, ``D2`` after it (0: none), as
        272 = 256 + 16: a single range would be 512 wide, half of it masked lanes."""
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = offs_m < rows
        x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_x
        y_rows = y_ptr + offs_m.to(tl.int64)[:, None] * OUT_W
        cols1 = tl.arange(0, D1)
        x1, total = _row_part(x_rows, cols1, row_mask, D)
        if D2 > 0:
            cols2 = D1 + tl.arange(0, D2)
            x2, total2 = _row_part(x_rows, cols2, row_mask, D)
            total += total2
        mean = total / D
        xc1 = tl.where((cols1 < D)[None, :], x1 - mean[:, None], 0.0)
        var = tl.sum(xc1 * xc1, axis=1)
        if D2 > 0:
            xc2 = tl.where((cols2 < D)[None, :], x2 - mean[:, None], 0.0)
            var += tl.sum(xc2 * xc2, axis=1)
        rstd = 1.0 / tl.sqrt(var / D + eps)
        _normalised_store(y_rows, xc1, rstd, w_ptr, b_ptr, cols1, row_mask, D, OUT_W, HAS_BIAS)
        if D2 > 0:
            _normalised_store(y_rows, xc2, rstd, w_ptr, b_ptr, cols2, row_mask, D, OUT_W, HAS_BIAS)

    @torch.library.custom_op("visionattn::layer_norm_triton", mutates_args=())
    def layer_norm_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          eps: float, width: int = 0) -> torch.Tensor:
        """x (..., D) with unit stride on the last axis and one row stride -> contiguous (..., D), or
        (..., width) with zeros past D when ``width`` > 0."""
        D = x.shape[-1]
        out_w = width or D
        rows = x.numel() // D
        y = torch.empty(x.shape[:-1] + (out_w,), device=x.device, dtype=x.dtype)
        if rows == 0:
            return y
        x2 = x.view(rows, D) if x.stride(-1) == 1 and rows_are_a_view(x) else x.reshape(rows, D).contiguous()
        d1, d2 = power_of_two_ranges(out_w)
        if triton.next_power_of_2(out_w) < 1.5 * (d1 + d2):
            # one tile when it is not much wider: 336 = 256 + 128 ran 7 % slower as two than as one 512
            # tile on an H200, 272 = 256 + 16 20 % faster as two (MatchStereo-B's 4K rows)
            d1, d2 = triton.next_power_of_2(out_w), 0
        block_m = _block_m(d1 + d2)
        _layer_norm_fwd[(triton.cdiv(rows, block_m),)](
            x2, weight, bias if bias is not None else weight, y, rows, x2.stride(0), eps,
            D=D, D1=d1, D2=d2, OUT_W=out_w, BLOCK_M=block_m, HAS_BIAS=bias is not None,
            num_warps=4 if d1 + d2 <= 512 else 8)
        return y

    @layer_norm_triton.register_fake
    def _(x, weight, bias, eps, width=0):
        return torch.empty(x.shape[:-1] + (width or x.shape[-1],), device=x.device, dtype=x.dtype)

    def _setup_context(ctx, inputs, output):
        x, weight, bias, eps, _ = inputs
        ctx.save_for_backward(x, weight)
        ctx.eps, ctx.has_bias = eps, bias is not None

    def _backward(ctx, grad):
        """Standard LayerNorm backward with the statistics recomputed, in float32 (the zero channels
        past D, if any, take no gradient)."""
        x, weight = ctx.saved_tensors
        xf, g = x.float(), grad[..., :x.shape[-1]].float()
        mean = xf.mean(-1, keepdim=True)
        rstd = torch.rsqrt((xf - mean).pow(2).mean(-1, keepdim=True) + ctx.eps)
        xhat = (xf - mean) * rstd
        gw = g * weight.float()
        gx = rstd * (gw - gw.mean(-1, keepdim=True) - xhat * (gw * xhat).mean(-1, keepdim=True))
        dims = tuple(range(x.dim() - 1))
        dweight = (g * xhat).sum(dims).to(weight.dtype)
        dbias = g.sum(dims).to(weight.dtype) if ctx.has_bias else None
        return gx.to(x.dtype), dweight, dbias, None, None

    layer_norm_triton.register_autograd(_backward, setup_context=_setup_context)


# --- LayerNorm of a residual sum: s = x + r, y = LN(s), both returned ---------------------------

if triton is not None:
    from ._bias_grad_triton import sum_table

    @triton.jit
    def _add_layer_norm_fwd(x_ptr, r_ptr, rb_ptr, rs_ptr, w_ptr, b_ptr, y_ptr, s_ptr, mean_ptr, rstd_ptr, rows,
                            stride_x, stride_r, rows_per_scale, eps, D: tl.constexpr, DP: tl.constexpr,
                            BLOCK_M: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RBIAS: tl.constexpr,
                            HAS_RSCALE: tl.constexpr):
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, DP)
        mask_m = offs_m < rows
        mask_d = offs_d < D
        mask = mask_m[:, None] & mask_d[None, :]
        rows64 = offs_m.to(tl.int64)[:, None]
        x = tl.load(x_ptr + rows64 * stride_x + offs_d[None, :], mask=mask, other=0.0)
        r = tl.load(r_ptr + rows64 * stride_r + offs_d[None, :], mask=mask, other=0.0)
        # the sum rounded to its storage dtype, then normalised: what ``LN(x + r)`` computes
        r = r.to(tl.float32)
        if HAS_RBIAS:  # a per-channel bias of the residual branch (a convolution's, added here instead),
            # rounded to r's dtype as the branch's own output ``r + c`` would be
            r += tl.load(rb_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
            r = r.to(r_ptr.dtype.element_ty).to(tl.float32)
        if HAS_RSCALE:  # one factor per sample (rows_per_scale rows), the product rounded as ``r * k`` is
            k = tl.load(rs_ptr + offs_m // rows_per_scale, mask=mask_m, other=0.0).to(tl.float32)
            r = (r * k[:, None]).to(r_ptr.dtype.element_ty).to(tl.float32)
        s = (x.to(tl.float32) + r).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + rows64 * D + offs_d[None, :], s, mask=mask)
        s = s.to(tl.float32)
        mean = tl.sum(s, axis=1) / D
        sc = tl.where(mask, s - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(sc * sc, axis=1) / D + eps)
        y = sc * rstd[:, None] * tl.load(w_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rows64 * D + offs_d[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + offs_m, mean, mask=mask_m)
        tl.store(rstd_ptr + offs_m, rstd, mask=mask_m)

    @triton.jit
    def _layer_norm_bwd(s_ptr, w_ptr, mean_ptr, rstd_ptr, dy_ptr, ds_ptr, dx_ptr, rs_ptr, dr_ptr, dw_ptr, db_ptr,
                        rows, tiles_per_prog, rows_per_scale, D: tl.constexpr, DP: tl.constexpr,
                        BLOCK_M: tl.constexpr, HAS_DS: tl.constexpr, HAS_RSCALE: tl.constexpr):
        """dx = rstd * (w dy - mean(w dy) - xhat * mean(xhat w dy)) (+ ds); with row scales k, also
        dr = dx * k (dx rounded to dr's dtype first, as the multiply's backward receives it); per-program
        partial sums of dw = sum(dy xhat) and db = sum(dy) over the rows of its tiles (rows 2 * DP
        apart: the two halves of one table)."""
        pid = tl.program_id(0)
        offs_d = tl.arange(0, DP)
        mask_d = offs_d < D
        w = tl.load(w_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        dw_acc = tl.zeros((DP,), dtype=tl.float32)
        db_acc = tl.zeros((DP,), dtype=tl.float32)
        for t in range(0, tiles_per_prog):
            offs_m = (pid * tiles_per_prog + t) * BLOCK_M + tl.arange(0, BLOCK_M)
            mask_m = offs_m < rows
            mask = mask_m[:, None] & mask_d[None, :]
            idx = offs_m.to(tl.int64)[:, None] * D + offs_d[None, :]
            s = tl.load(s_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + offs_m, mask=mask_m, other=0.0)
            rstd = tl.load(rstd_ptr + offs_m, mask=mask_m, other=0.0)
            xhat = tl.where(mask, (s - mean[:, None]) * rstd[:, None], 0.0)
            wdy = dy * w[None, :]
            c1 = tl.sum(xhat * wdy, axis=1) / D
            c2 = tl.sum(wdy, axis=1) / D
            dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
            if HAS_DS:
                dx += tl.load(ds_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            tl.store(dx_ptr + idx, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            if HAS_RSCALE:
                k = tl.load(rs_ptr + offs_m // rows_per_scale, mask=mask_m, other=0.0).to(tl.float32)
                dr = dx.to(dr_ptr.dtype.element_ty).to(tl.float32) * k[:, None]
                tl.store(dr_ptr + idx, dr.to(dr_ptr.dtype.element_ty), mask=mask)
            dw_acc += tl.sum(dy * xhat, axis=0)
            db_acc += tl.sum(dy, axis=0)
        tl.store(dw_ptr + pid * 2 * DP + offs_d, dw_acc, mask=mask_d)
        tl.store(db_ptr + pid * 2 * DP + offs_d, db_acc, mask=mask_d)

    def _rows_view(t: torch.Tensor) -> torch.Tensor:
        D = t.shape[-1]
        return t.view(-1, D) if t.stride(-1) == 1 and rows_are_a_view(t) else t.reshape(-1, D).contiguous()

    def _block_m(DP: int) -> int:
        """Rows per program: a tile of ~4K elements (a power of two)."""
        return 1 << (max(1, min(64, 4096 // DP)).bit_length() - 1)

    @torch.library.custom_op("visionattn::add_layer_norm_triton", mutates_args=())
    def add_layer_norm_triton(x: torch.Tensor, r: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                              eps: float, y_dtype: torch.dtype, residual_bias: Optional[torch.Tensor] = None,
                              residual_scale: Optional[torch.Tensor] = None
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x, r (..., D) of one shape -> (y = LN(x + r) in ``y_dtype``, s = x + r, mean, rstd) with
        y and s contiguous and the float32 row statistics (rows,) that the backward reads.
        ``residual_bias`` (D,): added to r first; ``residual_scale`` (N,), contiguous, N = r.shape[0]:
        r[n] multiplied by it first (neither gets a gradient: callers pass ones that need none)."""
        D = x.shape[-1]
        rows = x.numel() // D
        s = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(x.dtype, r.dtype))
        y = torch.empty(x.shape, device=x.device, dtype=y_dtype)
        mean = torch.empty(rows, device=x.device, dtype=torch.float32)
        rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
        if rows == 0:
            return y, s, mean, rstd
        x2, r2 = _rows_view(x), _rows_view(r)
        DP = triton.next_power_of_2(D)
        block_m = _block_m(DP)
        _add_layer_norm_fwd[(triton.cdiv(rows, block_m),)](
            x2, r2, residual_bias if residual_bias is not None else weight,
            residual_scale if residual_scale is not None else weight, weight, bias if bias is not None else weight,
            y, s, mean, rstd, rows, x2.stride(0), r2.stride(0), _rows_per_sample(x, residual_scale), eps, D=D, DP=DP,
            BLOCK_M=block_m, HAS_BIAS=bias is not None, HAS_RBIAS=residual_bias is not None,
            HAS_RSCALE=residual_scale is not None, num_warps=4 if DP <= 512 else 8)
        return y, s, mean, rstd

    def _rows_per_sample(x: torch.Tensor, scale: Optional[torch.Tensor]) -> int:
        """Rows of D channels per factor of ``scale`` (N,): x's rows, read in order, group by sample."""
        return 1 if scale is None else max(1, x.numel() // (x.shape[-1] * scale.shape[0]))

    @add_layer_norm_triton.register_fake
    def _(x, r, weight, bias, eps, y_dtype, residual_bias=None, residual_scale=None):
        rows = x.numel() // x.shape[-1]
        s = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(x.dtype, r.dtype))
        return (torch.empty(x.shape, device=x.device, dtype=y_dtype), s,
                x.new_empty(rows, dtype=torch.float32), x.new_empty(rows, dtype=torch.float32))

    @torch.library.custom_op("visionattn::layer_norm_bwd_triton", mutates_args=())
    def layer_norm_bwd_triton(s: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                              dy: torch.Tensor, ds: Optional[torch.Tensor], dx_dtype: torch.dtype,
                              residual_scale: Optional[torch.Tensor] = None, dr_dtype: Optional[torch.dtype] = None
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LayerNorm backward from the saved input ``s`` (contiguous) and statistics: (ds_total in
        ``dx_dtype``, dr, sums), sums (2 * DP,) in the weight's dtype holding dweight at ``[:D]`` and dbias
        at ``[DP:DP + D]`` (DP = D rounded up to a power of two); each rounded once from float32. ``ds``
        (optional) is added to the input's gradient. With ``residual_scale`` (N,), dr is the gradient of
        the scaled residual, ``ds_total * k`` per sample, in ``dr_dtype``; without it, an empty tensor."""
        D = s.shape[-1]
        rows = s.numel() // D
        dx = torch.empty(s.shape, device=s.device, dtype=dx_dtype)
        dr = (torch.empty(s.shape, device=s.device, dtype=dr_dtype or dx_dtype) if residual_scale is not None
              else s.new_empty(0))
        DP = triton.next_power_of_2(D)
        block_m = _block_m(DP)
        tiles = triton.cdiv(rows, block_m)
        if s.is_cuda:
            progs = min(tiles, 4 * torch.cuda.get_device_properties(s.device).multi_processor_count)
        else:
            progs = min(tiles, 4)
        progs = max(progs, 1)
        per_prog = triton.cdiv(tiles, progs)
        progs = triton.cdiv(tiles, per_prog)
        table = torch.empty((progs, 2, DP), device=s.device, dtype=torch.float32)  # dw and db partial sums
        dy = dy.contiguous()
        ds = ds.contiguous() if ds is not None else None
        has_scale = residual_scale is not None
        _layer_norm_bwd[(progs,)](s, weight, mean, rstd, dy, ds if ds is not None else dy, dx,
                                  residual_scale if has_scale else weight, dr if has_scale else dx, table, table[:, 1],
                                  rows, per_prog, _rows_per_sample(s, residual_scale), D=D, DP=DP, BLOCK_M=block_m,
                                  HAS_DS=ds is not None, HAS_RSCALE=has_scale, num_warps=4 if DP <= 512 else 8)
        return dx, dr, sum_table(table.view(progs, 2 * DP), weight.dtype)  # both gradients in one launch

    @layer_norm_bwd_triton.register_fake
    def _(s, weight, mean, rstd, dy, ds, dx_dtype, residual_scale=None, dr_dtype=None):
        D = s.shape[-1]
        dr = (torch.empty(s.shape, device=s.device, dtype=dr_dtype or dx_dtype) if residual_scale is not None
              else s.new_empty(0))
        return (torch.empty(s.shape, device=s.device, dtype=dx_dtype), dr,
                weight.new_empty(2 * triton.next_power_of_2(D)))

    def _add_setup_context(ctx, inputs, output):
        x, r, weight, bias, eps, y_dtype, _, scale = inputs
        _, s, mean, rstd = output
        ctx.save_for_backward(s, weight, mean, rstd, scale)
        ctx.mark_non_differentiable(mean, rstd)
        ctx.has_bias, ctx.x_dtype, ctx.r_dtype = bias is not None, x.dtype, r.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None

    def _add_backward(ctx, dy, ds, dmean, drstd):
        s, weight, mean, rstd, scale = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(s)
        # one gradient for both addends when they share a dtype (written once, in it); else float32, cast to each;
        # a scaled residual's own, written in its dtype by the same pass
        one_dtype = ctx.x_dtype == ctx.r_dtype
        dx, dr, sums = torch.ops.visionattn.layer_norm_bwd_triton(s, weight, mean, rstd, dy, ds,
                                                                  ctx.x_dtype if one_dtype else torch.float32,
                                                                  scale, ctx.r_dtype)
        D = s.shape[-1]
        DP = triton.next_power_of_2(D)
        return (dx.to(ctx.x_dtype), dx.to(ctx.r_dtype) if scale is None else dr, sums[:D],
                sums[DP:DP + D].to(ctx.bias_dtype) if ctx.has_bias else None, None, None, None, None)

    add_layer_norm_triton.register_autograd(_add_backward, setup_context=_add_setup_context)
