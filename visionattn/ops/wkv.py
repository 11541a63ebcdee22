"""Bi-WKV (Vision-RWKV's bidirectional WKV) and Re-WKV (Restore-RWKV's recurrent H then V scans).

For tokens ``k, v: (B, T, C)`` and per-channel ``w, u: (C,)`` the op computes, per channel,

    y_t = [sum_{i!=t} e^{-(|t-i|-1) w + k_i} v_i + e^{u + k_t} v_t]
          / [sum_{i!=t} e^{-(|t-i|-1) w + k_i}     + e^{u + k_t}]

i.e. ``y_t = softmax_i(E_ti) @ v`` with ``E_ti = -(|t-i|-1) w + k_i`` off the diagonal and
``u + k_t`` on it. ``w`` is used as given (no ``exp``; it may be negative). Restore-RWKV passes
``w = decay / T`` and ``u = first / T``: :func:`re_wkv` does that scaling.

Implementations (``impl=``):
- ``"reference"``: exact O(T*C) evaluation in PyTorch. The causal part
  ``sum_{i<t} e^{-(t-1-i)w + k_i} v_i = e^{-(t-1)w} sum_{i<t} e^{k_i + i w} v_i`` is an exclusive
  log-cum-sum-exp of ``k_i + i w + log v_i`` (values split by sign); the anti-causal part is the
  same on the reversed sequence. Autograd gives the backward. CPU default.
- ``"triton"``: a chunked scan kernel (forward and backward) registered as the custom op
  ``visionattn::bi_wkv``. Every position keeps its own log-scale, so it is exact for any ``w``/``k``
  range (no 1e-6 denominator epsilon, no chunk-boundary approximation). CUDA default.
"""
from typing import Tuple

import torch

from .dispatch import pick

try:  # triton is optional: the reference runs everywhere
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

IMPLS = ("triton", "reference")

_NEG = -1.0e30  # "log of zero" that stays finite (so exp(_NEG - _NEG) = 1 times a zero value, not NaN)


# --------------------------------------------------------------------------------------------
# Reference (exact, O(T*C), readable)
# --------------------------------------------------------------------------------------------

def _exclusive_logcumsumexp(z: torch.Tensor) -> torch.Tensor:
    """log sum_{i<t} exp(z_i) along dim 1 of (B, T, C); _NEG where the sum is empty."""
    shifted = torch.cat([torch.full_like(z[:, :1], _NEG), z[:, :-1]], dim=1)
    return torch.logcumsumexp(shifted, dim=1)


def _signed_logs(v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(log max(v, 0), log max(-v, 0)) with _NEG for zero parts; gradients stay finite."""
    safe = torch.where(v == 0, torch.ones_like(v), v.abs()).log()
    neg = torch.full_like(v, _NEG)
    return torch.where(v > 0, safe, neg), torch.where(v < 0, safe, neg)


def bi_wkv_reference(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact Bi-WKV. w, u: (C,); k, v: (B, T, C) -> (B, T, C)."""
    T = k.shape[1]
    pos = torch.arange(T, device=k.device, dtype=k.dtype)[:, None]  # (T, 1)

    def causal(logval):  # log sum_{i<t} e^{-(t-1-i) w + k_i + logval_i}, (B, T, C)
        return -(pos - 1) * w + _exclusive_logcumsumexp(k + pos * w + logval)

    def anticausal(logval):  # log sum_{i>t} e^{-(i-t-1) w + k_i + logval_i}: causal on the reversed sequence
        z = (k + logval).flip(1)
        return (-(pos - 1) * w + _exclusive_logcumsumexp(z + pos * w)).flip(1)

    def total(logval):  # log of the full numerator/denominator sum, (B, T, C)
        parts = torch.stack([causal(logval), anticausal(logval), u + k + logval])
        return torch.logsumexp(parts, dim=0)

    log_pos, log_neg = _signed_logs(v)
    log_den = total(torch.zeros_like(k))
    return torch.exp(total(log_pos) - log_den) - torch.exp(total(log_neg) - log_den)


# --------------------------------------------------------------------------------------------
# Triton kernel: one causal scan, run forwards and backwards
# --------------------------------------------------------------------------------------------
if triton is not None:
    _NEG_TL = tl.constexpr(_NEG)

    @triton.jit
    def _combine3(m1, a1, b1, m2, a2, b2):
        m = tl.maximum(m1, m2)
        e1 = tl.exp(m1 - m)
        e2 = tl.exp(m2 - m)
        return m, a1 * e1 + a2 * e2, b1 * e1 + b2 * e2

    @triton.jit
    def _combine5(m1, a1, b1, c1, d1, m2, a2, b2, c2, d2):
        m = tl.maximum(m1, m2)
        e1 = tl.exp(m1 - m)
        e2 = tl.exp(m2 - m)
        return m, a1 * e1 + a2 * e2, b1 * e1 + b2 * e2, c1 * e1 + c2 * e2, d1 * e1 + d2 * e2

    @triton.jit
    def _causal_scan_kernel(x_ptr, v1_ptr, v2_ptr, w_ptr, o1_ptr, o2_ptr, od1_ptr, od2_ptr, rho_ptr,
                            state_ptr, T, C, SEG_LEN, NSEG,
                            REVERSE: tl.constexpr, V2_ONES: tl.constexpr, DIST: tl.constexpr,
                            SUMMARY: tl.constexpr, HAS_CARRY: tl.constexpr,
                            BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
        """For s in {v1, v2}: S_t = sum_{i<t} e^{-(t-1-i) w + x_i} s_i = o_t * e^{rho_t} (in scan order),
        and with DIST also sum_{i<t} (t-1-i) e^{...} s_i = od_t * e^{rho_t}.

        One program per (batch, channel block, segment of SEG_LEN tokens) walks its segment in
        chunks of BLOCK_T. A chunk loads the sources shifted by one (i = t - 1), so an inclusive
        log-sum-exp scan over the chunk gives the exclusive sums; the carry is the result at the
        chunk's last position. Segments run in parallel: a SUMMARY pass (zero carry) stores each
        segment's final state in ``state_ptr`` (5, B, NSEG, C) = (p, s1, s2, sd1, sd2); after
        :func:`_segment_carry_kernel` turned those into incoming carries, the HAS_CARRY pass starts
        every segment from its carry and stores the outputs.
        """
        b = tl.program_id(0)
        g = tl.program_id(2)
        cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cs < C
        w = tl.load(w_ptr + cs, mask=cmask, other=0.0)
        dt = w.dtype
        base = b.to(tl.int64) * T * C
        j = tl.arange(0, BLOCK_T)
        jf = j.to(dt)
        # carry: sums for position t0 - 1 of the current chunk, log-scale p
        plane = NSEG * C * tl.num_programs(0)  # one (B, NSEG, C) plane of state_ptr
        soff_state = (b.to(tl.int64) * NSEG + g) * C + cs
        if HAS_CARRY:
            p = tl.load(state_ptr + soff_state, mask=cmask, other=_NEG_TL).to(dt)
            s1 = tl.load(state_ptr + plane + soff_state, mask=cmask, other=0.0).to(dt)
            s2 = tl.load(state_ptr + 2 * plane + soff_state, mask=cmask, other=0.0).to(dt)
            sd1 = tl.load(state_ptr + 3 * plane + soff_state, mask=cmask, other=0.0).to(dt)
            sd2 = tl.load(state_ptr + 4 * plane + soff_state, mask=cmask, other=0.0).to(dt)
        else:
            p = tl.full([BLOCK_C], _NEG_TL, dt)
            s1 = tl.zeros([BLOCK_C], dt)
            s2 = tl.zeros([BLOCK_C], dt)
            sd1 = tl.zeros([BLOCK_C], dt)
            sd2 = tl.zeros([BLOCK_C], dt)
        seg_start = g * SEG_LEN
        seg_end = tl.minimum(seg_start + SEG_LEN, T)
        for t0 in range(seg_start, seg_end, BLOCK_T):
            tt = t0 + j
            src = tt - 1
            if REVERSE:
                rows_out = T - 1 - tt
                rows_src = T - 1 - src
            else:
                rows_out = tt
                rows_src = src
            smask = ((src >= 0) & (src < T))[:, None] & cmask[None, :]
            omask = (tt < seg_end)[:, None] & cmask[None, :]
            soff = base + rows_src.to(tl.int64)[:, None] * C + cs[None, :]
            x = tl.load(x_ptr + soff, mask=smask, other=_NEG_TL).to(dt)
            z = x + (jf - 1.0)[:, None] * w[None, :]
            # element j stands for value * e^{z_j}; the scan keeps a per-position log-scale m
            m0 = tl.where(smask, z, _NEG_TL)
            a = tl.load(v1_ptr + soff, mask=smask, other=0.0).to(dt)
            if V2_ONES:
                bb = tl.where(smask, 1.0, 0.0).to(dt)
            else:
                bb = tl.load(v2_ptr + soff, mask=smask, other=0.0).to(dt)
            if DIST:
                m, a, bb, c, d = tl.associative_scan((m0, a, bb, a * jf[:, None], bb * jf[:, None]), 0, _combine5)
            else:
                m, a, bb = tl.associative_scan((m0, a, bb), 0, _combine3)
            # local sums use exponent m - (tau-1) w, the carry e^{p - (tau+1) w}
            ll = m - (jf - 1.0)[:, None] * w[None, :]
            lc = p[None, :] - (jf + 1.0)[:, None] * w[None, :]
            rho = tl.maximum(ll, lc)
            el = tl.exp(ll - rho)
            ec = tl.exp(lc - rho)
            o1 = a * el + s1[None, :] * ec
            o2 = bb * el + s2[None, :] * ec
            ooff = base + rows_out.to(tl.int64)[:, None] * C + cs[None, :]
            if not SUMMARY:
                tl.store(o1_ptr + ooff, o1, mask=omask)
                tl.store(o2_ptr + ooff, o2, mask=omask)
                tl.store(rho_ptr + ooff, rho, mask=omask)
            last = (j == BLOCK_T - 1)[:, None]
            if DIST:
                tau = jf[:, None]
                od1 = (tau * a - c) * el + (sd1[None, :] + (tau + 1.0) * s1[None, :]) * ec
                od2 = (tau * bb - d) * el + (sd2[None, :] + (tau + 1.0) * s2[None, :]) * ec
                if not SUMMARY:
                    tl.store(od1_ptr + ooff, od1, mask=omask)
                    tl.store(od2_ptr + ooff, od2, mask=omask)
                sd1 = tl.sum(tl.where(last, od1, 0.0), axis=0)
                sd2 = tl.sum(tl.where(last, od2, 0.0), axis=0)
            s1 = tl.sum(tl.where(last, o1, 0.0), axis=0)
            s2 = tl.sum(tl.where(last, o2, 0.0), axis=0)
            p = tl.sum(tl.where(last, rho, 0.0), axis=0)
        if SUMMARY:  # state at the segment's last position (full chunks: SEG_LEN is a multiple of BLOCK_T)
            tl.store(state_ptr + soff_state, p, mask=cmask)
            tl.store(state_ptr + plane + soff_state, s1, mask=cmask)
            tl.store(state_ptr + 2 * plane + soff_state, s2, mask=cmask)
            tl.store(state_ptr + 3 * plane + soff_state, sd1, mask=cmask)
            tl.store(state_ptr + 4 * plane + soff_state, sd2, mask=cmask)

    @triton.jit
    def _segment_carry_kernel(state_ptr, w_ptr, C, SEG_LEN, NSEG, BLOCK_C: tl.constexpr):
        """In place over (5, B, NSEG, C): segment summaries -> incoming carries.

        carry_0 = 0; carry_{g+1} = summary_g + e^{-SEG_LEN w} carry_g (each at the last position of
        segment g); the distance-weighted sums also gain SEG_LEN * carry_g.
        """
        b = tl.program_id(0)
        cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cs < C
        w = tl.load(w_ptr + cs, mask=cmask, other=0.0)
        dt = w.dtype
        seg = SEG_LEN * 1.0
        plane = NSEG * C * tl.num_programs(0)
        p = tl.full([BLOCK_C], _NEG_TL, dt)
        s1 = tl.zeros([BLOCK_C], dt)
        s2 = tl.zeros([BLOCK_C], dt)
        sd1 = tl.zeros([BLOCK_C], dt)
        sd2 = tl.zeros([BLOCK_C], dt)
        for g in range(0, NSEG):
            off = (b.to(tl.int64) * NSEG + g) * C + cs
            lp = tl.load(state_ptr + off, mask=cmask, other=_NEG_TL).to(dt)
            l1 = tl.load(state_ptr + plane + off, mask=cmask, other=0.0).to(dt)
            l2 = tl.load(state_ptr + 2 * plane + off, mask=cmask, other=0.0).to(dt)
            ld1 = tl.load(state_ptr + 3 * plane + off, mask=cmask, other=0.0).to(dt)
            ld2 = tl.load(state_ptr + 4 * plane + off, mask=cmask, other=0.0).to(dt)
            tl.store(state_ptr + off, p, mask=cmask)
            tl.store(state_ptr + plane + off, s1, mask=cmask)
            tl.store(state_ptr + 2 * plane + off, s2, mask=cmask)
            tl.store(state_ptr + 3 * plane + off, sd1, mask=cmask)
            tl.store(state_ptr + 4 * plane + off, sd2, mask=cmask)
            dp = p - seg * w
            np_ = tl.maximum(lp, dp)
            el = tl.exp(lp - np_)
            ed = tl.exp(dp - np_)
            sd1 = ld1 * el + (sd1 + seg * s1) * ed
            sd2 = ld2 * el + (sd2 + seg * s2) * ed
            s1 = l1 * el + s1 * ed
            s2 = l2 * el + s2 * ed
            p = np_


_FORCE_SEG_LEN = None  # tests set it to exercise segment carries on tiny sequences


def _scan(x, v1, v2, w, reverse: bool, dist: bool):
    """Launch the causal scan over (B, T, C) (anti-causal when ``reverse``); returns (o1, o2, rho[, od1, od2])."""
    B, T, C = x.shape
    o1, o2, rho = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    od1, od2 = (torch.empty_like(x), torch.empty_like(x)) if dist else (o1, o2)
    block_c = 16 if C <= 64 else 32
    block_t = (64 if dist else 128) if x.is_cuda else 8  # tiny chunks on the CPU interpreter: carries get tested
    n_cb = triton.cdiv(C, block_c)
    # split T into segments so that enough programs run in parallel (each walks its segment)
    if _FORCE_SEG_LEN is not None:
        seg_len = _FORCE_SEG_LEN
    else:
        nseg = max(1, min(triton.cdiv(1024, B * n_cb), T // (4 * block_t)))
        seg_len = triton.cdiv(triton.cdiv(T, nseg), block_t) * block_t
    nseg = triton.cdiv(T, seg_len)
    v2_arg = x if v2 is None else v2
    flags = dict(REVERSE=reverse, V2_ONES=v2 is None, DIST=dist, BLOCK_T=block_t, BLOCK_C=block_c)
    state = x.new_empty(5, B, nseg, C) if nseg > 1 else x.new_empty(1)
    if nseg > 1:
        _causal_scan_kernel[(B, n_cb, nseg)](x, v1, v2_arg, w, o1, o2, od1, od2, rho, state, T, C, seg_len, nseg,
                                             SUMMARY=True, HAS_CARRY=False, **flags)
        _segment_carry_kernel[(B, n_cb)](state, w, C, seg_len, nseg, BLOCK_C=block_c)
    _causal_scan_kernel[(B, n_cb, nseg)](x, v1, v2_arg, w, o1, o2, od1, od2, rho, state, T, C, seg_len, nseg,
                                         SUMMARY=False, HAS_CARRY=nseg > 1, **flags)
    return (o1, o2, rho, od1, od2) if dist else (o1, o2, rho)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@torch.library.custom_op("visionattn::bi_wkv", mutates_args=())
def _bi_wkv_triton(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (y, log of the denominator), both (B, T, C) in the compute dtype."""
    dt = _compute_dtype(k)
    w, u, k, v = (t.to(dt).contiguous() for t in (w, u, k, v))
    n_f, d_f, r_f = _scan(k, v, None, w, reverse=False, dist=False)
    n_b, d_b, r_b = _scan(k, v, None, w, reverse=True, dist=False)
    r_s = u + k
    r = torch.maximum(torch.maximum(r_f, r_b), r_s)
    e_f, e_b, e_s = (r_f - r).exp(), (r_b - r).exp(), (r_s - r).exp()
    den = d_f * e_f + d_b * e_b + e_s
    y = (n_f * e_f + n_b * e_b + v * e_s) / den
    return y, den.log() + r


@_bi_wkv_triton.register_fake
def _(w, u, k, v):
    dt = _compute_dtype(k)
    return k.new_empty(k.shape, dtype=dt), k.new_empty(k.shape, dtype=dt)


@torch.library.custom_op("visionattn::bi_wkv_backward", mutates_args=())
def _bi_wkv_triton_backward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, y: torch.Tensor,
                            log_den: torch.Tensor, gy: torch.Tensor
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (gw, gu, gk, gv) of Bi-WKV.

    With G(s)_i = sum_{t!=i} e^{-(|t-i|-1) w - logD_t} s_t (the same bidirectional sum as the
    forward, keyed by -logD) and Gd its (|t-i|-1)-weighted version:
      gv = e^k [G(gy) + e^{u - logD} gy],   gk = v gv - e^k [G(gy y) + e^{u - logD} gy y],
      gw = -sum e^k [v Gd(gy) - Gd(gy y)],  gu = sum e^{u + k - logD} gy (v - y).
    """
    dt = _compute_dtype(k)
    w, u, k, v, y, log_den, gy = (t.to(dt).contiguous() for t in (w, u, k, v, y, log_den, gy))
    x = (-log_den).contiguous()
    gyy = (gy * y).contiguous()
    f1, f2, rf, fd1, fd2 = _scan(x, gy, gyy, w, reverse=False, dist=True)
    b1, b2, rb, bd1, bd2 = _scan(x, gy, gyy, w, reverse=True, dist=True)
    ef, eb = (rf + k).exp(), (rb + k).exp()  # e^{k_i} times each part's scale: bounded
    es = (u + k - log_den).exp()
    gv = f1 * ef + b1 * eb + es * gy
    gk = v * gv - (f2 * ef + b2 * eb + es * gyy)
    gw = -(v * (fd1 * ef + bd1 * eb) - (fd2 * ef + bd2 * eb)).sum(dim=(0, 1))
    gu = (es * (gy * v - gyy)).sum(dim=(0, 1))
    return gw, gu, gk, gv


@_bi_wkv_triton_backward.register_fake
def _(w, u, k, v, y, log_den, gy):
    dt = _compute_dtype(k)
    return (w.new_empty(w.shape, dtype=dt), u.new_empty(u.shape, dtype=dt),
            k.new_empty(k.shape, dtype=dt), v.new_empty(v.shape, dtype=dt))


def _setup_context(ctx, inputs, output):
    w, u, k, v = inputs
    y, log_den = output
    ctx.save_for_backward(w, u, k, v, y, log_den)
    ctx.mark_non_differentiable(log_den)


def _backward(ctx, gy, _g_log_den):
    w, u, k, v, y, log_den = ctx.saved_tensors
    gw, gu, gk, gv = _bi_wkv_triton_backward(w, u, k, v, y, log_den, gy)
    return gw.to(w.dtype), gu.to(u.dtype), gk.to(k.dtype), gv.to(v.dtype)


_bi_wkv_triton.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------------

def _triton_supported(k: torch.Tensor) -> bool:
    if triton is None or k.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return False
    if k.is_cuda:
        return True
    from triton import knobs  # CPU tensors only run under TRITON_INTERPRET=1 (tests)

    return k.device.type == "cpu" and bool(knobs.runtime.interpret)


def bi_wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Bi-WKV (formula in the module docstring).

    Args:
        w, u: (C,) decay and bonus, used as given (Restore-RWKV passes decay/T, first/T).
        k, v: (B, T, C) keys and values, T = tokens in scan order.
        impl: "auto", "triton" or "reference".
    Returns:
        (B, T, C), dtype of ``k``.
    """
    if k.dim() != 3 or v.shape != k.shape or w.shape != (k.shape[-1],) or u.shape != (k.shape[-1],):
        raise ValueError(f"bi_wkv expects k, v: (B, T, C) and w, u: (C,); got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, w {tuple(w.shape)}, u {tuple(u.shape)}")
    choice = pick("bi_wkv", impl, {"triton": _triton_supported(k), "reference": True})
    if choice == "triton":
        return _bi_wkv_triton(w, u, k, v)[0].to(k.dtype)
    dt = _compute_dtype(k)
    return bi_wkv_reference(w.to(dt), u.to(dt), k.to(dt), v.to(dt)).to(k.dtype)


def re_wkv(k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, first: torch.Tensor, hw: Tuple[int, int],
           impl: str = "auto") -> torch.Tensor:
    """Re-WKV: M Bi-WKV recurrences alternating horizontal and vertical scans, K reused.

    Args:
        k, v: (B, T, C) tokens in row-major (h w) order, T = H*W.
        decay, first: (M, C); recurrence j uses w = decay[j]/T, u = first[j]/T, scanning in
            (h w) order for even j and (w h) order for odd j.
        hw: (H, W).
    Returns:
        (B, T, C) in (h w) order.
    """
    B, T, C = k.shape
    H, W = hw
    if H * W != T:
        raise ValueError(f"re_wkv: hw={hw} does not match T={T} tokens")
    k_cols = None
    for j in range(decay.shape[0]):
        if j % 2 == 0:
            v = bi_wkv(decay[j] / T, first[j] / T, k, v, impl=impl)
        else:
            if k_cols is None:  # (w h) order, computed once
                k_cols = k.view(B, H, W, C).transpose(1, 2).reshape(B, T, C)
            v_cols = v.view(B, H, W, C).transpose(1, 2).reshape(B, T, C)
            v = bi_wkv(decay[j] / T, first[j] / T, k_cols, v_cols, impl=impl)
            v = v.view(B, W, H, C).transpose(1, 2).reshape(B, T, C)
    return v


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 1, tokens: int = 256 * 256,
                   channels: int = 48, requires_grad: bool = False) -> dict:
    """Typical Restore-RWKV level-1 call at 256x256: w = decay/T, u = first/T."""
    g = torch.Generator().manual_seed(0)
    T = tokens
    out = dict(
        w=torch.randn(channels, generator=g) / T,
        u=torch.randn(channels, generator=g) / T,
        k=torch.randn(batch, T, channels, generator=g),
        v=torch.randn(batch, T, channels, generator=g),
    )
    return {n: t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for n, t in out.items()}


# The op-module contract names the entry point after the module (tools/benchmark.py wkv).
wkv = bi_wkv
