"""Triton kernels of scattered linear attention (forward and backward).

Rows (voxels) are sorted by window; window ``m`` owns rows ``offsets[m]:offsets[m+1]``. Each program
works on rows of one window: program ``m < M`` on the first ``CHUNK`` rows of window ``m``, program
``M + j`` on the rows of the block ``[j CHUNK, (j+1) CHUNK)`` that lie past the first ``CHUNK`` rows
of their window (at most one window has such rows in a block: the one holding row ``j CHUNK``,
found by binary search of ``offsets``). So no program handles more than ``CHUNK`` rows, a window
of 10,000 voxels is spread over ~80 programs, and the grid, ``M + cdiv(N, CHUNK)`` programs per
head, needs nothing but ``offsets`` (no host sync, no prefix sums). A program walks its rows in
tiles of ``SUB`` rows, so a window of a few voxels costs one small tile.

Per head, with Q = relu(q), K = relu(k), window w:

* forward ``state``: each program stores its rows' part of KV_w = sum K_i^T v_i (d x d) and
  s_w = sum K_i (d), fp32, in its own slot (slot = program id).
* forward ``apply``: KV_w, s_w = the window's first slot + its overflow slots (only windows longer
  than ``CHUNK`` have any; every program of the window sums them in the same order), then
  o_n = Q_n KV_w / (Q_n . s_w + eps).
* backward ``state`` (z_n = Q_n . s_w + eps recomputed, o the saved output, g = dL/do):
  dnum_n = g_n / z_n, dz_n = -(g_n . o_n) / z_n (= -(g_n . num_n) / z_n^2, without recomputing
  num_n = Q_n KV_w; FlashAttention's trick with its saved output); writes dq_n = (dnum_n KV_w^T + dz_n s_w)
  relu'(q_n) and stores its part of dKV_w = sum Q_n^T dnum_n, ds_w = sum dz_n Q_n in its slot.
* backward ``apply``: dKV_w, ds_w summed like KV_w; dk_n = (v_n dKV_w^T + ds_w) relu'(k_n),
  dv_n = K_n dKV_w.

No atomics and no zero-filled buffers: results are deterministic. Dots: K^T v runs in the input
dtype (fp16/bf16 tensor cores with fp32 accumulation); dots with an fp32 operand (KV, dKV, the
1/z-scaled rows) run in fp32, by kernel (``TILES``): IEEE FMA, except the backward ``apply`` kernel,
which on GPUs with TF32 tensor cores takes three TF32 products per dot (fp32-level error: 2e-7
relative against the float64 reference at 30k voxels; H200, 150k voxels: 191 us against 363 us with
IEEE; in the other kernels it was not faster). Plain TF32 everywhere when
``torch.backends.cuda.matmul.allow_tf32`` is set. Settings from a sweep of rows per program (64, 128),
rows per tile (16, 32), warps (1, 2, 4) and dot precision on an H200, fp32, kernel times at 30k /
150k voxels: 26 / 103 (forward state), 31 / 113 (forward apply), 104 / 415 (backward state), 47 / 191
(backward apply) us.

The op is registered as ``torch.ops.visionattn.scattered_linear_attention_triton`` (fake and autograd
formulas), which ``torch.compile``/``torch.export`` trace as one node. Eager calls go through an
``autograd.Function`` running the same kernels: the custom-op dispatch layers cost about twice
its Python time per forward+backward, a large share of this op at ScatterFormer sizes.
"""
import functools
from typing import Tuple

import torch

from ._triton import interpreting, tl, triton, unit_last_stride

EPS = 1e-6
# Rows per program (bounds the work of one program; shared by the four kernels: it fixes the state
# slots), then per kernel (rows per tile, warps, precision of its fp32 dots: "ieee" FMA or "tf32x3",
# three TF32 tensor-core products per dot with fp32-level error on sm80+). Chosen by a sweep on an
# H200 (module docstring).
CHUNK = 128
TILES = dict(fwd_state=(16, 2, "ieee"), fwd_apply=(16, 2, "ieee"), bwd_state=(16, 2, "ieee"),
             bwd_apply=(16, 2, "tf32x3"))

if triton is not None:

    # Sizes that change with every frame: one compiled kernel for all values.
    _VARYING = ["n_windows", "n_steps"]

    @triton.jit
    def _program_rows(OFFSETS, n_windows, n_steps, CHUNK: tl.constexpr):
        """(window, its start and end, this program's first and end row)."""
        pid = tl.program_id(0)
        if pid < n_windows:
            w = pid
            start = tl.load(OFFSETS + w)
            end = tl.load(OFFSETS + w + 1)
            lo = start
            hi = tl.minimum(end, start + CHUNK)
        else:
            row = (pid - n_windows).to(tl.int64) * CHUNK
            # window of `row`: the largest w with offsets[w] <= row (offsets[w] <= row < offsets[top]
            # throughout, and offsets[M] = N > row; an empty window never satisfies both)
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
        return w, start, end, lo, hi

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
    def _slot_ptrs(STATE, slot, head, heads, D: tl.constexpr, BLOCK_D: tl.constexpr):
        """Pointers and masks of a slot's (D, D) matrix and (D,) vector for ``head`` in the flat state:
        all (slots, h, D, D) matrices, then all (slots, h, D) vectors; slots = programs along axis 0."""
        i = tl.arange(0, BLOCK_D)
        base = (slot * heads + head).to(tl.int64)
        kv_ptr = STATE + base * (D * D) + i[:, None] * D + i[None, :]
        s_ptr = STATE + tl.num_programs(0).to(tl.int64) * heads * (D * D) + base * D + i
        return kv_ptr, (i[:, None] < D) & (i[None, :] < D), s_ptr, i < D

    @triton.jit
    def _put_slot(STATE, head, heads, kv, s, D: tl.constexpr, BLOCK_D: tl.constexpr):
        kv_ptr, kv_mask, s_ptr, s_mask = _slot_ptrs(STATE, tl.program_id(0), head, heads, D, BLOCK_D)
        tl.store(kv_ptr, kv, mask=kv_mask)
        tl.store(s_ptr, s, mask=s_mask)

    @triton.jit
    def _window_state(STATE, w, start, end, n_windows, head, heads, D: tl.constexpr, BLOCK_D: tl.constexpr,
                      CHUNK: tl.constexpr):
        """A window's whole state: its first slot plus, for a window longer than CHUNK, the overflow slots
        of the blocks holding its rows past the first CHUNK ((start + CHUNK) // CHUNK ... (end - 1) // CHUNK)."""
        kv_ptr, kv_mask, s_ptr, s_mask = _slot_ptrs(STATE, w, head, heads, D, BLOCK_D)
        kv = tl.load(kv_ptr, mask=kv_mask, other=0.0)
        s = tl.load(s_ptr, mask=s_mask, other=0.0)
        first = (start + CHUNK) // CHUNK
        last = tl.where(end - start > CHUNK, (end - 1) // CHUNK, first - 1)  # no overflow rows: no slots
        for j in range(first, last + 1):
            kv_ptr, kv_mask, s_ptr, s_mask = _slot_ptrs(STATE, n_windows + j, head, heads, D, BLOCK_D)
            kv += tl.load(kv_ptr, mask=kv_mask, other=0.0)
            s += tl.load(s_ptr, mask=s_mask, other=0.0)
        return kv, s

    @triton.jit(do_not_specialize=_VARYING)
    def _sla_fwd_state_kernel(K, V, OFFSETS, STATE, n_windows, n_steps, heads, sk_n, sk_h, sv_n, sv_h,
                              D: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr,
                              PRECISION: tl.constexpr):
        head = tl.program_id(1)
        w, start, end, lo, hi = _program_rows(OFFSETS, n_windows, n_steps, CHUNK)
        if hi > lo:  # else: an empty window, or a block without overflow rows (its slot is never read)
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
            _put_slot(STATE, head, heads, kv, s, D, BLOCK_D)

    @triton.jit(do_not_specialize=_VARYING)
    def _sla_fwd_apply_kernel(Q, OFFSETS, STATE, O, n_windows, n_steps, heads, sq_n, sq_h,
                              D: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr,
                              EPS: tl.constexpr, PRECISION: tl.constexpr):
        head = tl.program_id(1)
        w, start, end, lo, hi = _program_rows(OFFSETS, n_windows, n_steps, CHUNK)
        if hi > lo:
            kv, s = _window_state(STATE, w, start, end, n_windows, head, heads, D, BLOCK_D, CHUNK)
            for r0 in range(lo, hi, SUB):
                rows = r0 + tl.arange(0, SUB)
                ok = rows < hi
                q = _tile(Q, rows, ok, sq_n, head * sq_h, D, BLOCK_D).to(tl.float32)
                q = tl.maximum(q, 0.0)
                num = tl.dot(q, kv, input_precision=PRECISION)
                z = tl.sum(q * s[None, :], 1) + EPS
                _put(O, rows, ok, heads, head, num / z[:, None], D, BLOCK_D)

    @triton.jit(do_not_specialize=_VARYING)
    def _sla_bwd_state_kernel(Q, G, O, OFFSETS, STATE, DSTATE, DQ, n_windows, n_steps, heads, sq_n, sq_h,
                              D: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr,
                              EPS: tl.constexpr, PRECISION: tl.constexpr):
        """dq, and this program's part of dKV = sum Q^T dnum, ds = sum dz Q. G, O and DQ are contiguous."""
        head = tl.program_id(1)
        w, start, end, lo, hi = _program_rows(OFFSETS, n_windows, n_steps, CHUNK)
        if hi > lo:
            kv, s = _window_state(STATE, w, start, end, n_windows, head, heads, D, BLOCK_D, CHUNK)
            kv_t = tl.trans(kv)
            dkv = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
            ds = tl.zeros([BLOCK_D], dtype=tl.float32)
            for r0 in range(lo, hi, SUB):
                rows = r0 + tl.arange(0, SUB)
                ok = rows < hi
                q_raw = _tile(Q, rows, ok, sq_n, head * sq_h, D, BLOCK_D).to(tl.float32)
                q = tl.maximum(q_raw, 0.0)
                g = _tile(G, rows, ok, heads * D, head * D, D, BLOCK_D).to(tl.float32)
                o = _tile(O, rows, ok, heads * D, head * D, D, BLOCK_D).to(tl.float32)
                z = tl.sum(q * s[None, :], 1) + EPS
                dnum = g / z[:, None]
                dz = -tl.sum(g * o, 1) / z  # -(g . num) / z^2 with num = o z: the saved output spares a dot
                dq = tl.dot(dnum, kv_t, input_precision=PRECISION) + dz[:, None] * s[None, :]
                _put(DQ, rows, ok, heads, head, tl.where(q_raw > 0, dq, 0.0), D, BLOCK_D)  # relu'
                dkv += tl.dot(tl.trans(q), dnum, input_precision=PRECISION)
                ds += tl.sum(q * dz[:, None], 0)
            _put_slot(DSTATE, head, heads, dkv, ds, D, BLOCK_D)

    @triton.jit(do_not_specialize=_VARYING)
    def _sla_bwd_apply_kernel(K, V, OFFSETS, DSTATE, DK, DV, n_windows, n_steps, heads, sk_n, sk_h, sv_n, sv_h,
                              D: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr,
                              PRECISION: tl.constexpr):
        """dk = (v dKV^T + ds) relu'(k), dv = relu(k) dKV. DK and DV are contiguous (N, h, D)."""
        head = tl.program_id(1)
        w, start, end, lo, hi = _program_rows(OFFSETS, n_windows, n_steps, CHUNK)
        if hi > lo:
            dkv, ds = _window_state(DSTATE, w, start, end, n_windows, head, heads, D, BLOCK_D, CHUNK)
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


@functools.lru_cache(maxsize=None)
def _major_capability(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def _precision(wanted: str, device: torch.device) -> str:
    """Precision of a kernel's fp32 dots: its setting, IEEE where three-TF32 products are not available
    (before sm80, the CPU interpreter), plain TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is set."""
    if interpreting():
        return "ieee"
    if torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    if wanted == "tf32x3" and _major_capability(device.index if device.index is not None else
                                                torch.cuda.current_device()) < 8:
        return "ieee"
    return wanted


def _launch(n: int, offsets: torch.Tensor, q: torch.Tensor):
    """Grid (programs, heads), window count, binary-search depth and a kernel name -> compile-time
    settings function."""
    heads, d = q.shape[1:]
    n_windows = offsets.shape[0] - 1
    block_d = max(16, triton.next_power_of_2(d))

    def meta(kernel: str) -> dict:
        sub, warps, precision = TILES[kernel]
        return dict(D=d, BLOCK_D=block_d, CHUNK=CHUNK, SUB=sub, num_warps=warps,
                    PRECISION=_precision(precision, q.device))

    return (n_windows + triton.cdiv(n, CHUNK), heads), n_windows, max(n_windows - 1, 0).bit_length(), meta


def _n_slots(n: int, n_windows: int) -> int:
    return n_windows + (n + CHUNK - 1) // CHUNK


def _forward(q, k, v, offsets):
    """out (N, h, d) and the per-program state slots (flat fp32) for the backward."""
    q, k, v = (unit_last_stride(t) for t in (q, k, v))
    n, heads, d = q.shape
    out = torch.empty(n, heads, d, device=q.device, dtype=q.dtype)
    state = torch.empty(_n_slots(n, offsets.shape[0] - 1) * heads * d * (d + 1), device=q.device,
                        dtype=torch.float32)
    if n == 0:
        return out, state
    grid, n_windows, n_steps, meta = _launch(n, offsets, q)
    _sla_fwd_state_kernel[grid](k, v, offsets, state, n_windows, n_steps, heads,
                                k.stride(0), k.stride(1), v.stride(0), v.stride(1), **meta("fwd_state"))
    _sla_fwd_apply_kernel[grid](q, offsets, state, out, n_windows, n_steps, heads, q.stride(0), q.stride(1),
                                EPS=EPS, **meta("fwd_apply"))
    return out, state


def _backward(q, k, v, offsets, state, out, grad_out):
    q, k, v = (unit_last_stride(t) for t in (q, k, v))
    grad_out = grad_out.contiguous()
    n, heads, d = q.shape
    dq = torch.empty(n, heads, d, device=q.device, dtype=q.dtype)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    if n == 0:
        return dq, dk, dv
    dstate = torch.empty_like(state)
    grid, n_windows, n_steps, meta = _launch(n, offsets, q)
    _sla_bwd_state_kernel[grid](q, grad_out, out, offsets, state, dstate, dq, n_windows, n_steps, heads,
                                q.stride(0), q.stride(1), EPS=EPS, **meta("bwd_state"))
    _sla_bwd_apply_kernel[grid](k, v, offsets, dstate, dk, dv, n_windows, n_steps, heads,
                                k.stride(0), k.stride(1), v.stride(0), v.stride(1), **meta("bwd_apply"))
    return dq, dk, dv


class _SLAFunction(torch.autograd.Function):
    """Eager path: the same kernels as the custom op, without its dispatch layers."""

    @staticmethod
    def forward(ctx, q, k, v, offsets):
        out, state = _forward(q, k, v, offsets)
        ctx.save_for_backward(q, k, v, offsets, state, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        dq, dk, dv = _backward(*ctx.saved_tensors, grad_out)
        return dq, dk, dv, None


if triton is not None:

    @torch.library.custom_op("visionattn::scattered_linear_attention_triton", mutates_args=())
    def scattered_linear_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor
                                          ) -> Tuple[torch.Tensor, torch.Tensor]:
        """q, k, v (N, h, d) of one dtype, rows sorted by window; offsets (M+1,) int64.
        Returns out (N, h, d) contiguous and, for the backward, the state slots (flat fp32)."""
        return _forward(q, k, v, offsets)

    @scattered_linear_attention_triton.register_fake
    def _(q, k, v, offsets):
        n, heads, d = q.shape
        slots = _n_slots(n, offsets.shape[0] - 1)
        return q.new_empty(n, heads, d), q.new_empty(slots * heads * d * (d + 1), dtype=torch.float32)

    @torch.library.custom_op("visionattn::scattered_linear_attention_triton_backward", mutates_args=())
    def scattered_linear_attention_triton_backward(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, state: torch.Tensor,
            out: torch.Tensor, grad_out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _backward(q, k, v, offsets, state, out, grad_out)

    @scattered_linear_attention_triton_backward.register_fake
    def _(q, k, v, offsets, state, out, grad_out):
        return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)

    def _setup_context(ctx, inputs, output):
        q, k, v, offsets = inputs
        out, state = output
        ctx.mark_non_differentiable(state)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, offsets, state, out)

    def _autograd_backward(ctx, grad_out, _grad_state):
        if grad_out is None:
            return None, None, None, None
        dq, dk, dv = torch.ops.visionattn.scattered_linear_attention_triton_backward(*ctx.saved_tensors, grad_out)
        return dq, dk, dv, None

    scattered_linear_attention_triton.register_autograd(_autograd_backward, setup_context=_setup_context)


def scattered_linear_attention_triton_autograd(q, k, v, offsets) -> torch.Tensor:
    """The triton path with autograd: the custom op while torch.compile/export traces, else the Function."""
    if torch.compiler.is_compiling():
        return torch.ops.visionattn.scattered_linear_attention_triton(q, k, v, offsets)[0]
    return _SLAFunction.apply(q, k, v, offsets)
