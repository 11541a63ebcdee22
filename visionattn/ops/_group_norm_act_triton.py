"""Triton kernels of GroupNorm + activation, registered as ``torch.ops.visionattn.group_norm_act``.

Three launches per call, for NCHW-contiguous or channels_last (NHWC) maps (B, C, H, W):

1. **per-channel partial statistics** (split reduction): each channel's ``H * W`` values are
   split over several programs, so that batch 1 fills the GPU too (RestoreFormer++ at 512x512
   has a million elements per group; one program per group would leave most of an H200 idle).
   Each program keeps a Welford (mean, M2) per lane in float32, merges its lanes and writes one
   (mean, M2, count) partial per channel. NCHW: a program owns a contiguous stretch of one
   channel. NHWC: a program owns ``rows`` pixels x a tile of channels, reading whole rows of the
   map (coalesced).
2. **finalize**: one program per (batch, group) merges the partials of the group's channels into
   ``mean`` and ``rstd = rsqrt(M2 / n + eps)`` (biased variance, as ``torch.nn.GroupNorm``).
3. **apply**: ``out = act((x + input_bias - mean) * rstd * weight + bias)``, in float32 as one
   multiply-add per element, written once in x's dtype and layout.

``input_bias`` (C,) (the bias of the convolution that produced ``x``, so that convolution runs
without its own bias pass) costs nothing in step 1: a constant added to a channel moves its mean
and leaves its M2 unchanged, so step 2 adds it to each channel's partial mean; step 3 folds it
into the shift.

Welford per lane needs no division per element: every lane of a program sees one element per full
tile, so all lanes' counts after tile ``k`` are ``k + 1`` (only a program's last tile can be
partial, and its masked lanes simply do not update).
"""
from typing import Dict, Optional

import torch

from ._triton import tl, triton

ACTIVATIONS = (None, "silu", "gelu")

_SM_COUNT: Dict[int, int] = {}


def _target_programs(x: torch.Tensor) -> int:
    """Programs the statistics step aims for: a few per streaming multiprocessor on CUDA (the split
    is chosen so that batch 1 fills the GPU too); a handful on the CPU interpreter, so the tests
    exercise several splits per group."""
    if not x.is_cuda:
        return 4
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return 8 * _SM_COUNT[index]


def _block(x: torch.Tensor, cuda: int, interpreter: int) -> int:
    """Elements per tile: ``cuda`` on the GPU; tiny tiles on the CPU interpreter (masks and several
    tiles per program get tested at small shapes)."""
    return cuda if x.is_cuda else interpreter


def layout(x: torch.Tensor) -> str:
    """``"nchw"`` (contiguous), ``"nhwc"`` (channels_last) or ``""`` (neither: the kernels cannot read it).
    A map that is both (C == 1 or H == W == 1) counts as NCHW."""
    if x.dim() == 4 and x.is_contiguous():
        return "nchw"
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return "nhwc"
    return ""


if triton is not None:

    @triton.jit
    def _welford_combine(mean_a, m2_a, n_a, mean_b, m2_b, n_b):
        """Chan et al.'s merge of two (mean, M2, count) summaries; empty ones (n = 0) are neutral."""
        n = n_a + n_b
        w_b = tl.where(n > 0, n_b / tl.maximum(n, 1.0), 0.0)
        delta = mean_b - mean_a
        return mean_a + delta * w_b, m2_a + m2_b + delta * delta * n_a * w_b, n

    @triton.jit
    def _merge(mean, m2, n, axis: tl.constexpr):
        """Many (mean, M2, count) summaries along ``axis`` -> one: ``N = sum n``,
        ``mean = sum(n * mean) / N``, ``M2 = sum M2 + sum n * (mean_i - mean)^2`` (the pairwise merge
        generalised; plain sums, which reduce faster than a custom combine)."""
        total = tl.sum(n, axis)
        mu = tl.sum(n * mean, axis) / tl.maximum(total, 1.0)
        d = mean - tl.expand_dims(mu, axis)
        return mu, tl.sum(m2 + n * d * d, axis), total

    @triton.jit
    def _lane_counts(n, BLOCK: tl.constexpr):
        """Elements lane ``r`` of a BLOCK-wide loop over ``n`` elements saw: ceil((n - r) / BLOCK), >= 0
        (counted rather than accumulated: one register per element in flight less)."""
        return ((tl.maximum(n - tl.arange(0, BLOCK), 0) + BLOCK - 1) // BLOCK).to(tl.float32)

    @triton.jit
    def _stats_nchw_kernel(x_ptr, part_ptr, HW, SPLITS, chunk, part_stride, BLOCK: tl.constexpr):
        """Program (row = b * C + c, split): values [split * chunk, +chunk) of the channel's
        contiguous HW values -> partial [row, split]."""
        row = tl.program_id(0)
        split = tl.program_id(1)
        lo = split * chunk
        hi = tl.minimum(lo + chunk, HW)
        base = x_ptr + row.to(tl.int64) * HW
        mean = tl.zeros([BLOCK], tl.float32)
        m2 = tl.zeros([BLOCK], tl.float32)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < hi
            v = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)
            inv = 1.0 / ((start - lo) // BLOCK + 1).to(tl.float32)  # every valid lane's new count
            delta = v - mean
            mean += tl.where(mask, delta * inv, 0.0)
            m2 += tl.where(mask, delta * (v - mean), 0.0)
        m, s, n = _merge(mean, m2, _lane_counts(hi - lo, BLOCK), 0)
        p = part_ptr + row * SPLITS + split
        tl.store(p, m)
        tl.store(p + part_stride, s)
        tl.store(p + 2 * part_stride, n)

    @triton.jit
    def _stats_nhwc_kernel(x_ptr, part_ptr, HW, C, SPLITS, rows_per_split, part_stride,
                           BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
        """Program (split, channel tile, b): pixels [split * rows_per_split, +rows_per_split) x
        BLOCK_C channels of batch b -> one partial per channel at [b, split, c]."""
        split = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        b = tl.program_id(2)
        cmask = cols < C
        lo = split * rows_per_split
        hi = tl.minimum(lo + rows_per_split, HW)
        base = x_ptr + b.to(tl.int64) * HW * C
        mean = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
        m2 = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
        for start in range(lo, hi, BLOCK_HW):
            rows = start + tl.arange(0, BLOCK_HW)
            mask = (rows < hi)[:, None] & cmask[None, :]
            v = tl.load(base + rows.to(tl.int64)[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            inv = 1.0 / ((start - lo) // BLOCK_HW + 1).to(tl.float32)
            delta = v - mean
            mean += tl.where(mask, delta * inv, 0.0)
            m2 += tl.where(mask, delta * (v - mean), 0.0)
        cnt = _lane_counts(hi - lo, BLOCK_HW)[:, None] * cmask[None, :].to(tl.float32)
        m, s, n = _merge(mean, m2, cnt, 0)  # per channel: [BLOCK_C]
        p = part_ptr + (b * SPLITS + split) * C + cols
        tl.store(p, m, mask=cmask)
        tl.store(p + part_stride, s, mask=cmask)
        tl.store(p + 2 * part_stride, n, mask=cmask)

    @triton.jit
    def _finalize_kernel(part_ptr, xb_ptr, mean_ptr, rstd_ptr, G, CPG, K, INNER, stride_b, stride_g,
                         stride_outer, part_stride, eps, CHANNEL_OUTER: tl.constexpr, HAS_XB: tl.constexpr,
                         BLOCK_K: tl.constexpr):
        """Program r = b * G + g merges the K partials of its group's channels, the i-th at
        ``b * stride_b + g * stride_g + (i // INNER) * stride_outer + i % INNER``, of channel
        ``g * CPG + (i // INNER if CHANNEL_OUTER else i % INNER)`` (whose input_bias moves its mean)."""
        r = tl.program_id(0)
        g = r % G
        base = part_ptr + (r // G) * stride_b + g * stride_g
        mean = tl.zeros([BLOCK_K], tl.float32)
        m2 = tl.zeros([BLOCK_K], tl.float32)
        cnt = tl.zeros([BLOCK_K], tl.float32)
        for start in range(0, K, BLOCK_K):
            i = start + tl.arange(0, BLOCK_K)
            mask = i < K
            offs = (i // INNER) * stride_outer + i % INNER
            pm = tl.load(base + offs, mask=mask, other=0.0)
            ps = tl.load(base + part_stride + offs, mask=mask, other=0.0)
            pn = tl.load(base + 2 * part_stride + offs, mask=mask, other=0.0)
            if HAS_XB:
                channel = g * CPG + (i // INNER if CHANNEL_OUTER else i % INNER)
                pm += tl.load(xb_ptr + channel, mask=mask, other=0.0).to(tl.float32)
            mean, m2, cnt = _welford_combine(mean, m2, cnt, pm, ps, pn)
        m, s, n = _merge(mean, m2, cnt, 0)
        tl.store(mean_ptr + r, m)
        tl.store(rstd_ptr + r, tl.rsqrt(s / n + eps))

    @triton.jit
    def _activate(y, SILU: tl.constexpr, GELU: tl.constexpr):
        if SILU:
            y = y * tl.sigmoid(y)
        if GELU:  # the exact (erf) form, as nn.GELU()
            y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
        return y

    @triton.jit
    def _apply_nchw_kernel(x_ptr, xb_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, out_ptr, HW, C, G, CPG,
                           HAS_XB: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, SILU: tl.constexpr,
                           GELU: tl.constexpr,
                           BLOCK: tl.constexpr):
        """Program (row = b * C + c, tile): BLOCK pixels of one channel, one scale and shift."""
        row = tl.program_id(0)
        c = row % C
        group = (row // C) * G + c // CPG
        scale = tl.load(rstd_ptr + group)
        if HAS_W:
            scale *= tl.load(w_ptr + c).to(tl.float32)
        shift = -tl.load(mean_ptr + group) * scale
        if HAS_XB:
            shift += tl.load(xb_ptr + c).to(tl.float32) * scale
        if HAS_B:
            shift += tl.load(b_ptr + c).to(tl.float32)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        ptr = row.to(tl.int64) * HW + offs
        v = tl.load(x_ptr + ptr, mask=mask, other=0.0).to(tl.float32)
        y = _activate(v * scale + shift, SILU, GELU)
        tl.store(out_ptr + ptr, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _apply_nhwc_kernel(x_ptr, xb_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, out_ptr, HW, C, G, CPG,
                           HAS_XB: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, SILU: tl.constexpr,
                           GELU: tl.constexpr,
                           BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
        """Program (pixel tile, channel tile, b): a (BLOCK_HW, BLOCK_C) tile, per-channel scale and shift."""
        rows = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        b = tl.program_id(2)
        cmask = cols < C
        group = b * G + cols // CPG
        scale = tl.load(rstd_ptr + group, mask=cmask, other=0.0)
        if HAS_W:
            scale *= tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        shift = -tl.load(mean_ptr + group, mask=cmask, other=0.0) * scale
        if HAS_XB:
            shift += tl.load(xb_ptr + cols, mask=cmask, other=0.0).to(tl.float32) * scale
        if HAS_B:
            shift += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        mask = (rows < HW)[:, None] & cmask[None, :]
        ptr = b.to(tl.int64) * HW * C + rows.to(tl.int64)[:, None] * C + cols[None, :]
        v = tl.load(x_ptr + ptr, mask=mask, other=0.0).to(tl.float32)
        y = _activate(v * scale[None, :] + shift[None, :], SILU, GELU)
        tl.store(out_ptr + ptr, y.to(out_ptr.dtype.element_ty), mask=mask)

    def _statistics(x: torch.Tensor, num_groups: int, eps: float, input_bias: Optional[torch.Tensor], fmt: str):
        """(mean, rstd): float32 (B * G,) of the groups of ``x (+ input_bias)``."""
        B, C, H, W = x.shape
        HW, G = H * W, num_groups
        cpg = C // G
        target = _target_programs(x)
        if fmt == "nchw":
            block = min(_block(x, 2048, 64), triton.next_power_of_2(HW))
            tiles = triton.cdiv(HW, block)
            splits = max(1, min(triton.cdiv(target, B * C), tiles))
            chunk = triton.cdiv(tiles, splits) * block
            splits = triton.cdiv(HW, chunk)
            part = torch.empty(3, B * C, splits, device=x.device, dtype=torch.float32)
            _stats_nchw_kernel[(B * C, splits)](x, part, HW, splits, chunk, part[0].numel(), BLOCK=block, num_warps=4)
            # group (b, g): rows b*C + g*cpg .. + cpg of `splits` partials each, contiguous
            k, inner, stride_outer, channel_outer = cpg * splits, splits, splits, True
            stride_b, stride_g = C * splits, cpg * splits
        else:
            block_c = min(triton.next_power_of_2(C), _block(x, 64, 16))  # 128 spills a register or two (sm_90)
            block_hw = max(1, _block(x, 2048, 64) // block_c)
            c_tiles = triton.cdiv(C, block_c)
            tiles = triton.cdiv(HW, block_hw)
            splits = max(1, min(triton.cdiv(target, B * c_tiles), tiles))
            rows = triton.cdiv(tiles, splits) * block_hw
            splits = triton.cdiv(HW, rows)
            part = torch.empty(3, B, splits, C, device=x.device, dtype=torch.float32)
            _stats_nhwc_kernel[(splits, c_tiles, B)](x, part, HW, C, splits, rows, part[0].numel(),
                                                     BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=4)
            # group (b, g): channels g*cpg .. + cpg of every split of batch b
            k, inner, stride_outer, channel_outer = splits * cpg, cpg, C, False
            stride_b, stride_g = splits * C, cpg
        mean = torch.empty(B * G, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        block_k = min(_block(x, 1024, 4), triton.next_power_of_2(k))
        _finalize_kernel[(B * G,)](part, x if input_bias is None else input_bias, mean, rstd, G, cpg, k, inner,
                                   stride_b, stride_g, stride_outer, part[0].numel(), eps,
                                   CHANNEL_OUTER=channel_outer, HAS_XB=input_bias is not None, BLOCK_K=block_k,
                                   num_warps=4)
        return mean, rstd

    def group_norm_act_launch(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor],
                              bias: Optional[torch.Tensor], eps: float, act: Optional[str],
                              input_bias: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, C, H, W) NCHW-contiguous or channels_last -> the same shape, dtype and layout."""
        fmt = layout(x)
        B, C, H, W = x.shape
        out = torch.empty_like(x, memory_format=torch.contiguous_format if fmt == "nchw" else torch.channels_last)
        if x.numel() == 0:
            return out
        mean, rstd = _statistics(x, num_groups, eps, input_bias, fmt)
        HW, cpg = H * W, C // num_groups
        flags = dict(HAS_XB=input_bias is not None, HAS_W=weight is not None, HAS_B=bias is not None,
                     SILU=act == "silu", GELU=act == "gelu")
        ptrs = (x, x if input_bias is None else input_bias, x if weight is None else weight,
                x if bias is None else bias, mean, rstd, out)
        if fmt == "nchw":
            block = min(_block(x, 2048, 256), triton.next_power_of_2(HW))
            _apply_nchw_kernel[(B * C, triton.cdiv(HW, block))](
                *ptrs, HW, C, num_groups, cpg, **flags, BLOCK=block, num_warps=4)
        else:
            block_c = min(triton.next_power_of_2(C), _block(x, 128, 16))
            block_hw = max(1, _block(x, 2048, 256) // block_c)
            _apply_nhwc_kernel[(triton.cdiv(HW, block_hw), triton.cdiv(C, block_c), B)](
                *ptrs, HW, C, num_groups, cpg, **flags, BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=4)
        return out

    # The op as torch.compile/torch.export and autograd see it; eager no-grad calls launch directly
    # (a custom_op call costs tens of microseconds of host time, which batch-1 inference notices).
    group_norm_act_triton = torch.library.custom_op("visionattn::group_norm_act", mutates_args=())(
        group_norm_act_launch)

    @group_norm_act_triton.register_fake
    def _(x, num_groups, weight, bias, eps, act, input_bias):
        return torch.empty_like(x, memory_format=torch.contiguous_format if layout(x) == "nchw"
                                else torch.channels_last)
