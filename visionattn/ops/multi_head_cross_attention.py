"""Multi-head cross-attention between two token sequences, the op of RestoreFormer's blocks.

Every query token attends to every key/value token (global attention, no mask). Heads are
contiguous channel blocks: channel ``c`` belongs to head ``c // (C / num_heads)``, which is how
RestoreFormer reshapes its (B, C, H, W) maps into (B, heads, C/heads, HW).

In RestoreFormer / RestoreFormer++ (:mod:`visionattn.models.restoration.restoreformer`) the
decoder's multi-head cross-attention (MHCA) takes its **queries from the degraded image's encoder
features** and its **keys and values from the decoder path**, which starts from the features
quantised to the high-quality dictionary; the encoder (and the stage-1 dictionary autoencoder)
uses the same op as self-attention (queries, keys and values from one map).

Implementations (``impl=``, fastest first):

- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` on (B, heads, N, d) views of
  the token tensors (no copies when the channel axis is contiguous); PyTorch picks its flash /
  memory-efficient / math kernel for the device and dtype. Any device, any float dtype, backward.
- ``"reference"``: the explicit softmax(Q K^T * scale) V, written to be read.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._checks import check_int, check_number, check_tensors
from .dispatch import pick

IMPLS: Tuple[str, ...] = ("sdpa", "reference")


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> None:
    check_tensors("multi_head_cross_attention", dict(q=q, k=k, v=v))
    check_int("multi_head_cross_attention", "num_heads", num_heads)
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"multi_head_cross_attention: q, k, v must be (B, N, C) token tensors; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)} (flatten maps with "
                         f"x.flatten(2).transpose(1, 2))")
    if k.shape[:2] != v.shape[:2] or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"multi_head_cross_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         f"do not fit: need one batch size, k and v with the same tokens, q and k with the same channels")
    if num_heads < 1 or q.shape[2] % num_heads or v.shape[2] % num_heads:
        raise ValueError(f"multi_head_cross_attention: num_heads={num_heads} does not divide the channels "
                         f"(q/k {q.shape[2]}, v {v.shape[2]})")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError(f"multi_head_cross_attention: q, k, v must share dtype and device; got "
                         f"{q.dtype}/{q.device}, {k.dtype}/{k.device}, {v.dtype}/{v.device}")


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C/heads), a view."""
    b, n, c = x.shape
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _reference(q, k, v, num_heads, scale):
    q_h, k_h, v_h = (_split_heads(t, num_heads) for t in (q, k, v))  # (B, heads, N, d)
    logits = (q_h * scale) @ k_h.transpose(-2, -1)  # (B, heads, Nq, Nk)
    weights = logits.softmax(dim=-1)
    return _merge_heads(weights @ v_h)  # (B, Nq, Cv)


def _sdpa(q, k, v, num_heads, scale):
    # (B, N, C) -> (B, heads, N, d): the channel axis stays innermost, as the fused kernels need
    q_h, k_h, v_h = (_split_heads(t if t.stride(-1) == 1 else t.contiguous(), num_heads) for t in (q, k, v))
    return _merge_heads(F.scaled_dot_product_attention(q_h, k_h, v_h, scale=scale))


def multi_head_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, *,
                               scale: Optional[float] = None, impl: str = "auto") -> torch.Tensor:
    """Global multi-head attention of query tokens over key/value tokens.

    Args:
        q: (B, Nq, C) queries (RestoreFormer's MHCA: projected degraded-image encoder features).
        k: (B, Nk, C) keys; v: (B, Nk, Cv) values (MHCA: projected decoder/dictionary features).
        num_heads: heads, contiguous channel blocks of C/num_heads (and Cv/num_heads).
        scale: softmax temperature, ``(C / num_heads) ** -0.5`` when None (RestoreFormer's).
        impl: ``"auto"`` (sdpa), ``"sdpa"`` or ``"reference"``.

    Returns:
        (B, Nq, Cv): per query token, the softmax-weighted mean of the values, heads concatenated.
    """
    _check(q, k, v, num_heads)
    if scale is not None:
        scale = check_number("multi_head_cross_attention", "scale", scale, positive=True)
    if scale is None:
        scale = (q.shape[2] // num_heads) ** -0.5
    impl = pick("multi_head_cross_attention", impl, {"sdpa": True, "reference": True})
    return (_sdpa if impl == "sdpa" else _reference)(q, k, v, num_heads, scale)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 8, tokens: int = 1024, kv_tokens: Optional[int] = None,
                   channels: int = 256, num_heads: int = 4) -> dict:
    """RestoreFormer++'s 32x32 decoder level at 512x512: (8, 1024, 256) tokens, 4 heads."""
    g = torch.Generator(device="cpu").manual_seed(0)
    kv_tokens = tokens if kv_tokens is None else kv_tokens
    q = torch.randn(batch, tokens, channels, generator=g).to(device, dtype)
    k = torch.randn(batch, kv_tokens, channels, generator=g).to(device, dtype)
    v = torch.randn(batch, kv_tokens, channels, generator=g).to(device, dtype)
    return dict(q=q, k=k, v=v, num_heads=num_heads)
