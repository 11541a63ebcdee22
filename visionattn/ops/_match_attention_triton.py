"""Triton kernels of MatchAttention (forward and backward), registered as ``torch.ops.visionattn``.

One program handles ``BLOCK_N`` queries of one (batch, head): it gathers their ``(2r+2)^2`` key
and value rows as a ``[BLOCK_N, M, D]`` tile, computes the negative-L1 logits, the four
sub-window softmaxes and their bilinear blend in registers, and writes the output and the
attention weights. Nothing of size ``N x M x D`` touches memory (the reference materialises it).

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

from ._triton import tl, triton, unit_last_stride

if triton is not None:

    @triton.jit
    def _window(c_ptr, q_ptr, k_ptr, v_ptr, b, hh, offs_n, mask_n, H, W, N, NB, kv_shift,
                stride_qb, stride_qn, stride_kb, stride_kn, stride_cb, stride_cn, stride_ch,
                hi_x, hi_y, C: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                R: tl.constexpr, MP: tl.constexpr, scale):
        """Shared by both kernels: clamped centres and their fractions, gathered k/v tiles, logits.

        Keys/values of batch ``b`` come from batch ``(b + kv_shift) % NB`` (cross attention of two
        stacked views without swapping them in memory); strides let q/k/v be column slices of one
        fused projection and the centres be broadcast over heads (head stride 0).
        """
        S: tl.constexpr = 2 * R + 2
        M: tl.constexpr = S * S
        offs_j = tl.arange(0, MP)
        offs_d = tl.arange(0, DP)
        jx = offs_j % S
        jy = offs_j // S
        mask_j = offs_j < M
        mask_d = offs_d < D

        c_base = c_ptr + b.to(tl.int64) * stride_cb + offs_n.to(tl.int64) * stride_cn + hh * stride_ch
        cx_raw = tl.load(c_base, mask=mask_n, other=R)
        cy_raw = tl.load(c_base + 1, mask=mask_n, other=R)
        # the window must stay inside the map: centre in [R, W-1-R-1e-3] x [R, H-1-R-1e-3]
        cx = tl.minimum(tl.maximum(cx_raw, R * 1.0), hi_x)
        cy = tl.minimum(tl.maximum(cy_raw, R * 1.0), hi_y)
        fx0 = tl.floor(cx)
        fy0 = tl.floor(cy)
        fx = cx - fx0
        fy = cy - fy0
        mx = fx0.to(tl.int32)
        my = fy0.to(tl.int32)

        mask_nj = mask_n[:, None] & mask_j[None, :]
        pos = (my[:, None] + jy[None, :] - R) * W + (mx[:, None] + jx[None, :] - R)  # [BN, MP]
        pos = tl.where(mask_nj, pos, 0)
        mask3 = mask_nj[:, :, None] & mask_d[None, None, :]
        kb = (b + kv_shift) % NB
        row = kb.to(tl.int64) * stride_kb + pos.to(tl.int64) * stride_kn + hh * D  # [BN, MP]
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
    def _subwindow_softmax(logits, jx, jy, mask_j, t: tl.constexpr, R: tl.constexpr):
        ox: tl.constexpr = t % 2
        oy: tl.constexpr = t // 2
        inside = (jx >= ox) & (jx <= ox + 2 * R) & (jy >= oy) & (jy <= oy + 2 * R) & mask_j
        lt = tl.where(inside[None, :], logits, float("-inf"))
        mt = tl.max(lt, axis=1)
        et = tl.where(inside[None, :], tl.exp(lt - mt[:, None]), 0.0)
        return et / tl.sum(et, axis=1)[:, None]

    @triton.jit
    def _fwd_kernel(q_ptr, k_ptr, v_ptr, c_ptr, o_ptr, a_ptr, H, W, N, NB, kv_shift,
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

        attn = tl.zeros_like(logits)
        for t in tl.static_range(4):
            alpha = _subwindow_softmax(logits, jx, jy, mask_j, t, R)
            wx = (1.0 - fx) + (t % 2) * (2.0 * fx - 1.0)
            wy = (1.0 - fy) + (t // 2) * (2.0 * fy - 1.0)
            attn += (wx * wy)[:, None] * alpha

        out = tl.sum(attn[:, :, None] * vw, axis=1)  # [BN, DP]
        tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=mask_q)
        M: tl.constexpr = (2 * R + 2) * (2 * R + 2)
        offs_j = tl.arange(0, MP)
        a_off = ((b * N + offs_n).to(tl.int64) * NH + hh)[:, None] * M + offs_j[None, :]
        tl.store(a_ptr + a_off, attn.to(a_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_j[None, :])

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
            wx = (1.0 - fx) + (t % 2) * (2.0 * fx - 1.0)
            wy = (1.0 - fy) + (t // 2) * (2.0 * fy - 1.0)
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


def _launch_cfg(radius: int, head_dim: int, backward: bool = False) -> Tuple[int, int, int, int]:
    """(MP, DP, BLOCK_N, num_warps): padded window, padded head dim, queries per program, warps.

    Forward: large [BLOCK_N, MP, DP] tiles on few warps (32K elements on 2 warps from MP * DP = 2048
    up, else 16K on 4). Timed on an H200 at the 4K shapes of MatchStereo-T (fp16): 1.6-2.8x faster per
    call than 8K-element tiles on 4 warps (``python benchmarks/match_attention_tiles.py`` times the settings).
    The backward keeps ~8K elements on 4 warps: it holds several more tiles (gradients, signs) live.
    """
    M = (2 * radius + 2) ** 2
    MP = triton.next_power_of_2(M)
    DP = max(triton.next_power_of_2(head_dim), 2)
    tile = MP * DP
    if backward:
        return MP, DP, max(2, min(64, 8192 // tile)), 4
    if tile >= 2048:
        return MP, DP, max(2, min(128, 32768 // tile)), 2
    return MP, DP, max(2, min(128, 16384 // tile)), 4


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


def _forward(q, k, v, centers, H: int, W: int, radius: int, scale: float, kv_shift: int):
    q, k, v, centers = _kernel_views(q, k, v, centers)
    B, N, C = q.shape
    nh = centers.shape[2]
    D = C // nh
    M = (2 * radius + 2) ** 2
    out = q.new_empty(B, N, C)
    attn = q.new_empty(B, N, nh, M)
    MP, DP, block_n, warps = _launch_cfg(radius, D)
    grid = (triton.cdiv(N, block_n), B * nh)
    _fwd_kernel[grid](q, k, v, centers, out, attn, *_common_args(q, k, centers, H, W, radius, kv_shift), scale,
                      C=C, NH=nh, D=D, DP=DP, R=radius, MP=MP, BLOCK_N=block_n, num_warps=warps)
    return out, attn


def _backward(q, k, v, centers, grad_out, grad_attn, H: int, W: int, radius: int, scale: float, kv_shift: int):
    q, k, v, centers = _kernel_views(q, k, v, centers)
    B, N, C = q.shape
    nh = centers.shape[2]
    D = C // nh
    dq = q.new_empty(B, N, C)
    dk = torch.zeros(B, N, C, device=q.device, dtype=torch.float32)
    dv = torch.zeros(B, N, C, device=q.device, dtype=torch.float32)
    dc = centers.new_empty(B, N, nh, 2)
    MP, DP, block_n, warps = _launch_cfg(radius, D, backward=True)
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
