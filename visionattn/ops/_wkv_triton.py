"""Triton kernels of Bi-WKV (forward and backward), registered as ``torch.ops.visionattn.bi_wkv``.

Both passes are built from one causal scan, run forwards and backwards over the sequence: for
sources ``s`` it computes ``sum_{i<t} e^{-(t-1-i) w + x_i} s_i`` with a log-scale per position, so
it is exact for any ``w``/``k`` range (no denominator epsilon, no chunk-boundary approximation).
Long sequences are split into segments that scan in parallel and then exchange carries. A scan can
also run down the columns of an (h w)-ordered grid in place (``cols_h``): every step of the forward
and backward but the scan is elementwise, so Re-WKV's vertical recurrences need no transposed copies.
"""
from typing import Tuple

import torch

from ._triton import tl, triton

NEG = -1.0e30  # "log of zero" that stays finite (so exp(NEG - NEG) = 1 times a zero value, not NaN)
# Widest exponent range (per channel) of a chunk that the scan sums with plain prefix sums after one
# shift per channel: e^-40 times any value above 1e-20 is still a normal float32.
SPAN = 40.0


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype Bi-WKV computes in (kernels and reference): float64 for float64 inputs, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


if triton is not None:
    _NEG_TL = tl.constexpr(NEG)
    _SPAN_TL = tl.constexpr(SPAN)

    @triton.jit
    def _rescale(m1, m2):
        """(m, e1, e2) with m = max(m1, m2), e_i = e^{m_i - m}: one of the two is exactly 1, so one
        exponential per combine does (the scan is bound by exponentials, not memory)."""
        d = m1 - m2
        e = tl.exp(-tl.abs(d))
        first = d >= 0
        return tl.maximum(m1, m2), tl.where(first, 1.0, e), tl.where(first, e, 1.0)

    @triton.jit
    def _combine3(m1, a1, b1, m2, a2, b2):
        m, e1, e2 = _rescale(m1, m2)
        return m, a1 * e1 + a2 * e2, b1 * e1 + b2 * e2

    @triton.jit
    def _combine5(m1, a1, b1, c1, d1, m2, a2, b2, c2, d2):
        m, e1, e2 = _rescale(m1, m2)
        return m, a1 * e1 + a2 * e2, b1 * e1 + b2 * e2, c1 * e1 + c2 * e2, d1 * e1 + d2 * e2

    @triton.jit
    def _add2(a1, b1, a2, b2):
        return a1 + a2, b1 + b2

    @triton.jit
    def _add4(a1, b1, c1, d1, a2, b2, c2, d2):
        return a1 + a2, b1 + b2, c1 + c2, d1 + d2

    @triton.jit
    def _causal_scan_kernel(x_ptr, v1_ptr, v2_ptr, w_ptr, o1_ptr, o2_ptr, od1_ptr, od2_ptr, rho_ptr,
                            state_ptr, T, C, SEG_LEN, NSEG, H, W,
                            COLS: tl.constexpr, V2_ONES: tl.constexpr, DIST: tl.constexpr,
                            SUMMARY: tl.constexpr, HAS_CARRY: tl.constexpr,
                            BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
        """For s in {v1, v2}: S_t = sum_{i<t} e^{-(t-1-i) w + x_i} s_i = o_t * e^{rho_t} (in scan order),
        and with DIST also sum_{i<t} (t-1-i) e^{...} s_i = od_t * e^{rho_t}.

        With COLS the tokens are stored in row-major (h w) order of an H x W grid and the scan runs
        down the columns, (w h) order: scan position t reads and writes memory row
        (t % H) * W + t // H, so column scans need no transposed copies.

        One launch runs both directions: the reverse (anti-causal) scan of sequence b is the causal
        scan of its reversed rows, and its outputs go to the second half of the (2, B, T, C) outputs.
        One program per (direction and batch, channel block, segment of SEG_LEN tokens) walks its
        segment in chunks of BLOCK_T. A chunk loads the sources shifted by one (i = t - 1), so an
        inclusive log-sum-exp scan over the chunk gives the exclusive sums; the carry is the result
        at the chunk's last position. Segments run in parallel: a SUMMARY pass (zero carry; per
        chunk a max-shifted reduction instead of the scan) stores each segment's final state in
        ``state_ptr`` (5, 2, B, NSEG, C) = (p, s1, s2, sd1, sd2); after :func:`_segment_carry_kernel`
        turned those into incoming carries, the HAS_CARRY pass starts every segment from its carry
        and stores the outputs. In that pass a chunk whose exponents span at most SPAN per channel
        is summed with plain prefix sums after one shift per channel (one exponential per element);
        wider chunks take a log-sum-exp scan (one exponential per combine).
        """
        # program axis 0: direction-major (forward scans of the B sequences, then the reverse
        # ones); outputs and states are (2, B, ...) with that index, inputs (B, ...)
        pid = tl.program_id(0)
        nb = tl.num_programs(0) // 2
        rev = (pid >= nb).to(tl.int32)
        g = tl.program_id(2)
        cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cs < C
        w = tl.load(w_ptr + cs, mask=cmask, other=0.0)
        dt = w.dtype
        base = (pid % nb).to(tl.int64) * T * C
        obase = pid.to(tl.int64) * T * C
        j = tl.arange(0, BLOCK_T)
        jf = j.to(dt)
        # carry: sums for position t0 - 1 of the current chunk, log-scale p
        plane = NSEG * C * tl.num_programs(0)  # one (2, B, NSEG, C) plane of state_ptr
        soff_state = (pid.to(tl.int64) * NSEG + g) * C + cs
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
            rows_out = tt + rev * (T - 1 - 2 * tt)  # reverse scans: position t is row T - 1 - t
            rows_src = src + rev * (T - 1 - 2 * src)
            if COLS:  # scan position -> memory row of the (h w)-ordered grid (masked positions stay in range)
                rows_out = tl.minimum(tl.maximum(rows_out, 0), T - 1)
                rows_src = tl.minimum(tl.maximum(rows_src, 0), T - 1)
                rows_out = (rows_out % H) * W + rows_out // H
                rows_src = (rows_src % H) * W + rows_src // H
            smask = ((src >= 0) & (src < T))[:, None] & cmask[None, :]
            omask = (tt < seg_end)[:, None] & cmask[None, :]
            soff = base + rows_src.to(tl.int64)[:, None] * C + cs[None, :]
            x = tl.load(x_ptr + soff, mask=smask, other=_NEG_TL).to(dt)
            a = tl.load(v1_ptr + soff, mask=smask, other=0.0).to(dt)
            if V2_ONES:
                bb = tl.where(smask, 1.0, 0.0).to(dt)
            else:
                bb = tl.load(v2_ptr + soff, mask=smask, other=0.0).to(dt)
            if SUMMARY:
                # only the state at the chunk's last position is needed: a reduction, not a scan.
                # Source j is BLOCK_T - 1 - j steps before that position's newest source; the
                # carry moves BLOCK_T steps. Any log-scale p represents the state (value s e^p).
                back = (BLOCK_T - 1.0 - jf)[:, None]
                zl = tl.where(smask, x - back * w[None, :], _NEG_TL)
                pc = p - BLOCK_T * w
                pn = tl.maximum(pc, tl.max(zl, axis=0))
                ec = tl.exp(pc - pn)
                e = tl.exp(zl - pn[None, :])
                if DIST:
                    sd1 = (sd1 + BLOCK_T * s1) * ec + tl.sum(back * e * a, axis=0)
                    sd2 = (sd2 + BLOCK_T * s2) * ec + tl.sum(back * e * bb, axis=0)
                s1 = s1 * ec + tl.sum(e * a, axis=0)
                s2 = s2 * ec + tl.sum(e * bb, axis=0)
                p = pn
            else:
                z = x + (jf - 1.0)[:, None] * w[None, :]
                # element j stands for value * e^{z_j}
                m0 = tl.where(smask, z, _NEG_TL)
                hi = tl.max(m0, axis=0)
                lo = tl.min(tl.where(smask, m0, -_NEG_TL), axis=0)
                if tl.max(tl.where(cmask, hi - lo, 0.0), axis=0) <= _SPAN_TL:
                    # every exponent of the chunk lies within SPAN of its channel's largest: one
                    # shift per channel keeps all terms normal floats, and plain prefix sums do
                    e = tl.exp(m0 - hi[None, :])
                    if DIST:
                        a, bb, c, d = tl.associative_scan((e * a, e * bb, e * a * jf[:, None], e * bb * jf[:, None]),
                                                          0, _add4)
                    else:
                        a, bb = tl.associative_scan((e * a, e * bb), 0, _add2)
                    # a position before any source (the sequence's first) keeps the "log of zero"
                    m = tl.where((tt >= 1)[:, None], hi[None, :], _NEG_TL)
                else:
                    # wider ranges: a log-sum-exp scan, each position with its own log-scale m
                    if DIST:
                        m, a, bb, c, d = tl.associative_scan((m0, a, bb, a * jf[:, None], bb * jf[:, None]), 0,
                                                             _combine5)
                    else:
                        m, a, bb = tl.associative_scan((m0, a, bb), 0, _combine3)
                # local sums use exponent m - (tau-1) w, the carry e^{p - (tau+1) w}
                ll = m - (jf - 1.0)[:, None] * w[None, :]
                lc = p[None, :] - (jf + 1.0)[:, None] * w[None, :]
                rho, el, ec = _rescale(ll, lc)
                o1 = a * el + s1[None, :] * ec
                o2 = bb * el + s2[None, :] * ec
                ooff = obase + rows_out.to(tl.int64)[:, None] * C + cs[None, :]
                tl.store(o1_ptr + ooff, o1, mask=omask)
                tl.store(o2_ptr + ooff, o2, mask=omask)
                tl.store(rho_ptr + ooff, rho, mask=omask)
                last = (j == BLOCK_T - 1)[:, None]
                if DIST:
                    tau = jf[:, None]
                    od1 = (tau * a - c) * el + (sd1[None, :] + (tau + 1.0) * s1[None, :]) * ec
                    od2 = (tau * bb - d) * el + (sd2[None, :] + (tau + 1.0) * s2[None, :]) * ec
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
    def _sequential_scan_kernel(x_ptr, v1_ptr, v2_ptr, w_ptr, o1_ptr, o2_ptr, od1_ptr, od2_ptr, rho_ptr,
                                state_ptr, T, C, SEG_LEN, NSEG, H, W,
                                COLS: tl.constexpr, V2_ONES: tl.constexpr, DIST: tl.constexpr,
                                SUMMARY: tl.constexpr, HAS_CARRY: tl.constexpr,
                                BLOCK_C: tl.constexpr):
        """The same sums, outputs and segment states as :func:`_causal_scan_kernel`, one token per
        step: the state (p, s1, s2[, sd1, sd2]) at position t moves to t + 1 by
        p' = max(p - w, x_t), s' = s e^{p - w - p'} + v_t e^{x_t - p'} (sd' = (sd + s) e^{p - w - p'}),
        so every position keeps its own log-scale with two exponentials per element (the chunked
        scan spends a tree of combines per element). Selected by a BLOCK_T of 1 in ``TILES``.
        """
        # program axis 0: direction-major (forward scans of the B sequences, then the reverse
        # ones); outputs and states are (2, B, ...) with that index, inputs (B, ...)
        pid = tl.program_id(0)
        nb = tl.num_programs(0) // 2
        rev = (pid >= nb).to(tl.int32)
        g = tl.program_id(2)
        cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cs < C
        w = tl.load(w_ptr + cs, mask=cmask, other=0.0)
        dt = w.dtype
        base = (pid % nb).to(tl.int64) * T * C
        obase = pid.to(tl.int64) * T * C
        plane = NSEG * C * tl.num_programs(0)
        soff_state = (pid.to(tl.int64) * NSEG + g) * C + cs
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
        for t in range(seg_start, seg_end):
            src = tl.maximum(t - 1, 0)  # position 0 has no source: masked below
            row_out = t + rev * (T - 1 - 2 * t)
            row_src = src + rev * (T - 1 - 2 * src)
            if COLS:
                row_out = (row_out % H) * W + row_out // H
                row_src = (row_src % H) * W + row_src // H
            smask = cmask & (t > 0)
            soff = base + row_src.to(tl.int64) * C + cs
            x = tl.load(x_ptr + soff, mask=smask, other=_NEG_TL).to(dt)
            a = tl.load(v1_ptr + soff, mask=smask, other=0.0).to(dt)
            if V2_ONES:
                bb = tl.where(smask, 1.0, 0.0).to(dt)
            else:
                bb = tl.load(v2_ptr + soff, mask=smask, other=0.0).to(dt)
            pd = p - w
            pn = tl.maximum(pd, x)
            eo = tl.exp(pd - pn)
            en = tl.exp(x - pn)
            if DIST:
                sd1 = (sd1 + s1) * eo
                sd2 = (sd2 + s2) * eo
            s1 = s1 * eo + a * en
            s2 = s2 * eo + bb * en
            p = pn
            if not SUMMARY:
                ooff = obase + row_out.to(tl.int64) * C + cs
                tl.store(o1_ptr + ooff, s1, mask=cmask)
                tl.store(o2_ptr + ooff, s2, mask=cmask)
                tl.store(rho_ptr + ooff, p, mask=cmask)
                if DIST:
                    tl.store(od1_ptr + ooff, sd1, mask=cmask)
                    tl.store(od2_ptr + ooff, sd2, mask=cmask)
        if SUMMARY:  # state at the segment's last position
            tl.store(state_ptr + soff_state, p, mask=cmask)
            tl.store(state_ptr + plane + soff_state, s1, mask=cmask)
            tl.store(state_ptr + 2 * plane + soff_state, s2, mask=cmask)
            tl.store(state_ptr + 3 * plane + soff_state, sd1, mask=cmask)
            tl.store(state_ptr + 4 * plane + soff_state, sd2, mask=cmask)

    @triton.jit
    def _segment_carry_kernel(state_ptr, w_ptr, C, SEG_LEN, NSEG, BLOCK_C: tl.constexpr):
        """In place over (5, 2B, NSEG, C) (both directions): segment summaries -> incoming carries.

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

# Launch settings of the scan kernel per pass ("fwd": the forward's sums; "bwd": the backward's,
# with the distance-weighted sums) and channel count C: the first row whose bound is >= C applies
# (None: any C). Each setting is (BLOCK_C, BLOCK_T, num_warps, programs): BLOCK_C 0 puts all
# channels in one program (next power of two of C); BLOCK_T 1 selects the one-token-per-step
# kernel (_sequential_scan_kernel) instead of the chunked scan; programs is how many programs the
# segment split aims at (B * channel blocks * segments). ``benchmarks/wkv_tiles.py`` times alternatives.
TILES = {
    "fwd": [(64, (16, 128, 4, 1024)), (128, (32, 128, 4, 1024)), (256, (32, 128, 4, 1024)),
            (None, (32, 128, 4, 1024))],
    "bwd": [(64, (16, 64, 4, 1024)), (128, (32, 64, 4, 1024)), (256, (32, 64, 4, 1024)),
            (None, (32, 64, 4, 1024))],
}


def scan_tile(dist: bool, C: int) -> Tuple[int, int, int, int]:
    """The TILES setting (BLOCK_C, BLOCK_T, num_warps, programs) of one scan pass over C channels."""
    for bound, setting in TILES["bwd" if dist else "fwd"]:
        if bound is None or C <= bound:
            return setting
    raise ValueError(f"wkv TILES has no setting for C={C}: end each list with a (None, setting) row")


def _scan(x, v1, v2, w, dist: bool, cols_h: int = 0, tile=None):
    """Launch the causal and the anti-causal scan over (B, T, C) together; returns two tuples
    (forward, reverse), each (o1, o2, rho[, od1, od2]).

    ``cols_h`` > 0: the tokens are an (h w)-ordered grid of ``cols_h`` rows and the scan runs in
    (w h) order (outputs stay in (h w) order). ``tile``: a (BLOCK_C, BLOCK_T, num_warps, programs)
    setting instead of :func:`scan_tile`'s (benchmarks). Outputs are in ``w``'s dtype (the
    compute dtype); ``x``, ``v1``, ``v2`` may be narrower (converted on load).
    """
    B, T, C = x.shape
    if cols_h and T % cols_h:
        raise ValueError(f"wkv scan: cols_h={cols_h} does not divide T={T}")
    new = lambda: torch.empty((2,) + tuple(x.shape), device=x.device, dtype=w.dtype)  # noqa: E731
    o1, o2, rho = new(), new(), new()
    od1, od2 = (new(), new()) if dist else (o1, o2)
    block_c, block_t, warps, programs = tile or scan_tile(dist, C)
    if block_c == 0:
        block_c = triton.next_power_of_2(C)
    if not x.is_cuda and block_t > 1:
        block_t = 8  # tiny chunks on the CPU interpreter: carries get tested
    n_cb = triton.cdiv(C, block_c)
    # split T into segments so that enough programs run in parallel per direction (each walks its segment)
    if _FORCE_SEG_LEN is not None:
        seg_len = _FORCE_SEG_LEN
    else:
        nseg = max(1, min(triton.cdiv(programs, B * n_cb), T // (4 * block_t)))
        seg_len = triton.cdiv(triton.cdiv(T, nseg), block_t) * block_t
    nseg = triton.cdiv(T, seg_len)
    v2_arg = x if v2 is None else v2
    H = cols_h if cols_h else 1
    flags = dict(COLS=bool(cols_h), V2_ONES=v2 is None, DIST=dist, BLOCK_C=block_c, num_warps=warps)
    if block_t == 1:
        kernel = _sequential_scan_kernel
    else:
        kernel = _causal_scan_kernel
        flags["BLOCK_T"] = block_t
    state = x.new_empty(5, 2, B, nseg, C, dtype=w.dtype) if nseg > 1 else x.new_empty(1, dtype=w.dtype)
    grid = (2 * B, n_cb, nseg)
    if nseg > 1:
        kernel[grid](x, v1, v2_arg, w, o1, o2, od1, od2, rho, state, T, C, seg_len, nseg, H, T // H,
                     SUMMARY=True, HAS_CARRY=False, **flags)
        _segment_carry_kernel[(2 * B, n_cb)](state, w, C, seg_len, nseg, BLOCK_C=block_c)
    kernel[grid](x, v1, v2_arg, w, o1, o2, od1, od2, rho, state, T, C, seg_len, nseg, H, T // H,
                 SUMMARY=False, HAS_CARRY=nseg > 1, **flags)
    outs = (o1, o2, rho, od1, od2) if dist else (o1, o2, rho)
    return tuple(t[0] for t in outs), tuple(t[1] for t in outs)


if triton is not None:

    @triton.jit
    def _combine_kernel(nf_ptr, df_ptr, rf_ptr, nb_ptr, db_ptr, rb_ptr, u_ptr, k_ptr, v_ptr, y_ptr, ld_ptr,
                        n, C, BLOCK: tl.constexpr):
        """y = (n_f e_f + n_b e_b + v e_s) / den, log_den = log(den) + r, with
        den = d_f e_f + d_b e_b + e_s, e_x = exp(r_x - r), r_s = u + k, r = max(r_f, r_b, r_s)."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        r_f = tl.load(rf_ptr + offs, mask=mask, other=0.0)
        r_b = tl.load(rb_ptr + offs, mask=mask, other=0.0)
        r_s = tl.load(u_ptr + offs % C, mask=mask, other=0.0) + tl.load(k_ptr + offs, mask=mask, other=0.0).to(r_f.dtype)
        r = tl.maximum(tl.maximum(r_f, r_b), r_s)
        e_f, e_b, e_s = tl.exp(r_f - r), tl.exp(r_b - r), tl.exp(r_s - r)
        den = (tl.load(df_ptr + offs, mask=mask, other=1.0) * e_f + tl.load(db_ptr + offs, mask=mask, other=1.0) * e_b
               + e_s)
        num = (tl.load(nf_ptr + offs, mask=mask, other=0.0) * e_f + tl.load(nb_ptr + offs, mask=mask, other=0.0) * e_b
               + tl.load(v_ptr + offs, mask=mask, other=0.0).to(r_f.dtype) * e_s)
        tl.store(y_ptr + offs, tl.math.div_rn(num, den), mask=mask)
        tl.store(ld_ptr + offs, tl.log(den) + r, mask=mask)

    def _combine(n_f, d_f, r_f, n_b, d_b, r_b, u, k, v):
        """The forward's last step in one pass (float32); PyTorch ops for float64."""
        if r_f.dtype != torch.float32:
            r_s = u + k
            r = torch.maximum(torch.maximum(r_f, r_b), r_s)
            e_f, e_b, e_s = (r_f - r).exp(), (r_b - r).exp(), (r_s - r).exp()
            den = d_f * e_f + d_b * e_b + e_s
            return (n_f * e_f + n_b * e_b + v * e_s) / den, den.log() + r
        y, log_den = torch.empty_like(r_f), torch.empty_like(r_f)
        n = r_f.numel()
        block = 1024
        _combine_kernel[(triton.cdiv(n, block),)](n_f, d_f, r_f, n_b, d_b, r_b, u, k, v, y, log_den, n, r_f.shape[-1],
                                                  BLOCK=block, num_warps=4)
        return y, log_den

    def bi_wkv_launch(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cols_h: int = 0
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (y, log of the denominator), both (B, T, C) in the compute dtype.

        ``cols_h`` = 0: tokens in scan order. ``cols_h`` = H > 0: tokens are the (h w)-ordered grid
        of H rows, the scan runs in (w h) order, and the outputs are in (h w) order.
        k and v are read in their own dtype (float16/bfloat16 are widened on load, not copied).
        """
        dt = compute_dtype(k)
        w, u = w.to(dt).contiguous(), u.to(dt).contiguous()
        k, v = k.contiguous(), v.contiguous()
        (n_f, d_f, r_f), (n_b, d_b, r_b) = _scan(k, v, None, w, dist=False, cols_h=cols_h)
        return _combine(n_f, d_f, r_f, n_b, d_b, r_b, u, k, v)

    bi_wkv_triton = torch.library.custom_op("visionattn::bi_wkv", mutates_args=())(bi_wkv_launch)

    @bi_wkv_triton.register_fake
    def _(w, u, k, v, cols_h=0):
        dt = compute_dtype(k)
        return k.new_empty(k.shape, dtype=dt), k.new_empty(k.shape, dtype=dt)

    @torch.library.custom_op("visionattn::bi_wkv_backward", mutates_args=())
    def bi_wkv_triton_backward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               y: torch.Tensor, log_den: torch.Tensor, gy: torch.Tensor, cols_h: int = 0
                               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradients (gw, gu, gk, gv) of Bi-WKV.

        With G(s)_i = sum_{t!=i} e^{-(|t-i|-1) w - logD_t} s_t (the same bidirectional sum as the
        forward, keyed by -logD) and Gd its (|t-i|-1)-weighted version:
          gv = e^k [G(gy) + e^{u - logD} gy],   gk = v gv - e^k [G(gy y) + e^{u - logD} gy y],
          gw = -sum e^k [v Gd(gy) - Gd(gy y)],  gu = sum e^{u + k - logD} gy (v - y).
        Everything but the scans is elementwise, so ``cols_h`` (the forward's scan order) only
        reaches the scans.
        """
        dt = compute_dtype(k)
        w, u, k, v, y, log_den, gy = (t.to(dt).contiguous() for t in (w, u, k, v, y, log_den, gy))
        x = (-log_den).contiguous()
        gyy = (gy * y).contiguous()
        (f1, f2, rf, fd1, fd2), (b1, b2, rb, bd1, bd2) = _scan(x, gy, gyy, w, dist=True, cols_h=cols_h)
        ef, eb = (rf + k).exp(), (rb + k).exp()  # e^{k_i} times each part's scale: bounded
        es = (u + k - log_den).exp()
        gv = f1 * ef + b1 * eb + es * gy
        gk = v * gv - (f2 * ef + b2 * eb + es * gyy)
        gw = -(v * (fd1 * ef + bd1 * eb) - (fd2 * ef + bd2 * eb)).sum(dim=(0, 1))
        gu = (es * (gy * v - gyy)).sum(dim=(0, 1))
        return gw, gu, gk, gv

    @bi_wkv_triton_backward.register_fake
    def _(w, u, k, v, y, log_den, gy, cols_h=0):
        dt = compute_dtype(k)
        return (w.new_empty(w.shape, dtype=dt), u.new_empty(u.shape, dtype=dt),
                k.new_empty(k.shape, dtype=dt), v.new_empty(v.shape, dtype=dt))

    def _setup_context(ctx, inputs, output):
        w, u, k, v, cols_h = inputs
        y, log_den = output
        ctx.save_for_backward(w, u, k, v, y, log_den)
        ctx.cols_h = cols_h
        ctx.mark_non_differentiable(log_den)

    def _backward(ctx, gy, _g_log_den):
        w, u, k, v, y, log_den = ctx.saved_tensors
        gw, gu, gk, gv = bi_wkv_triton_backward(w, u, k, v, y, log_den, gy, ctx.cols_h)
        return gw.to(w.dtype), gu.to(u.dtype), gk.to(k.dtype), gv.to(v.dtype), None

    bi_wkv_triton.register_autograd(_backward, setup_context=_setup_context)
