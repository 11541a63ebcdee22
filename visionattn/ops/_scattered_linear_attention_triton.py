"""Triton kernels of scattered linear attention (forward and backward), as ``torch.ops.visionattn``.

Rows (voxels) are sorted by window; window ``m`` owns rows ``offsets[m]:offsets[m+1]``. Each program
works on one window: program ``m < M`` on the first ``CHUNK`` rows of window ``m``, program ``M + j``
on the rows of row block ``[j CHUNK, (j+1) CHUNK)`` that lie past the first ``CHUNK`` rows of their
window (at most one window has such rows in a block: it started at least ``CHUNK`` rows before).
So a program never handles more than ``CHUNK`` rows, a window of 10,000 voxels is spread over
about 10,000 / ``CHUNK`` programs, and the grid, ``M + cdiv(N, CHUNK)`` programs per head, needs
no window metadata beyond ``offsets`` (no host sync, no prefix sums). A program walks its rows in
tiles of ``SUB`` rows, so a tiny window costs one small tile.

Per head, with Q = relu(q), K = relu(k), window w:

* forward ``state``: KV_w = sum K_i^T v_i (d x d), s_w = sum K_i (d), fp32. A window of at most
  ``CHUNK`` rows is stored by its one program; the pieces of a larger one are added with fp32
  atomics into a zeroed buffer.
* forward ``apply``: o_n = Q_n KV_w / (Q_n . s_w + eps).
* backward ``state`` (z_n = Q_n . s_w + eps, num_n = Q_n KV_w recomputed, g = dL/do):
  dnum_n = g_n / z_n, dz_n = -(g_n . num_n) / z_n^2; writes dq_n = (dnum_n KV_w^T + dz_n s_w)
  relu'(q_n) and accumulates dKV_w = sum Q_n^T dnum_n, ds_w = sum dz_n Q_n (stored or added like KV_w).
* backward ``apply``: dk_n = (v_n dKV_w^T + ds_w) relu'(k_n), dv_n = K_n dKV_w.

Dots: K^T v runs in the input dtype (fp16/bf16 tensor cores with fp32 accumulation); dots with an
fp32 operand (KV, dKV, the 1/z-scaled rows) run in fp32: IEEE by default (``FP32_DOT``), TF32 when
``torch.backends.cuda.matmul.allow_tf32`` is set. Atomics make the last bits of the results of
windows longer than ``CHUNK`` run-to-run nondeterministic.
"""
from typing import Tuple

import torch

from ._match_attention_triton import interpreting, triton

EPS = 1e-6
# Rows per program (bounds the work of one program), rows per tile, warps, precision of fp32 dots.
CHUNK = 128
SUB = 16
NUM_WARPS = 4
FP32_DOT = "ieee"

if triton is not None:
    import triton.language as tl

    # Sizes that change with every frame: one compiled kernel for all values.
    _VARYING = ["n_windows", "n_steps"]

    @triton.jit
    def _program_rows(OFFSETS, n_windows, n_steps, CHUNK: tl.constexpr):
        """(window, first row, end row, whether the window fits one program) of this program."""
        pid = tl.program_id(0)
        if pid < n_windows:
            w = pid
            start = tl.load(OFFSETS + w)
            end = tl.load(OFFSETS + w + 1)
            lo = start
            hi = tl.minimum(end, start + CHUNK)
        else:
            row = (pid - n_windows).to(tl.int64) * CHUNK
            # window of `row`: the largest w with offsets[w] <= row (offsets[lo] <= row < offsets[hi]
            # throughout; an empty window never satisfies both)
            w = 0
            top = n_windows
            for _ in range(n_steps):
                mid = (w + top) // 2
                right = tl.load(OFFSETS + mid) <= row
                w = tl.where(right, mid, w)
                top = tl.where(right, top, mid)
            start = tl.load(OFFSETS + w)
            end = tl.load(OFFSETS + w + 1)
            lo = tl.maximum(row, start + CHUNK)
            hi = tl.minimum(row + CHUNK, end)
        return w, lo, hi, end - start <= CHUNK

    @triton.jit
    def _tile(ptr, rows, row_ok, s_n, head_off, D: tl.constexpr, BLOCK_D: tl.constexpr):
        """(SUB, BLOCK_D) tile of a (N, h, D) tensor with unit last stride; zeros outside."""
        cols = tl.arange(0, BLOCK_D)
        return tl.load(ptr + rows[:, None] * s_n + head_off + cols[None, :],
                       mask=row_ok[:, None] & (cols[None, :] < D), other=0.0)

    @triton.jit
    def _put(ptr, rows, row_ok, heads, head, x, D: tl.constexpr, BLOCK_D: tl.constexpr):
        """Store a (SUB, BLOCK_D) tile into a contiguous (N, h, D) tensor."""
        cols = tl.arange(0, BLOCK_D)
        tl.store(ptr + rows[:, None] * (heads * D) + head * D + cols[None, :], x.to(ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (cols[None, :] < D))

    @triton.jit
    def _state_ptrs(KV, S, w, head, heads, D: tl.constexpr, BLOCK_D: tl.constexpr):
        """Pointers and masks of window ``w``'s (D, D) matrix and (D,) vector for ``head``."""
        i = tl.arange(0, BLOCK_D)
        base = (w * heads + head).to(tl.int64)
        kv_ptr = KV + base * (D * D) + i[:, None] * D + i[None, :]
        s_ptr = S + base * D + i
        return kv_ptr, (i[:, None] < D) & (i[None, :] < D), s_ptr, i < D

    @triton.jit
    def _put_state(KV, S, w, head, heads, whole, kv, s, D: tl.constexpr, BLOCK_D: tl.constexpr):
        """Store a window's state when one program holds the whole window, else add this piece."""
        kv_ptr, kv_mask, s_ptr, s_mask = _state_ptrs(KV, S, w, head, heads, D, BLOCK_D)
        if whole:
            tl.store(kv_ptr, kv, mask=kv_mask)
            tl.store(s_ptr, s, mask=s_mask)
        else:
            tl.atomic_add(kv_ptr, kv, mask=kv_mask, sem="relaxed")
            tl.atomic_add(s_ptr, s, mask=s_mask, sem="relaxed")

    @triton.jit
    def _get_state(KV, S, w, head, heads, D: tl.constexpr, BLOCK_D: tl.constexpr):
        kv_ptr, kv_mask, s_ptr, s_mask = _state_ptrs(KV, S, w, head, heads, D, BLOCK_D)
        return tl.load(kv_ptr, mask=kv_mask, other=0.0), tl.load(s_ptr, mask=s_mask, other=0.0)

    @triton.jit(do_not_specialize=_VARYING)
    def _sla_fwd_state_kernel(K, V, OFFSETS, KV, S, n_windows, n_steps, heads, sk_n, sk_h, sv_n, sv_h,
                              D: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr,
                              PRECISION: tl.constexpr):
        head = tl.program_id(1)
        w, lo, hi, whole = _program_rows(OFFSETS, n_windows, n_steps, CHUNK)
        if hi > lo:  # else: an empty window, or no overflow rows in this block
            kv = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
            s = tl.zeros([BLOCK_D], dtype=tl.float32)
            for r0 in range(lo, hi, SUB):
                rows = r0 + tl.arange(0, SUB)
                ok = rows < hi
                k = _tile(K, rows, ok, sk_n, head * sk_h, D, BLOCK_D)
                k = tl.where(k > 0, k, tl.zeros_like(k))  # relu feature map
                v = _tile(V, rows, ok, sv_n, head * sv_h, D, BLOCK_D)
                kv += tl.dot(tl.trans(k), v, input_precision=PRECISION)
                s += tl.sum(k.to(tl.float32), 0)
            _put_state(KV, S, w, head, heads, whole, kv, s, D, BLOCK_D)

    @triton.jit(do_not_specialize=_VARYING)
    def _sla_fwd_apply_kernel(Q, OFFSETS, KV, S, O, n_windows, n_steps, heads, sq_n, sq_h,
                              D: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr,
                              EPS: tl.constexpr, PRECISION: tl.constexpr):
        head = tl.program_id(1)
        w, lo, hi, whole = _program_rows(OFFSETS, n_windows, n_steps, CHUNK)
        if hi > lo:
            kv, s = _get_state(KV, S, w, head, heads, D, BLOCK_D)
            for r0 in range(lo, hi, SUB):
                rows = r0 + tl.arange(0, SUB)
                ok = rows < hi
                q = _tile(Q, rows, ok, sq_n, head * sq_h, D, BLOCK_D).to(tl.float32)
                q = tl.maximum(q, 0.0)
                num = tl.dot(q, kv, input_precision=PRECISION)
                z = tl.sum(q * s[None, :], 1) + EPS
                _put(O, rows, ok, heads, head, num / z[:, None], D, BLOCK_D)

    @triton.jit(do_not_specialize=_VARYING)
    def _sla_bwd_state_kernel(Q, G, OFFSETS, KV, S, DKV, DS, DQ, n_windows, n_steps, heads, sq_n, sq_h,
                              D: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr,
                              EPS: tl.constexpr, PRECISION: tl.constexpr):
        """dq, and per window dKV = sum Q^T dnum, ds = sum dz Q. G and DQ are contiguous (N, h, D)."""
        head = tl.program_id(1)
        w, lo, hi, whole = _program_rows(OFFSETS, n_windows, n_steps, CHUNK)
        if hi > lo:
            kv, s = _get_state(KV, S, w, head, heads, D, BLOCK_D)
            kv_t = tl.trans(kv)
            dkv = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
            ds = tl.zeros([BLOCK_D], dtype=tl.float32)
            for r0 in range(lo, hi, SUB):
                rows = r0 + tl.arange(0, SUB)
                ok = rows < hi
                q_raw = _tile(Q, rows, ok, sq_n, head * sq_h, D, BLOCK_D).to(tl.float32)
                q = tl.maximum(q_raw, 0.0)
                g = _tile(G, rows, ok, heads * D, head * D, D, BLOCK_D).to(tl.float32)
                num = tl.dot(q, kv, input_precision=PRECISION)  # recomputed: only the state is saved
                z = tl.sum(q * s[None, :], 1) + EPS
                dnum = g / z[:, None]
                dz = -tl.sum(g * num, 1) / (z * z)
                dq = tl.dot(dnum, kv_t, input_precision=PRECISION) + dz[:, None] * s[None, :]
                _put(DQ, rows, ok, heads, head, tl.where(q_raw > 0, dq, 0.0), D, BLOCK_D)  # relu'
                dkv += tl.dot(tl.trans(q), dnum, input_precision=PRECISION)
                ds += tl.sum(q * dz[:, None], 0)
            _put_state(DKV, DS, w, head, heads, whole, dkv, ds, D, BLOCK_D)

    @triton.jit(do_not_specialize=_VARYING)
    def _sla_bwd_apply_kernel(K, V, OFFSETS, DKV, DS, DK, DV, n_windows, n_steps, heads, sk_n, sk_h, sv_n, sv_h,
                              D: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr,
                              PRECISION: tl.constexpr):
        """dk = (v dKV^T + ds) relu'(k), dv = relu(k) dKV. DK and DV are contiguous (N, h, D)."""
        head = tl.program_id(1)
        w, lo, hi, whole = _program_rows(OFFSETS, n_windows, n_steps, CHUNK)
        if hi > lo:
            dkv, ds = _get_state(DKV, DS, w, head, heads, D, BLOCK_D)
            dkv_t = tl.trans(dkv)
            for r0 in range(lo, hi, SUB):
                rows = r0 + tl.arange(0, SUB)
                ok = rows < hi
                k_raw = _tile(K, rows, ok, sk_n, head * sk_h, D, BLOCK_D).to(tl.float32)
                k = tl.maximum(k_raw, 0.0)
                v = _tile(V, rows, ok, sv_n, head * sv_h, D, BLOCK_D).to(tl.float32)
                dk = tl.dot(v, dkv_t, input_precision=PRECISION) + ds[None, :]
                _put(DK, rows, ok, heads, head, tl.where(k_raw > 0, dk, 0.0), D, BLOCK_D)  # relu'
                _put(DV, rows, ok, heads, head, tl.dot(k, dkv, input_precision=PRECISION), D, BLOCK_D)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _meta(q: torch.Tensor) -> dict:
    d = q.shape[-1]
    precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else FP32_DOT
    if interpreting():
        precision = "ieee"
    return dict(D=d, BLOCK_D=max(16, triton.next_power_of_2(d)), CHUNK=CHUNK, SUB=SUB, PRECISION=precision,
                num_warps=NUM_WARPS)


def _grid(n: int, offsets: torch.Tensor, heads: int):
    """Programs: one per window (its first CHUNK rows) + one per CHUNK-row block (overflow rows); and
    the binary-search depth over the M windows."""
    n_windows = offsets.shape[0] - 1
    return (n_windows + triton.cdiv(n, CHUNK), heads), n_windows, max(n_windows - 1, 0).bit_length()


def _state_views(state: torch.Tensor, heads: int, d: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (M, h, d, d) matrices and (M, h, d) vectors held in one flat fp32 buffer (one memset)."""
    n_windows = state.shape[0] // (heads * d * (d + 1))
    split = n_windows * heads * d * d
    return state[:split].view(n_windows, heads, d, d), state[split:].view(n_windows, heads, d)


def _new_state(n_windows: int, heads: int, d: int, device) -> torch.Tensor:
    return torch.zeros(n_windows * heads * d * (d + 1), device=device, dtype=torch.float32)


def _forward(q, k, v, offsets):
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    n, heads, d = q.shape
    out = torch.empty(n, heads, d, device=q.device, dtype=q.dtype)
    state = _new_state(offsets.shape[0] - 1, heads, d, q.device)
    if n == 0:
        return out, state
    kv, s = _state_views(state, heads, d)
    meta = _meta(q)
    grid, n_windows, n_steps = _grid(n, offsets, heads)
    _sla_fwd_state_kernel[grid](k, v, offsets, kv, s, n_windows, n_steps, heads,
                                k.stride(0), k.stride(1), v.stride(0), v.stride(1), **meta)
    _sla_fwd_apply_kernel[grid](q, offsets, kv, s, out, n_windows, n_steps, heads, q.stride(0), q.stride(1),
                                EPS=EPS, **meta)
    return out, state


def _backward(q, k, v, offsets, state, grad_out):
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    grad_out = grad_out.contiguous()
    n, heads, d = q.shape
    dq = torch.empty(n, heads, d, device=q.device, dtype=q.dtype)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    if n == 0:
        return dq, dk, dv
    kv, s = _state_views(state, heads, d)
    dkv, ds = _state_views(_new_state(kv.shape[0], heads, d, q.device), heads, d)
    meta = _meta(q)
    grid, n_windows, n_steps = _grid(n, offsets, heads)
    _sla_bwd_state_kernel[grid](q, grad_out, offsets, kv, s, dkv, ds, dq, n_windows, n_steps, heads,
                                q.stride(0), q.stride(1), EPS=EPS, **meta)
    _sla_bwd_apply_kernel[grid](k, v, offsets, dkv, ds, dk, dv, n_windows, n_steps, heads,
                                k.stride(0), k.stride(1), v.stride(0), v.stride(1), **meta)
    return dq, dk, dv


if triton is not None:

    @torch.library.custom_op("visionattn::scattered_linear_attention_triton", mutates_args=())
    def scattered_linear_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor
                                          ) -> Tuple[torch.Tensor, torch.Tensor]:
        """q, k, v (N, h, d) of one dtype, rows sorted by window; offsets (M+1,) int64.
        Returns out (N, h, d) contiguous and, for the backward, the window state: KV (M, h, d, d) then
        s (M, h, d), flat fp32."""
        return _forward(q, k, v, offsets)

    @scattered_linear_attention_triton.register_fake
    def _(q, k, v, offsets):
        n, heads, d = q.shape
        m = offsets.shape[0] - 1
        return q.new_empty(n, heads, d), q.new_empty(m * heads * d * (d + 1), dtype=torch.float32)

    @torch.library.custom_op("visionattn::scattered_linear_attention_triton_backward", mutates_args=())
    def scattered_linear_attention_triton_backward(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, state: torch.Tensor,
            grad_out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _backward(q, k, v, offsets, state, grad_out)

    @scattered_linear_attention_triton_backward.register_fake
    def _(q, k, v, offsets, state, grad_out):
        return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)

    def _setup_context(ctx, inputs, output):
        q, k, v, offsets = inputs
        _, state = output
        ctx.mark_non_differentiable(state)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, offsets, state)

    def _autograd_backward(ctx, grad_out, _grad_state):
        if grad_out is None:
            return None, None, None, None
        dq, dk, dv = torch.ops.visionattn.scattered_linear_attention_triton_backward(*ctx.saved_tensors, grad_out)
        return dq, dk, dv, None

    scattered_linear_attention_triton.register_autograd(_autograd_backward, setup_context=_setup_context)


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton path can run these inputs (CUDA, or the CPU interpreter for tests)."""
    on_device = q.is_cuda or (interpreting() and q.device.type == "cpu")
    return (triton is not None and on_device and q.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and k.dtype == q.dtype and v.dtype == q.dtype and q.shape[-1] <= 128)
