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
  ``visionattn::bi_wkv`` (:mod:`._wkv_triton`). Every position keeps its own log-scale, so it is
  exact for any ``w``/``k`` range (no 1e-6 denominator epsilon, no chunk-boundary approximation).
  CUDA default (CPU under ``TRITON_INTERPRET=1``).
"""
from typing import Optional, Tuple

import torch

from ._checks import check_int, check_params, check_tensors
from . import _wkv_triton
from ._triton import FLOAT_DTYPES, can_run, launch_directly
from ._wkv_triton import NEG, compute_dtype  # importing it registers the custom ops
from .dispatch import pick

IMPLS = ("triton", "reference")


# --------------------------------------------------------------------------------------------
# Reference (exact, O(T*C), readable)
# --------------------------------------------------------------------------------------------

def _exclusive_logcumsumexp(z: torch.Tensor) -> torch.Tensor:
    """log sum_{i<t} exp(z_i) along dim 1 of (B, T, C); NEG where the sum is empty."""
    shifted = torch.cat([torch.full_like(z[:, :1], NEG), z[:, :-1]], dim=1)
    return torch.logcumsumexp(shifted, dim=1)


def _signed_logs(v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(log max(v, 0), log max(-v, 0)) with NEG for zero parts; gradients stay finite."""
    safe = torch.where(v == 0, torch.ones_like(v), v.abs()).log()
    neg = torch.full_like(v, NEG)
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
# Public ops
# --------------------------------------------------------------------------------------------

def _triton_supports(k: torch.Tensor) -> bool:
    """Whether the Triton kernels can run these inputs (CUDA, or the CPU interpreter for tests)."""
    return can_run(k, dtypes=FLOAT_DTYPES + (torch.float64,))


def _to_columns(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, H*W, C) tokens in (h w) order -> the same tokens in (w h) order (a copy)."""
    B, T, C = x.shape
    return x.view(B, H, W, C).transpose(1, 2).reshape(B, T, C)


def _from_columns(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`_to_columns`."""
    B, T, C = x.shape
    return x.view(B, W, H, C).transpose(1, 2).reshape(B, T, C)


def _check_columns(op: str, columns, T: int) -> Tuple[int, int]:
    if not isinstance(columns, (tuple, list)) or len(columns) != 2:
        raise ValueError(f"{op}: columns/hw must be (H, W), got {columns!r}")
    if torch.jit.is_tracing():  # torch.jit.trace hands sizes over as 0-dim tensors; a trace is of one size
        columns = tuple(int(c) if isinstance(c, torch.Tensor) and c.dim() == 0 else c for c in columns)
    H, W = check_int(op, "hw[0]", columns[0]), check_int(op, "hw[1]", columns[1])
    if H * W != T:
        raise ValueError(f"{op}: hw={tuple(columns)} does not match T={T} tokens (H*W must equal T)")
    return H, W


def bi_wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "auto",
           columns: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Bi-WKV (formula in the module docstring).

    Args:
        w, u: (C,) decay and bonus, used as given (Restore-RWKV passes decay/T, first/T).
        k, v: (B, T, C) keys and values, T = tokens in scan order.
        impl: "auto", "triton" or "reference".
        columns: (H, W) to scan down the columns: k and v are then an H x W grid in row-major
            (h w) order, the scan runs in (w h) order, and the output is in (h w) order. The
            Triton kernel addresses the grid directly; the reference transposes copies.
    Returns:
        (B, T, C), dtype of ``k``.
    """
    check_tensors("bi_wkv", dict(k=k, v=v))
    check_params("bi_wkv", k, dict(w=w, u=u))
    if k.dim() != 3 or v.shape != k.shape or w.shape != (k.shape[-1],) or u.shape != (k.shape[-1],):
        raise ValueError(f"bi_wkv expects k, v: (B, T, C) and w, u: (C,); got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, w {tuple(w.shape)}, u {tuple(u.shape)}")
    H, W = _check_columns("bi_wkv", columns, k.shape[1]) if columns is not None else (0, 0)
    choice = pick("bi_wkv", impl, {"triton": _triton_supports(k), "reference": True})
    if choice == "triton":
        if launch_directly(w, u, k, v):  # eager inference: no custom-op dispatch on the host
            return _wkv_triton.bi_wkv_launch(w, u, k, v, H)[0].to(k.dtype)
        return torch.ops.visionattn.bi_wkv(w, u, k, v, H)[0].to(k.dtype)
    dt = compute_dtype(k)
    w, u, k_, v_ = w.to(dt), u.to(dt), k.to(dt), v.to(dt)
    if columns is None:
        return bi_wkv_reference(w, u, k_, v_).to(k.dtype)
    y = bi_wkv_reference(w, u, _to_columns(k_, H, W), _to_columns(v_, H, W))
    return _from_columns(y, H, W).to(k.dtype)


def re_wkv(k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, first: torch.Tensor, hw: Tuple[int, int],
           impl: str = "auto") -> torch.Tensor:
    """Re-WKV: M Bi-WKV recurrences alternating horizontal and vertical scans, K reused.

    Args:
        k, v: (B, T, C) tokens in row-major (h w) order, T = H*W.
        decay, first: (M, C); recurrence j uses w = decay[j]/T, u = first[j]/T, scanning in
            (h w) order for even j and (w h) order for odd j (``bi_wkv(..., columns=hw)``: the
            tokens stay in (h w) order in memory).
        hw: (H, W).
    Returns:
        (B, T, C) in (h w) order.
    """
    check_tensors("re_wkv", dict(k=k, v=v))
    check_params("re_wkv", k, dict(decay=decay, first=first))
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"re_wkv expects k, v: (B, T, C) of one shape; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    B, T, C = k.shape
    if decay.dim() != 2 or decay.shape != first.shape or decay.shape[1] != C:
        raise ValueError(f"re_wkv expects decay, first: (M, C={C}); got {tuple(decay.shape)}, {tuple(first.shape)}")
    H, W = _check_columns("re_wkv", hw, T)
    for j in range(decay.shape[0]):
        v = bi_wkv(decay[j] / T, first[j] / T, k, v, impl=impl, columns=(H, W) if j % 2 else None)
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
