"""Triton kernels of bi-level routing attention (forward and backward), as ``torch.ops.visionattn``.

The kernels read the routing table ``idx`` (B, R, topk) directly: a program owns ``BLOCK_M``
query tokens of one query region for one (batch, head) and walks the ``topk * hw`` tokens of its
routed key regions in tiles of ``BLOCK_N``, computing each key's (y, x) map position from
``idx`` (per-row pointers) — the ``topk``-fold gathered K/V copy of the official code is never
built. q, k, v are read in place from their NHWC maps (any strides with a unit channel stride, so
the three chunks of the fused qkv projection need no copy) and the output is written NHWC.

Forward: online softmax (exp2 domain); saves the per-token log-sum-exp ``lse`` (B, H, W, heads).
Backward (no atomics, deterministic):

* ``dq`` kernel: per query tile, the forward's walk again; ``p = exp2(s - lse)``,
  ``ds = p * (dO v^T - delta)`` with ``delta = rowsum(dO * O)``, ``dq = scale * ds k``;
* ``dk``/``dv`` kernel: per key tile of one key region, the inverted routing table (which query
  regions routed to it, built with a sort) gives the query tokens to walk;
  ``dv = p^T dO``, ``dk = scale * ds^T q``.

fp32 inputs use IEEE fp32 dots unless ``torch.backends.cuda.matmul.allow_tf32`` is set; fp16/bf16
dots accumulate in fp32.
"""
from typing import Tuple

import torch

from ._triton import interpreting, tl, triton, unit_last_stride

LOG2E = 1.4426950408889634

if triton is not None:

    @triton.jit
    def _token_offsets(bb, region, tok, n_win, h, w, s_b, s_h, s_w):
        """Element offsets of token ``tok`` (raster order inside the region) of ``region`` in a
        (B, H, W, ...) map with strides s_b, s_h, s_w."""
        y = (region // n_win) * h + tok // w
        x = (region % n_win) * w + tok % w
        return bb * s_b + y.to(tl.int64) * s_h + x.to(tl.int64) * s_w

    @triton.jit
    def _tile_tokens(pid, hw, R, BLOCK: tl.constexpr):
        """The BLOCK rows of program ``pid``: regions larger than BLOCK are split into chunks, smaller
        ones packed ``BLOCK // hw`` to a program. Returns (first region, regions in the tile, row's slot
        (region - first), row's token inside its region, row valid)."""
        per = tl.maximum(BLOCK // hw, 1)
        chunks = tl.cdiv(hw, BLOCK)
        first = (pid // chunks) * per
        r = tl.arange(0, BLOCK)
        slot = r // hw
        tok = (pid % chunks) * BLOCK + r % hw
        n_slots = tl.minimum(per, R - first)
        return first, n_slots, slot, tok, (slot < n_slots) & (tok < hw)

    @triton.jit
    def _bra_fwd_kernel(Q, K, V, O, LSE, IDX,
                        sq_b, sq_h, sq_w, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, so_b, so_h, so_w,
                        sl_b, sl_h, sl_w,
                        n_win, h, w, topk, heads, qk_scale,
                        D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
        hw = h * w
        R = n_win * n_win
        bb = (tl.program_id(1) // heads).to(tl.int64)
        head = tl.program_id(1) % heads
        first, n_slots, slot, tq, row_ok = _tile_tokens(tl.program_id(0), hw, R, BLOCK_M)
        region = first + slot
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        q = tl.load(Q + _token_offsets(bb, region, tq, n_win, h, w, sq_b, sq_h, sq_w)[:, None] + head * D
                    + offs_d[None, :], mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)

        # Finite start: rows of other slots see only -inf logits in a tile and must stay at p = 0.
        m_i = tl.full([BLOCK_M], -1e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        n_keys = topk * hw
        for j in range(0, n_slots):  # each query region of the tile, with its own routed keys
            idx_row = IDX + (bb * R + first + j) * topk
            for start in range(0, n_keys, BLOCK_N):
                tk = start + tl.arange(0, BLOCK_N)
                col_ok = tk < n_keys
                key_region = tl.load(idx_row + tk // hw, mask=col_ok, other=0)
                k = tl.load(K + _token_offsets(bb, key_region, tk % hw, n_win, h, w, sk_b, sk_h, sk_w)[None, :]
                            + head * D + offs_d[:, None], mask=col_ok[None, :] & (offs_d[:, None] < D),
                            other=0.0)  # (BLOCK_D, BLOCK_N)
                v = tl.load(V + _token_offsets(bb, key_region, tk % hw, n_win, h, w, sv_b, sv_h, sv_w)[:, None]
                            + head * DV + offs_dv[None, :], mask=col_ok[:, None] & (offs_dv[None, :] < DV),
                            other=0.0)  # (BLOCK_N, BLOCK_DV)
                s = tl.dot(q, k, input_precision=PRECISION) * qk_scale  # log2 domain
                s = tl.where(col_ok[None, :] & (slot[:, None] == j), s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
                m_i = m_new

        l_i = tl.where(row_ok, l_i, 1.0)  # padding rows of a tile saw no key
        acc = acc / l_i[:, None]
        o_off = _token_offsets(bb, region, tq, n_win, h, w, so_b, so_h, so_w)
        tl.store(O + o_off[:, None] + head * DV + offs_dv[None, :], acc.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & (offs_dv[None, :] < DV))
        tl.store(LSE + _token_offsets(bb, region, tq, n_win, h, w, sl_b, sl_h, sl_w) + head,
                 m_i + tl.log2(l_i), mask=row_ok)

    @triton.jit
    def _bra_bwd_dq_kernel(Q, K, V, O, DO, DQ, LSE, DELTA, IDX,
                           sq_b, sq_h, sq_w, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, sd_b, sd_h, sd_w,
                           sl_b, sl_h, sl_w, sg_b, sg_h, sg_w,
                           n_win, h, w, topk, heads, qk_scale, scale,
                           D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
        """dq of one query tile, and delta = rowsum(dO * O) (stored like lse) for the dk/dv kernel.
        O and DO are contiguous (strides sd_*); DQ is contiguous like q (strides sg_*)."""
        hw = h * w
        R = n_win * n_win
        bb = (tl.program_id(1) // heads).to(tl.int64)
        head = tl.program_id(1) % heads
        first, n_slots, slot, tq, row_ok = _tile_tokens(tl.program_id(0), hw, R, BLOCK_M)
        region = first + slot
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        q = tl.load(Q + _token_offsets(bb, region, tq, n_win, h, w, sq_b, sq_h, sq_w)[:, None] + head * D
                    + offs_d[None, :], mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
        do_off = _token_offsets(bb, region, tq, n_win, h, w, sd_b, sd_h, sd_w)[:, None] + head * DV + offs_dv[None, :]
        do_mask = row_ok[:, None] & (offs_dv[None, :] < DV)
        do = tl.load(DO + do_off, mask=do_mask, other=0.0)
        o = tl.load(O + do_off, mask=do_mask, other=0.0)
        l_off = _token_offsets(bb, region, tq, n_win, h, w, sl_b, sl_h, sl_w) + head
        lse = tl.load(LSE + l_off, mask=row_ok, other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        tl.store(DELTA + l_off, delta, mask=row_ok)

        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        n_keys = topk * hw
        for j in range(0, n_slots):
            idx_row = IDX + (bb * R + first + j) * topk
            for start in range(0, n_keys, BLOCK_N):
                tk = start + tl.arange(0, BLOCK_N)
                col_ok = tk < n_keys
                key_region = tl.load(idx_row + tk // hw, mask=col_ok, other=0)
                k = tl.load(K + _token_offsets(bb, key_region, tk % hw, n_win, h, w, sk_b, sk_h, sk_w)[:, None]
                            + head * D + offs_d[None, :], mask=col_ok[:, None] & (offs_d[None, :] < D),
                            other=0.0)  # (BLOCK_N, BLOCK_D)
                vt = tl.load(V + _token_offsets(bb, key_region, tk % hw, n_win, h, w, sv_b, sv_h, sv_w)[None, :]
                             + head * DV + offs_dv[:, None], mask=col_ok[None, :] & (offs_dv[:, None] < DV),
                             other=0.0)  # (BLOCK_DV, BLOCK_N)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
                p = tl.where(col_ok[None, :] & (slot[:, None] == j), tl.exp2(s - lse[:, None]), 0.0)
                dp = tl.dot(do, vt, input_precision=PRECISION)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)

        dq_off = _token_offsets(bb, region, tq, n_win, h, w, sg_b, sg_h, sg_w)
        tl.store(DQ + dq_off[:, None] + head * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
                 mask=row_ok[:, None] & (offs_d[None, :] < D))

    @triton.jit
    def _bra_bwd_dkdv_kernel(Q, K, V, DO, DK, DV_, LSE, DELTA, INV, COUNT,
                             sq_b, sq_h, sq_w, sk_b, sk_h, sk_w, sv_b, sv_h, sv_w, sd_b, sd_h, sd_w,
                             sl_b, sl_h, sl_w, sg_b, sg_h, sg_w,
                             n_win, h, w, heads, qk_scale, scale,
                             D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
        """dk, dv of one key tile (BLOCK_N tokens of one or more key regions), walking for each key region
        the query regions that routed to it (INV, COUNT)."""
        hw = h * w
        R = n_win * n_win
        bb = (tl.program_id(1) // heads).to(tl.int64)
        head = tl.program_id(1) % heads
        first, n_slots, slot, tk, col_ok = _tile_tokens(tl.program_id(0), hw, R, BLOCK_N)
        region = first + slot
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        kt = tl.load(K + _token_offsets(bb, region, tk, n_win, h, w, sk_b, sk_h, sk_w)[None, :] + head * D
                     + offs_d[:, None], mask=col_ok[None, :] & (offs_d[:, None] < D), other=0.0)  # (BLOCK_D, BLOCK_N)
        vt = tl.load(V + _token_offsets(bb, region, tk, n_win, h, w, sv_b, sv_h, sv_w)[None, :] + head * DV
                     + offs_dv[:, None], mask=col_ok[None, :] & (offs_dv[:, None] < DV), other=0.0)

        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
        for j in range(0, n_slots):  # each key region of the tile, with the queries routed to it
            inv_row = INV + (bb * R + first + j) * R
            n_queries = tl.load(COUNT + bb * R + first + j) * hw
            for start in range(0, n_queries, BLOCK_M):
                tq = start + tl.arange(0, BLOCK_M)
                row_ok = tq < n_queries
                query_region = tl.load(inv_row + tq // hw, mask=row_ok, other=0)
                q = tl.load(Q + _token_offsets(bb, query_region, tq % hw, n_win, h, w, sq_b, sq_h, sq_w)[:, None]
                            + head * D + offs_d[None, :], mask=row_ok[:, None] & (offs_d[None, :] < D),
                            other=0.0)  # (BLOCK_M, BLOCK_D)
                do = tl.load(DO + _token_offsets(bb, query_region, tq % hw, n_win, h, w, sd_b, sd_h, sd_w)[:, None]
                             + head * DV + offs_dv[None, :], mask=row_ok[:, None] & (offs_dv[None, :] < DV),
                             other=0.0)  # (BLOCK_M, BLOCK_DV)
                l_off = _token_offsets(bb, query_region, tq % hw, n_win, h, w, sl_b, sl_h, sl_w) + head
                lse = tl.load(LSE + l_off, mask=row_ok, other=float("inf"))  # inf: padded rows get p = 0
                delta = tl.load(DELTA + l_off, mask=row_ok, other=0.0)
                s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
                p = tl.where(slot[None, :] == j, tl.exp2(s - lse[:, None]), 0.0)
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
                dp = tl.dot(do, vt, input_precision=PRECISION)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

        # DK is contiguous like q (strides sg_*), DV_ like the contiguous grad_out (strides sd_*).
        dk_off = _token_offsets(bb, region, tk, n_win, h, w, sg_b, sg_h, sg_w)
        tl.store(DK + dk_off[:, None] + head * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
                 mask=col_ok[:, None] & (offs_d[None, :] < D))
        dv_off = _token_offsets(bb, region, tk, n_win, h, w, sd_b, sd_h, sd_w)
        tl.store(DV_ + dv_off[:, None] + head * DV + offs_dv[None, :], dv.to(DV_.dtype.element_ty),
                 mask=col_ok[:, None] & (offs_dv[None, :] < DV))

    @triton.jit
    def _bra_invert_kernel(IDX, INV, COUNT, regions, topk, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
        """For key region ``program_id(0)`` of batch ``program_id(1)``: the query regions whose routing
        row (IDX, (B, R, topk)) holds it, in increasing order, into INV (B, R, R); their number into COUNT."""
        key_region = tl.program_id(0)
        bb = tl.program_id(1).to(tl.int64)
        rows = tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_K)
        table = tl.load(IDX + (bb * regions + rows[:, None]) * topk + cols[None, :],
                        mask=(rows[:, None] < regions) & (cols[None, :] < topk), other=-1)
        hit = tl.max((table == key_region).to(tl.int32), 1)  # (BLOCK_R,) query region routed here
        slot = tl.cumsum(hit, 0) - hit
        row_base = (bb * regions + key_region) * regions
        tl.store(INV + row_base + slot, rows, mask=hit > 0)
        tl.store(COUNT + bb * regions + key_region, tl.sum(hit, 0))

    def _configs(pairs):
        """Tile configs the autotuner tries per (region size, topk, head dim, dtype); one under the
        CPU interpreter (tests)."""
        if interpreting():
            return [triton.Config(dict(BLOCK_M=16, BLOCK_N=64))]
        return [triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=nw, num_stages=ns) for m, n, nw, ns in pairs]

    # Forward / dq: BLOCK_M query rows (one region chunk, or several small regions), BLOCK_N key tiles.
    _Q_TILES = _configs([(16, 64, 2, 2), (16, 64, 4, 2), (32, 64, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3),
                         (64, 32, 4, 2)])
    # dk/dv: BLOCK_N key rows (one region chunk or several), BLOCK_M query tiles.
    _KV_TILES = _configs([(64, 16, 2, 2), (64, 16, 4, 2), (64, 32, 4, 2), (64, 64, 4, 2), (32, 64, 4, 2),
                          (64, 64, 4, 3)])
    _KEY = ["n_win", "h", "w", "D", "DV", "PRECISION"]
    _bra_fwd_kernel = triton.autotune(_Q_TILES, key=_KEY + ["topk"])(_bra_fwd_kernel)
    _bra_bwd_dq_kernel = triton.autotune(_Q_TILES, key=_KEY + ["topk"])(_bra_bwd_dq_kernel)
    _bra_bwd_dkdv_kernel = triton.autotune(_KV_TILES, key=_KEY)(_bra_bwd_dkdv_kernel)


def _dims(q, v, heads):
    """Head widths and their padded tiles, and the dot precision: fp32 follows torch's matmul setting
    (IEEE by default), the flag is ignored for fp16/bf16."""
    d, dv = q.shape[-1] // heads, v.shape[-1] // heads
    precision = "ieee" if q.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else "tf32"
    return dict(D=d, DV=dv, BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_DV=max(16, triton.next_power_of_2(dv)),
                PRECISION=precision)


def _grid(regions: int, hw: int, batch_heads: int, block: str):
    """Programs: tiles of ``meta[block]`` tokens, several small regions to a tile (see _tile_tokens)."""
    def grid(meta):
        per = max(meta[block] // hw, 1)
        return triton.cdiv(regions, per) * triton.cdiv(hw, meta[block]), batch_heads
    return grid


def _forward(q, k, v, idx, n_win: int, heads: int, scale: float):
    q, k, v = (unit_last_stride(t) for t in (q, k, v))
    b, height, width, _ = q.shape
    h, w = height // n_win, width // n_win
    out = torch.empty(b, height, width, v.shape[-1], device=q.device, dtype=v.dtype)
    lse = torch.empty(b, height, width, heads, device=q.device, dtype=torch.float32)
    _bra_fwd_kernel[_grid(n_win * n_win, h * w, b * heads, "BLOCK_M")](
        q, k, v, out, lse, idx,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *lse.stride()[:3],
        n_win, h, w, idx.shape[-1], heads, scale * LOG2E, **_dims(q, v, heads))
    return out, lse


def _inverted_routing(idx: torch.Tensor, regions: int):
    """idx (B, R, topk) -> for each key region, the query regions routed to it: inv (B, R, R) with
    the first ``count`` entries valid, and count (B, R), both int32."""
    b, _, topk = idx.shape
    inv = torch.empty(b, regions, regions, device=idx.device, dtype=torch.int32)
    count = torch.empty(b, regions, device=idx.device, dtype=torch.int32)
    _bra_invert_kernel[(regions, b)](idx, inv, count, regions, topk, BLOCK_R=triton.next_power_of_2(regions),
                                     BLOCK_K=triton.next_power_of_2(topk))
    return inv, count


def _backward(q, k, v, idx, out, lse, grad_out, n_win: int, heads: int, scale: float):
    q, k, v = (unit_last_stride(t) for t in (q, k, v))
    grad_out, out = grad_out.contiguous(), out.contiguous()
    b, height, width, c = q.shape
    cv = v.shape[-1]
    h, w = height // n_win, width // n_win
    delta = torch.empty_like(lse)  # rowsum(dO * O) per token and head, written by the dq kernel
    dq = torch.empty(b, height, width, c, device=q.device, dtype=q.dtype)
    dk = torch.empty_like(dq)
    dv = torch.empty(b, height, width, cv, device=q.device, dtype=v.dtype)
    dims = _dims(q, v, heads)
    regions = n_win * n_win
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *grad_out.stride()[:3], *lse.stride()[:3],
               *dq.stride()[:3])
    _bra_bwd_dq_kernel[_grid(regions, h * w, b * heads, "BLOCK_M")](
        q, k, v, out, grad_out, dq, lse, delta, idx, *strides,
        n_win, h, w, idx.shape[-1], heads, scale * LOG2E, scale, **dims)
    inv, count = _inverted_routing(idx, regions)
    _bra_bwd_dkdv_kernel[_grid(regions, h * w, b * heads, "BLOCK_N")](
        q, k, v, grad_out, dk, dv, lse, delta, inv, count, *strides,
        n_win, h, w, heads, scale * LOG2E, scale, **dims)
    return dq, dk, dv


if triton is not None:

    @torch.library.custom_op("visionattn::bilevel_routing_attention_triton", mutates_args=())
    def bilevel_routing_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                                         n_win: int, num_heads: int, scale: float
                                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        """q, k (B, H, W, C), v (B, H, W, Cv) with unit channel stride; idx (B, R, topk) routing (contiguous).
        Returns out (B, H, W, Cv) contiguous in v's dtype and lse (B, H, W, num_heads) fp32 (log2 domain)."""
        return _forward(q, k, v, idx, n_win, num_heads, scale)

    @bilevel_routing_attention_triton.register_fake
    def _(q, k, v, idx, n_win, num_heads, scale):
        b, height, width, _ = q.shape
        return (v.new_empty(b, height, width, v.shape[-1]),
                q.new_empty(b, height, width, num_heads, dtype=torch.float32))

    @torch.library.custom_op("visionattn::bilevel_routing_attention_triton_backward", mutates_args=())
    def bilevel_routing_attention_triton_backward(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, grad_out: torch.Tensor, n_win: int, num_heads: int, scale: float
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _backward(q, k, v, idx, out, lse, grad_out, n_win, num_heads, scale)

    @bilevel_routing_attention_triton_backward.register_fake
    def _(q, k, v, idx, out, lse, grad_out, n_win, num_heads, scale):
        return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape))

    def _setup_context(ctx, inputs, output):
        q, k, v, idx, n_win, num_heads, scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, idx, out, lse)
        ctx.args = (n_win, num_heads, scale)

    def _autograd_backward(ctx, grad_out, grad_lse):
        q, k, v, idx, out, lse = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        dq, dk, dv = torch.ops.visionattn.bilevel_routing_attention_triton_backward(
            q, k, v, idx, out, lse, grad_out, *ctx.args)
        return dq, dk, dv, None, None, None, None

    bilevel_routing_attention_triton.register_autograd(_autograd_backward, setup_context=_setup_context)
