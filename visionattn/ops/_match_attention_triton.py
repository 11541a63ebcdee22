"""Triton kernels of MatchAttention (forward and backward), registered as ``torch.ops.visionattn``.

One program handles ``BLOCK_N`` queries of one (batch, head): it gathers their ``(2r+2)^2`` key
and value rows as ``[BLOCK_N, window, head dim]`` tiles, computes the negative-L1 logits, the four
sub-window softmaxes and their bilinear blend in registers, and writes the output and the
attention weights. Nothing of size ``N x M x D`` touches memory (the reference materialises it).

Tile sides must be powers of two. The forward covers the window and the head dim each with at most
two power-of-two ranges (36 = 32 + 4 positions, head dim 80 = 64 + 16), so it computes no padding
lanes: the kernel is bound by instruction issue (on an H200 at MatchStereo-B's 1/16 level, a single
padded 64 x 128 tile for a 36 x 80 window kept the SM issue slots 68 % busy with 35 % of the lanes
useful). The backward keeps one padded tile.

The backward recomputes the logits and softmaxes (no saved intermediates besides the inputs):

* ``dA_j = <dO, v_j> + dAttn_j`` (the attention weights are an output of their own);
* ``dv_j += A_j dO``;
* per sub-window ``t``: ``dw_t = sum_j dA_j alpha^t_j`` and
  ``dlogit_j += w_t alpha^t_j (dA_j - dw_t)`` (softmax backward);
* ``dq = -scale sum_j dlogit_j sign(q - k_j)``, ``dk_j += scale dlogit_j sign(q - k_j)``;
* ``dc = dw . dw/df`` with ``w = ((1-fx)(1-fy), fx(1-fy), (1-fx)fy, fx fy)``.

``dk``/``dv`` are scattered with fp32 atomics (several queries share a key).
"""
from typing import Tuple

import torch

from ._triton import power_of_two_ranges, tl, triton, unit_last_stride

if triton is not None:
    # below this, a sub-window total of the forward's shared-shift softmax may have lost terms to underflow
    # (it means the sub-window's maximum lies > ~46 below the window's; terms then lost weigh < 1e-16 of
    # their sub-window): the tile takes the exact form
    SHARED_SHIFT_FLOOR = tl.constexpr(1e-20)

    @triton.jit
    def _centres(c_ptr, b, hh, offs_n, mask_n, stride_cb, stride_cn, stride_ch, hi_x, hi_y, R: tl.constexpr):
        """Raw centres, their fractions and the integer corner of each query's window centre."""
        c_base = c_ptr + b.to(tl.int64) * stride_cb + offs_n.to(tl.int64) * stride_cn + hh * stride_ch
        cx_raw = tl.load(c_base, mask=mask_n, other=R)
        cy_raw = tl.load(c_base + 1, mask=mask_n, other=R)
        # the window must stay inside the map: centre in [R, W-1-R-1e-3] x [R, H-1-R-1e-3]
        cx = tl.minimum(tl.maximum(cx_raw, R * 1.0), hi_x)
        cy = tl.minimum(tl.maximum(cy_raw, R * 1.0), hi_y)
        fx0 = tl.floor(cx)
        fy0 = tl.floor(cy)
        return cx_raw, cy_raw, cx - fx0, cy - fy0, fx0.to(tl.int32), fy0.to(tl.int32)

    @triton.jit
    def _window_rows(mx, my, mask_n, W, kb, hh, stride_kb, stride_kn, D: tl.constexpr, R: tl.constexpr,
                     J0: tl.constexpr, JP: tl.constexpr):
        """Element offsets of the key/value rows of window positions ``J0 .. J0+JP-1`` ([BN, JP]), their
        map positions and window coordinates, and which positions exist (``< (2R+2)^2``)."""
        S: tl.constexpr = 2 * R + 2
        offs_j = J0 + tl.arange(0, JP)
        jx = offs_j % S
        jy = offs_j // S
        mask_j = offs_j < S * S
        mask_nj = mask_n[:, None] & mask_j[None, :]
        pos = (my[:, None] + jy[None, :] - R) * W + (mx[:, None] + jx[None, :] - R)
        pos = tl.where(mask_nj, pos, 0)
        row = kb.to(tl.int64) * stride_kb + pos.to(tl.int64) * stride_kn + hh * D
        return row, pos, jx, jy, mask_j, mask_nj

    @triton.jit
    def _l1_part(q_ptr, k_ptr, q_off, row, mask_n, mask_nj, D: tl.constexpr, D0: tl.constexpr, DW: tl.constexpr):
        """L1 distances between each query and its window's keys over head-dim columns D0 .. D0+DW-1."""
        offs_d = D0 + tl.arange(0, DW)
        mask_d = offs_d < D
        qv = tl.load(q_ptr + q_off[:, None] + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :],
                     other=0.0).to(tl.float32)
        kw = tl.load(k_ptr + row[:, :, None] + offs_d[None, None, :],
                     mask=mask_nj[:, :, None] & mask_d[None, None, :], other=0.0).to(tl.float32)
        return tl.sum(tl.abs(qv[:, None, :] - kw), axis=2)

    @triton.jit
    def _value_part(v_ptr, row, attn, mask_nj, D: tl.constexpr, D0: tl.constexpr, DW: tl.constexpr):
        """sum_j attn_j v_j over head-dim columns D0 .. D0+DW-1 ([BN, DW])."""
        offs_d = D0 + tl.arange(0, DW)
        vw = tl.load(v_ptr + row[:, :, None] + offs_d[None, None, :],
                     mask=mask_nj[:, :, None] & (offs_d < D)[None, None, :], other=0.0).to(tl.float32)
        return tl.sum(attn[:, :, None] * vw, axis=1)

    @triton.jit
    def _window(c_ptr, q_ptr, k_ptr, v_ptr, b, hh, offs_n, mask_n, H, W, N, NB, kv_shift,
                stride_qb, stride_qn, stride_kb, stride_kn, stride_cb, stride_cn, stride_ch,
                hi_x, hi_y, C: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                R: tl.constexpr, MP: tl.constexpr, scale):
        """The backward's padded window: clamped centres and their fractions, gathered k/v tiles, logits.

        Keys/values of batch ``b`` come from batch ``(b + kv_shift) % NB`` (cross attention of two
        stacked views without swapping them in memory); strides let q/k/v be column slices of one
        fused projection and the centres be broadcast over heads (head stride 0).
        """
        offs_d = tl.arange(0, DP)
        mask_d = offs_d < D
        cx_raw, cy_raw, fx, fy, mx, my = _centres(c_ptr, b, hh, offs_n, mask_n, stride_cb, stride_cn, stride_ch,
                                                  hi_x, hi_y, R)
        kb = (b + kv_shift) % NB
        row, pos, jx, jy, mask_j, mask_nj = _window_rows(mx, my, mask_n, W, kb, hh, stride_kb, stride_kn, D, R, 0, MP)
        mask3 = mask_nj[:, :, None] & mask_d[None, None, :]
        kv_off = row[:, :, None] + offs_d[None, None, :]
        kw = tl.load(k_ptr + kv_off, mask=mask3, other=0.0).to(tl.float32)
        vw = tl.load(v_ptr + kv_off, mask=mask3, other=0.0).to(tl.float32)
        # contiguous (NB, N, C) layout of the key/value gradients and of o / dq
        grad_kv_off = ((kb * N + pos).to(tl.int64) * C + hh * D)[:, :, None] + offs_d[None, None, :]
        o_off = ((b * N + offs_n).to(tl.int64) * C + hh * D)[:, None] + offs_d[None, :]

        q_off = (b.to(tl.int64) * stride_qb + offs_n.to(tl.int64) * stride_qn + hh * D)[:, None] + offs_d[None, :]
        mask_q = mask_n[:, None] & mask_d[None, :]
        qv = tl.load(q_ptr + q_off, mask=mask_q, other=0.0).to(tl.float32)  # [BN, DP]
        diff = qv[:, None, :] - kw  # [BN, MP, DP]
        logits = -tl.sum(tl.abs(diff), axis=2) * scale  # [BN, MP]
        # clamp gradient: 1 inside [lo, hi] (bounds included, as torch.clamp), 0 outside
        pass_x = (cx_raw >= R * 1.0) & (cx_raw <= hi_x)
        pass_y = (cy_raw >= R * 1.0) & (cy_raw <= hi_y)
        return (fx, fy, jx, jy, mask_j, mask3, grad_kv_off, o_off, mask_q, qv, diff, vw, logits,
                pass_x, pass_y)

    @triton.jit
    def _in_subwindow(jx, jy, mask_j, t: tl.constexpr, R: tl.constexpr):
        """Which window positions lie in sub-window ``t`` (the (2R+1)^2 block offset by (t % 2, t // 2))."""
        ox: tl.constexpr = t % 2
        oy: tl.constexpr = t // 2
        return (jx >= ox) & (jx <= ox + 2 * R) & (jy >= oy) & (jy <= oy + 2 * R) & mask_j

    @triton.jit
    def _subwindow_softmax(logits, jx, jy, mask_j, t: tl.constexpr, R: tl.constexpr):
        inside = _in_subwindow(jx, jy, mask_j, t, R)
        lt = tl.where(inside[None, :], logits, float("-inf"))
        mt = tl.max(lt, axis=1)
        et = tl.where(inside[None, :], tl.exp(lt - mt[:, None]), 0.0)
        return et / tl.sum(et, axis=1)[:, None]

    @triton.jit
    def _bilinear_factors(fx, fy, t: tl.constexpr):
        """x and y factors of sub-window ``t``'s weight (offset (t % 2, t // 2)) in the blend; their products
        over t: (1-fx)(1-fy), fx(1-fy), (1-fx)fy, fx fy."""
        ox: tl.constexpr = t % 2
        oy: tl.constexpr = t // 2
        return (1.0 - fx) + ox * (2.0 * fx - 1.0), (1.0 - fy) + oy * (2.0 * fy - 1.0)

    @triton.jit
    def _blend_shared_shift(logits1, jx1, jy1, mask_j1, logits2, jx2, jy2, mask_j2, fx, fy, R: tl.constexpr,
                            J2: tl.constexpr):
        """The forward's bilinear blend of the four sub-window softmaxes over one or two window ranges
        (``J2 = 0``: one; the second range's arguments are then ignored), all four shifted by the window's
        largest logit (a softmax does not change when all its logits move together): one exponential per
        window position instead of one per position and sub-window; a position's weight is its exponential
        times the sum of ``w_t / total_t`` over the sub-windows that hold it. Returns both ranges' weights and
        each query's smallest sub-window total (``SHARED_SHIFT_FLOOR`` tells whether underflow may have cut it)."""
        top = tl.max(tl.where(mask_j1[None, :], logits1, float("-inf")), axis=1)
        if J2 > 0:
            top = tl.maximum(top, tl.max(tl.where(mask_j2[None, :], logits2, float("-inf")), axis=1))
        e1 = tl.where(mask_j1[None, :], tl.exp(logits1 - top[:, None]), 0.0)
        e2 = e1
        if J2 > 0:
            e2 = tl.where(mask_j2[None, :], tl.exp(logits2 - top[:, None]), 0.0)
        coef1 = tl.zeros_like(e1)
        coef2 = tl.zeros_like(e2)
        smallest = tl.full(top.shape, 1.0, tl.float32)
        for t in tl.static_range(4):
            in1 = _in_subwindow(jx1, jy1, mask_j1, t, R)
            total = tl.sum(tl.where(in1[None, :], e1, 0.0), axis=1)
            if J2 > 0:
                in2 = _in_subwindow(jx2, jy2, mask_j2, t, R)
                total += tl.sum(tl.where(in2[None, :], e2, 0.0), axis=1)
            smallest = tl.minimum(smallest, total)
            wx, wy = _bilinear_factors(fx, fy, t)
            wt = (wx * wy / total)[:, None]
            coef1 += tl.where(in1[None, :], wt, 0.0)
            if J2 > 0:
                coef2 += tl.where(in2[None, :], wt, 0.0)
        return coef1 * e1, coef2 * e2, smallest

    @triton.jit
    def _blend_exact(logits1, jx1, jy1, mask_j1, logits2, jx2, jy2, mask_j2, fx, fy, R: tl.constexpr,
                     J2: tl.constexpr):
        """:func:`_blend_shared_shift` with each sub-window shifted by its own largest logit: the written
        formula, for tiles where a sub-window's maximum lies so far below the window's that the shared
        shift would underflow (a total below ``SHARED_SHIFT_FLOOR``)."""
        attn1 = tl.zeros_like(logits1)
        attn2 = tl.zeros_like(logits2)
        for t in tl.static_range(4):
            in1 = _in_subwindow(jx1, jy1, mask_j1, t, R)
            l1 = tl.where(in1[None, :], logits1, float("-inf"))
            mt = tl.max(l1, axis=1)
            if J2 > 0:
                in2 = _in_subwindow(jx2, jy2, mask_j2, t, R)
                l2 = tl.where(in2[None, :], logits2, float("-inf"))
                mt = tl.maximum(mt, tl.max(l2, axis=1))
            e1 = tl.where(in1[None, :], tl.exp(l1 - mt[:, None]), 0.0)
            total = tl.sum(e1, axis=1)
            if J2 > 0:
                e2 = tl.where(in2[None, :], tl.exp(l2 - mt[:, None]), 0.0)
                total += tl.sum(e2, axis=1)
            wx, wy = _bilinear_factors(fx, fy, t)
            wt = (wx * wy / total)[:, None]
            attn1 += wt * e1
            if J2 > 0:
                attn2 += wt * e2
        return attn1, attn2

    @triton.jit
    def _gated(out, g_ptr, g_off, mask_n, D: tl.constexpr, D0: tl.constexpr, DW: tl.constexpr, GATE: tl.constexpr):
        """``out * SiLU(gate)`` over head-dim columns D0 .. D0+DW-1 when ``GATE``, else ``out``."""
        if GATE:
            offs_d = D0 + tl.arange(0, DW)
            g = tl.load(g_ptr + g_off[:, None] + offs_d[None, :], mask=mask_n[:, None] & (offs_d < D)[None, :],
                        other=0.0).to(tl.float32)
            out = out * g * tl.sigmoid(g)
        return out

    @triton.jit
    def _fwd_kernel(q_ptr, k_ptr, v_ptr, c_ptr, g_ptr, o_ptr, a_ptr, H, W, N, NB, kv_shift,
                    stride_qb, stride_qn, stride_kb, stride_kn, stride_cb, stride_cn, stride_ch,
                    hi_x, hi_y, scale, stride_gb, stride_gn, stride_o, stride_a,
                    C: tl.constexpr, NH: tl.constexpr, D: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
                    R: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr, BLOCK_N: tl.constexpr,
                    GATE: tl.constexpr):
        """Window positions in two ranges (``J1`` from 0, ``J2`` after it; ``J2 = 0``: one range), head
        dim in two column ranges (``D1``, ``D2``) whose partial L1 distances and outputs are summed.

        Output and attention rows are ``stride_o`` / ``stride_a`` elements apart (both may be column
        ranges of one buffer); with ``GATE`` the output is multiplied by SiLU of ``g`` (read like q)."""
        M: tl.constexpr = (2 * R + 2) * (2 * R + 2)
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // NH
        hh = pid_bh % NH
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        cx_raw, cy_raw, fx, fy, mx, my = _centres(c_ptr, b, hh, offs_n, mask_n, stride_cb, stride_cn, stride_ch,
                                                  hi_x, hi_y, R)
        kb = (b + kv_shift) % NB
        q_off = b.to(tl.int64) * stride_qb + offs_n.to(tl.int64) * stride_qn + hh * D

        row1, _, jx1, jy1, mask_j1, mask_nj1 = _window_rows(mx, my, mask_n, W, kb, hh, stride_kb, stride_kn,
                                                            D, R, 0, J1)
        dist1 = _l1_part(q_ptr, k_ptr, q_off, row1, mask_n, mask_nj1, D, 0, D1)
        if D2 > 0:
            dist1 += _l1_part(q_ptr, k_ptr, q_off, row1, mask_n, mask_nj1, D, D1, D2)
        logits1 = -dist1 * scale
        if J2 > 0:
            row2, _, jx2, jy2, mask_j2, mask_nj2 = _window_rows(mx, my, mask_n, W, kb, hh, stride_kb, stride_kn,
                                                             D, R, J1, J2)
            dist2 = _l1_part(q_ptr, k_ptr, q_off, row2, mask_n, mask_nj2, D, 0, D1)
            if D2 > 0:
                dist2 += _l1_part(q_ptr, k_ptr, q_off, row2, mask_n, mask_nj2, D, D1, D2)
            logits2 = -dist2 * scale

        # the four sub-window softmaxes over both ranges, blended with the bilinear weights (the second
        # range's arguments repeat the first's when there is none; the helpers then ignore them)
        if J2 == 0:
            logits2, jx2, jy2, mask_j2 = logits1, jx1, jy1, mask_j1
        attn1, attn2, smallest = _blend_shared_shift(logits1, jx1, jy1, mask_j1, logits2, jx2, jy2, mask_j2,
                                                     fx, fy, R, J2)
        if tl.min(smallest, axis=0) < SHARED_SHIFT_FLOOR:
            attn1, attn2 = _blend_exact(logits1, jx1, jy1, mask_j1, logits2, jx2, jy2, mask_j2, fx, fy, R, J2)

        o_off = (b * N + offs_n).to(tl.int64) * stride_o + hh * D
        a_off = (b * N + offs_n).to(tl.int64) * stride_a + hh * M
        g_off = b.to(tl.int64) * stride_gb + offs_n.to(tl.int64) * stride_gn + hh * D
        out = _value_part(v_ptr, row1, attn1, mask_nj1, D, 0, D1)
        if J2 > 0:
            out += _value_part(v_ptr, row2, attn2, mask_nj2, D, 0, D1)
            tl.store(a_ptr + a_off[:, None] + J1 + tl.arange(0, J2)[None, :], attn2.to(a_ptr.dtype.element_ty),
                     mask=mask_nj2)
        out = _gated(out, g_ptr, g_off, mask_n, D, 0, D1, GATE)
        tl.store(o_ptr + o_off[:, None] + tl.arange(0, D1)[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=mask_n[:, None])
        tl.store(a_ptr + a_off[:, None] + tl.arange(0, J1)[None, :], attn1.to(a_ptr.dtype.element_ty), mask=mask_nj1)
        if D2 > 0:
            out2 = _value_part(v_ptr, row1, attn1, mask_nj1, D, D1, D2)
            if J2 > 0:
                out2 += _value_part(v_ptr, row2, attn2, mask_nj2, D, D1, D2)
            out2 = _gated(out2, g_ptr, g_off, mask_n, D, D1, D2, GATE)
            offs_d2 = D1 + tl.arange(0, D2)
            tl.store(o_ptr + o_off[:, None] + offs_d2[None, :], out2.to(o_ptr.dtype.element_ty),
                     mask=mask_n[:, None] & (offs_d2 < D)[None, :])

    @triton.jit
    def _bwd_kernel(q_ptr, k_ptr, v_ptr, c_ptr, go_ptr, ga_ptr, dq_ptr, dk_ptr, dv_ptr, dc_ptr,
                    H, W, N, NB, kv_shift,
                    stride_qb, stride_qn, stride_kb, stride_kn, stride_cb, stride_cn, stride_ch,
                    hi_x, hi_y, scale,
                    C: tl.constexpr, NH: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                    R: tl.constexpr, MP: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // NH
        hh = pid_bh % NH
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        fx, fy, jx, jy, mask_j, mask3, grad_kv_off, o_off, mask_q, qv, diff, vw, logits, pass_x, pass_y = _window(
            c_ptr, q_ptr, k_ptr, v_ptr, b, hh, offs_n, mask_n, H, W, N, NB, kv_shift,
            stride_qb, stride_qn, stride_kb, stride_kn, stride_cb, stride_cn, stride_ch, hi_x, hi_y,
            C, D, DP, R, MP, scale)

        M: tl.constexpr = (2 * R + 2) * (2 * R + 2)
        offs_j = tl.arange(0, MP)
        mask_nj = mask_n[:, None] & mask_j[None, :]
        a_off = ((b * N + offs_n).to(tl.int64) * NH + hh)[:, None] * M + offs_j[None, :]
        go = tl.load(go_ptr + o_off, mask=mask_q, other=0.0).to(tl.float32)  # [BN, DP]
        dA = tl.sum(go[:, None, :] * vw, axis=2)  # [BN, MP]
        dA += tl.load(ga_ptr + a_off, mask=mask_nj, other=0.0).to(tl.float32)

        attn = tl.zeros_like(logits)
        dlogit = tl.zeros_like(logits)
        dfx = tl.zeros_like(fx)
        dfy = tl.zeros_like(fy)
        for t in tl.static_range(4):
            alpha = _subwindow_softmax(logits, jx, jy, mask_j, t, R)
            wx, wy = _bilinear_factors(fx, fy, t)
            wt = wx * wy
            attn += wt[:, None] * alpha
            dw = tl.sum(dA * alpha, axis=1)  # [BN]
            dlogit += wt[:, None] * alpha * (dA - dw[:, None])
            dfx += dw * (2.0 * (t % 2) - 1.0) * wy
            dfy += dw * wx * (2.0 * (t // 2) - 1.0)

        sgn = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))  # [BN, MP, DP]
        g = dlogit[:, :, None] * sgn * scale
        dq = -tl.sum(g, axis=1)
        tl.store(dq_ptr + o_off, dq.to(dq_ptr.dtype.element_ty), mask=mask_q)
        tl.atomic_add(dk_ptr + grad_kv_off, g, mask=mask3)
        tl.atomic_add(dv_ptr + grad_kv_off, attn[:, :, None] * go[:, None, :], mask=mask3)
        c_off = ((b * N + offs_n) * NH + hh).to(tl.int64) * 2
        tl.store(dc_ptr + c_off, tl.where(pass_x, dfx, 0.0), mask=mask_n)
        tl.store(dc_ptr + c_off + 1, tl.where(pass_y, dfy, 0.0), mask=mask_n)


# (BLOCK_N, num_warps) of the forward keyed by (window positions, head dim): the fastest of
# {BLOCK_N/2, BLOCK_N, 2 BLOCK_N} x {1, 2} warps timed on an H200 at each level of a 4K MatchStereo-T/B
# pair (fp16, q/k/v slices of one projection as in the model); ``python benchmarks/match_attention_tiles.py
# matchstereo_base`` times settings on the model's own calls.
_FWD_TIMED = {(36, 128): (2, 1), (36, 80): (4, 1), (36, 40): (8, 1), (36, 32): (8, 1),
              (16, 64): (4, 1), (16, 32): (16, 2), (16, 16): (32, 2), (16, 8): (128, 2)}


def _fwd_cfg(radius: int, head_dim: int) -> Tuple[int, int, int, int, int, int]:
    """(J1, J2, D1, D2, BLOCK_N, num_warps) of the forward: window and head-dim ranges, queries per
    program, warps. Untimed shapes take ~12K tile elements on one warp for windows of two ranges
    (as the timed 6x6 windows), ~4K for one range."""
    window = (2 * radius + 2) ** 2
    j1, j2 = power_of_two_ranges(window)
    d1, d2 = power_of_two_ranges(max(head_dim, 2))
    if (window, head_dim) in _FWD_TIMED:
        return (j1, j2, d1, d2) + _FWD_TIMED[window, head_dim]
    per_query = (j1 + j2) * (d1 + d2)
    return j1, j2, d1, d2, power_of_two_ranges(max(1, min(128, (12288 if j2 else 4096) // per_query)))[0], 1


def _bwd_cfg(radius: int, head_dim: int) -> Tuple[int, int, int, int]:
    """(MP, DP, BLOCK_N, num_warps) of the backward: one padded [BLOCK_N, MP, DP] tile of ~8K elements
    on 4 warps (it holds several tiles live: gradients, signs)."""
    MP = triton.next_power_of_2((2 * radius + 2) ** 2)
    DP = max(triton.next_power_of_2(head_dim), 2)
    return MP, DP, max(2, min(64, 8192 // (MP * DP))), 4


def _kernel_views(q, k, v, centers):
    """Inputs as the kernels read them: unit stride on the last axis, k and v with equal strides."""
    if k.stride(2) != 1 or v.stride(2) != 1 or k.stride() != v.stride():
        k, v = k.contiguous(), v.contiguous()
    return unit_last_stride(q), k, v, unit_last_stride(centers)


def _common_args(q, k, centers, H: int, W: int, radius: int, kv_shift: int):
    B, N, _ = q.shape
    return (H, W, N, B, kv_shift, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            centers.stride(0), centers.stride(1), centers.stride(2),
            float(W - 1 - radius - 1e-3), float(H - 1 - radius - 1e-3))


def _forward(q, k, v, centers, H: int, W: int, radius: int, scale: float, kv_shift: int, cfg=None, gate=None,
             out=None):
    """``gate``: (B, N, C), the output is multiplied by its SiLU; ``out``: a contiguous (B, N, >= C + h M)
    buffer that receives [output, attention weights] in its first channels (both returned as views of it);
    ``cfg``: launch settings in ``_fwd_cfg``'s form (the tile tool times others)."""
    q, k, v, centers = _kernel_views(q, k, v, centers)
    B, N, C = q.shape
    nh = centers.shape[2]
    D = C // nh
    M = (2 * radius + 2) ** 2
    if out is None:
        o, attn = q.new_empty(B, N, C), q.new_empty(B, N, nh, M)
    else:
        o, attn = out[..., :C], out[..., C:C + nh * M].unflatten(-1, (nh, M))
    if gate is not None:
        gate = unit_last_stride(gate)
    j1, j2, d1, d2, block_n, warps = cfg or _fwd_cfg(radius, D)
    grid = (triton.cdiv(N, block_n), B * nh)
    _fwd_kernel[grid](q, k, v, centers, q if gate is None else gate, o, attn,
                      *_common_args(q, k, centers, H, W, radius, kv_shift), scale,
                      *((0, 0) if gate is None else gate.stride()[:2]), o.stride(1), attn.stride(1),
                      C=C, NH=nh, D=D, D1=d1, D2=d2, R=radius, J1=j1, J2=j2, BLOCK_N=block_n,
                      GATE=gate is not None, num_warps=warps)
    return o, attn


def _backward(q, k, v, centers, grad_out, grad_attn, H: int, W: int, radius: int, scale: float, kv_shift: int):
    q, k, v, centers = _kernel_views(q, k, v, centers)
    B, N, C = q.shape
    nh = centers.shape[2]
    D = C // nh
    dq = q.new_empty(B, N, C)
    dk = torch.zeros(B, N, C, device=q.device, dtype=torch.float32)
    dv = torch.zeros(B, N, C, device=q.device, dtype=torch.float32)
    dc = centers.new_empty(B, N, nh, 2)
    MP, DP, block_n, warps = _bwd_cfg(radius, D)
    grid = (triton.cdiv(N, block_n), B * nh)
    _bwd_kernel[grid](q, k, v, centers, grad_out, grad_attn, dq, dk, dv, dc,
                      *_common_args(q, k, centers, H, W, radius, kv_shift), scale,
                      C=C, NH=nh, D=D, DP=DP, R=radius, MP=MP, BLOCK_N=block_n, num_warps=warps)
    return dq, dk.to(q.dtype), dv.to(q.dtype), dc


if triton is not None:

    @torch.library.custom_op("visionattn::match_attention_triton", mutates_args=())
    def match_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, centers: torch.Tensor,
                               H: int, W: int, radius: int, scale: float,
                               kv_shift: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """q, k, v (B, N, C) (any row strides, e.g. slices of one fused projection); centers
        (B, N, h, 2) fp32 (head stride may be 0), clamped in the kernel; keys/values of batch b
        are taken from batch (b + kv_shift) % B. Returns out (B, N, C) and attn (B, N, h, (2r+2)^2)
        in q's dtype."""
        return _forward(q, k, v, centers, H, W, radius, scale, kv_shift)

    @match_attention_triton.register_fake
    def _(q, k, v, centers, H, W, radius, scale, kv_shift=0):
        B, N, C = q.shape
        return q.new_empty(B, N, C), q.new_empty(B, N, centers.shape[2], (2 * radius + 2) ** 2)

    @torch.library.custom_op("visionattn::match_attention_triton_backward", mutates_args=())
    def match_attention_triton_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                        centers: torch.Tensor, grad_out: torch.Tensor,
                                        grad_attn: torch.Tensor, H: int, W: int, radius: int,
                                        scale: float, kv_shift: int) -> Tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor, torch.Tensor]:
        return _backward(q, k, v, centers, grad_out, grad_attn, H, W, radius, scale, kv_shift)

    @match_attention_triton_backward.register_fake
    def _(q, k, v, centers, grad_out, grad_attn, H, W, radius, scale, kv_shift):
        B, N, C = q.shape
        return (q.new_empty(B, N, C), q.new_empty(B, N, C), q.new_empty(B, N, C),
                centers.new_empty(B, N, centers.shape[2], 2))

    def _setup_context(ctx, inputs, output):
        q, k, v, centers, H, W, radius, scale, kv_shift = inputs
        ctx.save_for_backward(q, k, v, centers)
        ctx.args = (H, W, radius, scale, kv_shift)

    def _autograd_backward(ctx, grad_out, grad_attn):
        q, k, v, centers = ctx.saved_tensors
        B, N, C = q.shape
        if grad_out is None:
            grad_out = q.new_zeros(B, N, C)
        if grad_attn is None:
            grad_attn = q.new_zeros(B, N, centers.shape[2], (2 * ctx.args[2] + 2) ** 2)
        dq, dk, dv, dc = torch.ops.visionattn.match_attention_triton_backward(
            q, k, v, centers, grad_out.contiguous(), grad_attn.contiguous(), *ctx.args)
        return dq, dk, dv, dc, None, None, None, None, None

    match_attention_triton.register_autograd(_autograd_backward, setup_context=_setup_context)
