"""Grouped-query attention: H query heads share G <= H key/value heads.

Query heads are assigned to KV heads in contiguous blocks in head order, given by a vector of
group sizes ``(n_1, ..., n_G)`` with ``sum(n) = H`` (uniform sizes ``H / G`` = plain GQA, ``G = H``
= multi-head attention). Sizes may differ per sample (shape ``(B, G)``), which is what a
key-norm driven allocation computed per image needs, and a KV head may get zero query heads.

Implementations (fastest first):
- ``sdpa_gqa``: uniform groups only; one ``F.scaled_dot_product_attention(..., enable_gqa=True)``.
- ``sdpa_expand``: any group sizes (CUDA; CPU under ``TRITON_INTERPRET=1``); one Triton pass
  reads K and V through their strides and writes them expanded to H heads, then one SDPA call
  (:mod:`._grouped_query_attention_triton`). The same numbers as ``sdpa_index``.
- ``sdpa_index``: any group sizes; the KV head each query head reads is computed with tensor
  ops (no host sync, no data-dependent shapes), K/V are expanded to H heads by index and one
  SDPA call runs all heads. Mathematically equal to the per-group loop.
- ``reference``: the readable per-group loop (explicit softmax), ground truth for tests.
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from . import _grouped_query_attention_triton as _expand_triton  # importing it registers the custom op
from ._checks import check_number, check_tensors
from ._triton import can_run, launch_directly
from .dispatch import pick

IMPLS = ("sdpa_gqa", "sdpa_expand", "sdpa_index", "reference")

GroupSizes = Optional[Union[torch.Tensor, Sequence[int]]]


def kv_head_index(group_sizes: torch.Tensor, num_heads: int) -> torch.Tensor:
    """For each query head, the KV head it reads.

    Args:
        group_sizes: integer tensor (G,) or (B, G), each row summing to ``num_heads``.
    Returns:
        long tensor (H,) or (B, H): query head h reads KV head ``idx[..., h]``.
    """
    bounds = group_sizes.cumsum(-1).contiguous()  # (..., G) end (exclusive) of each group
    heads = torch.arange(num_heads, device=group_sizes.device, dtype=bounds.dtype)
    heads = heads.expand(list(bounds.shape[:-1]) + [num_heads]).contiguous()  # (..., H)
    # head h belongs to the first group whose end is > h (empty groups are skipped by right=True)
    return torch.searchsorted(bounds, heads, right=True)


def _as_sizes(group_sizes: GroupSizes, device: torch.device) -> Optional[torch.Tensor]:
    if group_sizes is None or isinstance(group_sizes, torch.Tensor):
        return group_sizes
    return torch.as_tensor(list(group_sizes), dtype=torch.long, device=device)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group_sizes: Optional[torch.Tensor]) -> None:
    op = "grouped_query_attention"
    check_tensors(op, dict(q=q, k=k, v=v))
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"grouped_query_attention: expected q (B, H, N, d) and k, v (B, G, M, d) of equal "
                         f"shape; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    B, H, _, d = q.shape
    G = k.shape[1]
    if G < 1 or H < 1:
        raise ValueError(f"grouped_query_attention: q {tuple(q.shape)} and k/v {tuple(k.shape)} need at least one "
                         f"head each (H = q.shape[1], G = k.shape[1])")
    if k.shape[0] != B or k.shape[-1] != d or G > H:
        raise ValueError(f"grouped_query_attention: k/v {tuple(k.shape)} do not fit q {tuple(q.shape)} "
                         f"(need the same batch and head dim, and G <= H)")
    if group_sizes is None:
        if H % G:
            raise ValueError(f"grouped_query_attention: {H} query heads cannot be split uniformly over "
                             f"{G} KV heads; pass group_sizes")
        return
    check_tensors(op, dict(q=q, group_sizes=group_sizes), floating=False, same_dtype=False)
    if group_sizes.dtype.is_floating_point or group_sizes.dtype.is_complex or group_sizes.dtype == torch.bool:
        raise ValueError(f"grouped_query_attention: group_sizes must hold integers, got {group_sizes.dtype}; "
                         f"cast with group_sizes.long()")
    if group_sizes.shape[-1] != G or group_sizes.dim() not in (1, 2) or (
            group_sizes.dim() == 2 and group_sizes.shape[0] != B):
        raise ValueError(f"grouped_query_attention: group_sizes must have shape ({G},) or ({B}, {G}); "
                         f"got {tuple(group_sizes.shape)}")


def _check_sums(group_sizes: torch.Tensor, num_heads: int) -> None:
    """Value check of the sizes (a host sync: done for user-given lists and in the reference only)."""
    if (group_sizes < 0).any() or (group_sizes.sum(-1) != num_heads).any():
        raise ValueError(f"grouped_query_attention: group_sizes {group_sizes.tolist()} must be "
                         f">= 0 and sum to the {num_heads} query heads")


def attention_bias(attn_mask: Optional[torch.Tensor], is_causal: bool, n_queries: int, n_keys: int,
                   like: torch.Tensor) -> Optional[torch.Tensor]:
    """The additive logit bias SDPA applies for ``attn_mask`` / ``is_causal``, broadcastable to
    (B, H, N, M): a bool mask (True = attend) becomes 0 / -inf, a float mask is added as it is,
    ``is_causal`` masks keys after the query (top-left aligned). None when there is no mask."""
    if is_causal:
        if attn_mask is not None:
            raise ValueError("grouped_query_attention: pass attn_mask or is_causal=True, not both (as SDPA)")
        return like.new_full((n_queries, n_keys), float("-inf")).triu_(1)
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        return torch.zeros(attn_mask.shape, dtype=like.dtype, device=like.device).masked_fill_(~attn_mask, float("-inf"))
    return attn_mask.to(like.dtype)


def _reference(q, k, v, group_sizes, scale, dropout_p, attn_mask=None, is_causal=False):
    """Per-group loop. q: (B, H, N, d); k, v: (B, G, M, d); group_sizes (G,) or (B, G) or None;
    attn_mask broadcastable to (B, H, N, M)."""
    B, H, N, d = q.shape
    G = k.shape[1]
    scale = d ** -0.5 if scale is None else scale
    bias = attention_bias(attn_mask, is_causal, N, k.shape[2], q)
    if bias is not None:
        bias = bias.expand(B, H, N, k.shape[2])
    if group_sizes is None:
        group_sizes = torch.full((G,), H // G, dtype=torch.long)
    _check_sums(group_sizes, H)
    if group_sizes.dim() == 1:
        group_sizes = group_sizes.expand(B, G)
    out = torch.empty_like(q)
    for b in range(B):
        start = 0
        for g, n in enumerate(group_sizes[b].tolist()):
            q_g = q[b, start:start + n] * scale  # (n, N, d): the n query heads sharing KV head g
            logits = q_g @ k[b, g].transpose(-2, -1)  # (n, N, M)
            if bias is not None:
                logits = logits + bias[b, start:start + n]
            attn = logits.softmax(dim=-1)
            attn = F.dropout(attn, dropout_p)
            out[b, start:start + n] = attn @ v[b, g]  # (n, N, d)
            start += n
    return out


def _sdpa_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float], dropout_p: float,
              attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def _sdpa_index(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group_sizes: Optional[torch.Tensor],
                scale: Optional[float], dropout_p: float, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
    B, H, N, d = q.shape
    G = k.shape[1]
    if group_sizes is None:
        idx = torch.arange(H, device=q.device) // (H // G)
    else:
        idx = kv_head_index(group_sizes.to(q.device), H)
    if idx.dim() == 1:  # same assignment for every sample
        k, v = k.index_select(1, idx), v.index_select(1, idx)  # (B, H, M, d)
    else:  # per-sample assignment (B, H): whole (M, d) heads copied by one (B, H) index, not
        # torch.gather's index of every element (which reads 8 index bytes per copied value)
        batch = torch.arange(B, device=q.device)[:, None]
        k, v = k[batch, idx], v[batch, idx]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale)


def _sdpa_expand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group_sizes: Optional[torch.Tensor],
                 scale: Optional[float], dropout_p: float, attn_mask: Optional[torch.Tensor] = None,
                 is_causal: bool = False) -> torch.Tensor:
    H = q.shape[1]
    if not launch_directly(k, v):  # autograd, torch.compile or export: the registered op
        k_exp, v_exp = torch.ops.visionattn.expand_kv_heads(k, v, group_sizes, H)  # (B, N, H, d) each
    else:  # inference: the kernel without the op dispatcher (host time a KDGQA forward would wait on)
        k_exp, v_exp = _expand_triton.expand_kv_heads_eager(k, v, group_sizes, H)
    return F.scaled_dot_product_attention(q, k_exp.transpose(1, 2), v_exp.transpose(1, 2), attn_mask=attn_mask,
                                          dropout_p=dropout_p, is_causal=is_causal, scale=scale)


def _expand_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group_sizes: torch.Tensor) -> bool:
    return (can_run(q, k, v) and k.stride(-1) == 1 and v.stride(-1) == 1 and group_sizes.device == q.device
            and not group_sizes.dtype.is_floating_point)


def grouped_query_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 group_sizes: Optional[torch.Tensor], dropout_p: float = 0.0,
                                 attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
    """The SDPA paths of :func:`grouped_query_attention` (``sdpa_gqa`` for uniform groups, else
    ``sdpa_index``) without checks or dispatch: what TorchScript compiles (``torch.jit.script``)."""
    if group_sizes is None:
        return _sdpa_gqa(q, k, v, None, dropout_p, attn_mask, is_causal)
    return _sdpa_index(q, k, v, group_sizes, None, dropout_p, attn_mask, is_causal)


def grouped_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group_sizes: GroupSizes = None,
                            *, scale: Optional[float] = None, dropout_p: float = 0.0,
                            attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                            impl: str = "auto") -> torch.Tensor:
    """Attention of H query heads over G shared key/value heads.

    Args:
        q: (B, H, N, d) queries.
        k, v: (B, G, M, d) keys and values.
        group_sizes: None for uniform groups of ``H // G`` heads, or integers (G,) or (B, G):
            query heads ``[n_1 + ... + n_{g-1}, n_1 + ... + n_g)`` read KV head g. Each row sums to H.
        scale: softmax scale, ``d ** -0.5`` when None.
        dropout_p: attention dropout (pass 0 in eval).
        attn_mask: as in ``F.scaled_dot_product_attention``: bool (True = attend) or additive float,
            broadcastable to (B, H, N, M).
        is_causal: mask keys after each query (not together with ``attn_mask``).
        impl: ``"auto"`` or one of :data:`IMPLS`.
    Returns:
        (B, H, N, d) attention outputs, heads in query order.
    """
    given_list = group_sizes is not None and not isinstance(group_sizes, torch.Tensor)
    if given_list and (isinstance(group_sizes, (str, bytes)) or not isinstance(group_sizes, Sequence)
                       or not all(isinstance(n, int) and not isinstance(n, bool) for n in group_sizes)):
        raise ValueError(f"grouped_query_attention: group_sizes must be None, a tensor or a list of integers, "
                         f"got {group_sizes!r}")
    dropout_p = check_number("grouped_query_attention", "dropout_p", dropout_p, 0.0, 1.0)
    if scale is not None:
        scale = check_number("grouped_query_attention", "scale", scale, positive=True)
    check_tensors("grouped_query_attention", dict(q=q, k=k, v=v))
    group_sizes = _as_sizes(group_sizes, q.device)
    _check(q, k, v, group_sizes)
    if given_list:
        _check_sums(group_sizes, q.shape[1])
    impl = pick("grouped_query_attention", impl, {
        "sdpa_gqa": group_sizes is None,
        "sdpa_expand": group_sizes is not None and _expand_supported(q, k, v, group_sizes),
        "sdpa_index": True,
        "reference": True,
    })
    if impl == "sdpa_gqa":
        return _sdpa_gqa(q, k, v, scale, dropout_p, attn_mask, is_causal)
    if impl == "sdpa_expand":
        return _sdpa_expand(q, k, v, group_sizes, scale, dropout_p, attn_mask, is_causal)
    if impl == "sdpa_index":
        return _sdpa_index(q, k, v, group_sizes, scale, dropout_p, attn_mask, is_causal)
    return _reference(q, k, v, group_sizes, scale, dropout_p, attn_mask, is_causal)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 2, heads: int = 12, kv_heads: int = 6,
                   tokens: int = 197, head_dim: int = 64, uniform: bool = False) -> dict:
    """Typical call: ViT-B/16 at 224 (197 tokens, 12 query heads, 6 KV heads), uneven groups."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, tokens, head_dim, generator=gen).to(device, dtype)
    k = torch.randn(batch, kv_heads, tokens, head_dim, generator=gen).to(device, dtype)
    v = torch.randn(batch, kv_heads, tokens, head_dim, generator=gen).to(device, dtype)
    sizes = None
    if not uniform:  # one KV head takes the rest, another takes one fewer than uniform
        sizes = torch.full((kv_heads,), heads // kv_heads, dtype=torch.long)
        sizes[-1] += heads - int(sizes.sum())
        if kv_heads > 1 and sizes[0] > 1:
            sizes[0] -= 1
            sizes[1] += 1
        sizes = sizes.to(device)
    return dict(q=q, k=k, v=v, group_sizes=sizes)
