"""Bi-level routing attention (BRA) of BiFormer (Zhu et al., CVPR 2023), the op's math once.

The image is split into ``n_win x n_win`` regions. Each query region picks the ``topk`` key regions
whose mean key best matches its mean query (hard routing on detached tensors, no gradient through
the choice), then every query token attends to the tokens of those ``topk`` regions only.

This module holds the routing and the token attention. The parameterised parts of the official
block (qkv projection, padding of sizes that are not a multiple of ``n_win``, the 5x5 depthwise
"LePE" on V, the output projection) live in
:class:`visionattn.models.backbones.biformer.BiLevelRoutingAttention`.

Implementations (``impl=``):

- ``"triton"``: Triton kernels indexed by the routing table (forward and backward, fp32/fp16/bf16,
  :mod:`._bilevel_routing_attention_triton`): each program gathers its routed key tokens with
  per-row pointers straight from the NHWC maps (strided views of the fused qkv projection are
  read in place), online softmax; the backward walks an inverted routing table for dk/dv (no
  atomics). CUDA (on CPU only under ``TRITON_INTERPRET=1``, for the tests).
- ``"flex"``: FlexAttention (compiled) with a block-sparse mask built from the routing indices.
  Tokens are laid out region by region, so each query block only visits the key blocks of the
  regions it routed to; the ``topk``-fold gathered K/V copy of the official code is never built.
  CUDA only (on CPU ``impl="flex"`` runs FlexAttention's eager math path, used by the tests).
- ``"reference"``: the readable gather-then-attend version, faithful to the official legacy op.

Parity notes (released weights): the routing logits are ``(scale * mean_q) @ mean_k^T`` with the
same ``scale`` as the token attention, which the official model sets to ``C ** -0.5`` (the full
channel width, not the head width). Region means include every token of the region (padding
tokens too: the model pads its input before the projection, as the official dense backbone does).
"""
import functools
import warnings
from typing import Tuple

import torch

from ._bilevel_routing_attention_triton import supported as triton_supported
from .dispatch import pick

IMPLS: Tuple[str, ...] = ("triton", "flex", "reference")

try:  # torch >= 2.6: FlexAttention (CUDA kernels; CPU eager path)
    import inspect

    from torch.nn.attention.flex_attention import BlockMask as _BlockMask

    _HAS_Q_BLOCKS_ARG = "compute_q_blocks" in inspect.signature(_BlockMask.from_kv_blocks).parameters
except ImportError:  # pragma: no cover - older torch
    _HAS_Q_BLOCKS_ARG = False

# Tokens per FlexAttention block (query and key); regions are packed into blocks of this size.
_FLEX_BLOCK = 128


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int, num_heads: int, topk: int) -> int:
    """Validate the inputs; return the number of regions the routing may pick (topk clamped)."""
    if q.dim() != 4 or q.shape != k.shape or q.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"bilevel_routing_attention: q, k, v must be (B, H, W, C) maps with equal B, H, W and q/k equal; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    _, height, width, channels = q.shape
    if n_win < 1 or height % n_win or width % n_win:
        raise ValueError(
            f"bilevel_routing_attention: the map size {height}x{width} is not a multiple of n_win={n_win}; "
            f"pad it first (BiLevelRoutingAttention pads its input like the official dense backbone)")
    if channels % num_heads or v.shape[-1] % num_heads:
        raise ValueError(f"bilevel_routing_attention: channels {channels}/{v.shape[-1]} are not divisible by "
                         f"num_heads={num_heads}")
    if topk < 1:
        raise ValueError(f"bilevel_routing_attention: topk must be >= 1, got {topk}")
    regions = n_win * n_win
    if topk > regions:
        # Routing to every region is plain (global) attention: a well-defined limit, so clamp.
        warnings.warn(f"bilevel_routing_attention: topk={topk} exceeds the {regions} regions of n_win={n_win}; "
                      f"using topk={regions} (every query attends to the whole map)", stacklevel=3)
        topk = regions
    return topk


def to_regions(x: torch.Tensor, n_win: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, R, h*w, C): tokens grouped by region (R = n_win**2, raster order inside)."""
    b, height, width, c = x.shape
    h, w = height // n_win, width // n_win
    x = x.reshape(b, n_win, h, n_win, w, c).permute(0, 1, 3, 2, 4, 5)  # (B, S, S, h, w, C)
    return x.reshape(b, n_win * n_win, h * w, c)


def from_regions(x: torch.Tensor, n_win: int, height: int, width: int) -> torch.Tensor:
    """(B, R, h*w, C) -> (B, H, W, C), inverse of :func:`to_regions`."""
    b, _, _, c = x.shape
    h, w = height // n_win, width // n_win
    x = x.reshape(b, n_win, n_win, h, w, c).permute(0, 1, 3, 2, 4, 5)  # (B, S, h, S, w, C)
    return x.reshape(b, height, width, c)


@torch.no_grad()
def route(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int, scale: float) -> torch.Tensor:
    """Region-level routing: indices (B, R, topk) of the key regions each query region attends to.

    q, k: (B, H, W, C). Means are taken per region on detached tensors (hard, non-differentiable
    routing, as in every released model).
    """
    b, height, width, c = q.shape
    h, w = height // n_win, width // n_win
    # Reduce over (h, w) of a (B, S, h, S, w, C) view: no region-major copy of q and k.
    q_mean = q.reshape(b, n_win, h, n_win, w, c).mean((2, 4)).reshape(b, n_win * n_win, c)  # (B, R, C)
    k_mean = k.reshape(b, n_win, h, n_win, w, c).mean((2, 4)).reshape(b, n_win * n_win, c)  # (B, R, C)
    logits = (q_mean * scale) @ k_mean.transpose(-2, -1)  # (B, R, R)
    return torch.topk(logits, k=topk, dim=-1).indices  # (B, R, topk)


def _reference(q, k, v, n_win, num_heads, topk, scale):
    b, height, width, c = q.shape
    cv = v.shape[-1]
    idx = route(q, k, n_win, topk, scale)  # (B, R, topk)
    q_r, k_r, v_r = (to_regions(t, n_win) for t in (q, k, v))  # (B, R, hw, C)
    regions, hw = q_r.shape[1], q_r.shape[2]
    # Gather the routed regions' keys/values: (B, R, topk, hw, C) -> (B, R, topk*hw, C).
    batch = torch.arange(b, device=q.device).view(b, 1, 1)
    k_sel = k_r[batch, idx].reshape(b, regions, topk * hw, c)
    v_sel = v_r[batch, idx].reshape(b, regions, topk * hw, cv)
    # Split heads (contiguous channel blocks): (B, R, M, tokens, d).
    q_h = q_r.reshape(b, regions, hw, num_heads, c // num_heads).transpose(2, 3)
    k_h = k_sel.reshape(b, regions, topk * hw, num_heads, c // num_heads).transpose(2, 3)
    v_h = v_sel.reshape(b, regions, topk * hw, num_heads, cv // num_heads).transpose(2, 3)
    attn = ((q_h * scale) @ k_h.transpose(-2, -1)).softmax(-1)  # (B, R, M, hw, topk*hw)
    out = (attn @ v_h).transpose(2, 3).reshape(b, regions, hw, cv)  # (B, R, hw, Cv)
    return from_regions(out, n_win, height, width)


@functools.lru_cache(maxsize=64)
def _block_cover(regions: int, hw: int, device: torch.device):
    """Tokens each FlexAttention block holds of each region, (nblk, R), and tokens per block (nblk,).

    Depends on the shapes only, so it is cached (it would otherwise cost launches in every block)."""
    n = regions * hw
    nblk = (n + _FLEX_BLOCK - 1) // _FLEX_BLOCK
    token = torch.arange(n, device=device)
    cover = torch.zeros(nblk, regions, dtype=torch.float32, device=device)
    cover.index_put_((token // _FLEX_BLOCK, token // hw), torch.ones(n, device=device), accumulate=True)
    return cover, cover.sum(1)


def _block_mask(idx: torch.Tensor, regions: int, hw: int, device, backward: bool = True):
    """FlexAttention BlockMask for tokens laid out region-major (region r = tokens [r*hw, (r+1)*hw))."""
    from torch.nn.attention.flex_attention import BlockMask

    b = idx.shape[0]
    n = regions * hw
    routed = torch.zeros(b, regions, regions, dtype=torch.bool, device=device)
    routed.scatter_(2, idx, True)  # (B, R, R): query region -> key region allowed
    cover, size = _block_cover(regions, hw, torch.device(device))  # (nblk, R), (nblk,)
    # Allowed token pairs per (query block, key block); exact in fp32 (<= 128*128).
    pairs = cover @ routed.float() @ cover.t()  # (B, nblk, nblk)
    full = pairs == size[:, None] * size[None, :]
    partial = (pairs > 0) & ~full

    def as_indices(active):  # (B, nblk, nblk) bool -> counts (B, 1, nblk), indices (B, 1, nblk, nblk)
        counts = active.sum(-1, dtype=torch.int32)
        order = torch.argsort(active.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return counts[:, None], order[:, None]

    def mask_mod(batch, head, q_idx, kv_idx):
        return routed[batch, q_idx // hw, kv_idx // hw]

    num, ind = as_indices(partial)
    full_num, full_ind = as_indices(full)
    # The query-side tables are only needed by the backward pass.
    extra = {} if backward or not _HAS_Q_BLOCKS_ARG else dict(compute_q_blocks=False)
    return BlockMask.from_kv_blocks(num, ind, full_num, full_ind, BLOCK_SIZE=_FLEX_BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(n, n), **extra)


_compiled_flex = None


def _flex_attention(*args, **kwargs):
    """flex_attention, compiled on CUDA (its eager form is a slow dense math fallback)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if not args[0].is_cuda:
        return flex_attention(*args, **kwargs)
    if _compiled_flex is None:
        # One compiled kernel per stage shape/dtype/mode: a model has several, and hitting dynamo's
        # default limit (8) would silently fall back to the dense eager path. Raise it.
        import torch._dynamo.config as dynamo_config

        name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(*args, **kwargs)


def _flex(q, k, v, n_win, num_heads, topk, scale):
    b, height, width, c = q.shape
    cv = v.shape[-1]
    idx = route(q, k, n_win, topk, scale)  # (B, R, topk)
    regions = n_win * n_win
    hw = (height // n_win) * (width // n_win)

    def heads(t):  # (B, H, W, C) -> (B, M, R*hw, C/M), region-major token order
        t = to_regions(t, n_win)
        return t.reshape(b, regions * hw, num_heads, t.shape[-1] // num_heads).transpose(1, 2)

    backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    mask = _block_mask(idx, regions, hw, q.device, backward)
    out = _flex_attention(heads(q), heads(k), heads(v), block_mask=mask, scale=scale)  # (B, M, N, d)
    out = out.transpose(1, 2).reshape(b, regions, hw, cv)
    return from_regions(out, n_win, height, width)


def _triton(q, k, v, n_win, num_heads, topk, scale):
    idx = route(q, k, n_win, topk, scale).to(torch.int32)  # (B, R, topk)
    out, _ = torch.ops.visionattn.bilevel_routing_attention_triton(q, k, v, idx, n_win, num_heads, scale)
    return out


def bilevel_routing_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int, num_heads: int,
                              topk: int, scale: float, impl: str = "auto") -> torch.Tensor:
    """Bi-level routing attention on NHWC maps.

    Args:
        q, k: (B, H, W, C) queries and keys; H and W multiples of ``n_win``.
        v: (B, H, W, Cv) values.
        n_win: regions per side (``n_win**2`` regions of (H/n_win) x (W/n_win) tokens).
        num_heads: heads, contiguous channel blocks of C/num_heads (and Cv/num_heads).
        topk: key regions per query region; values above ``n_win**2`` are clamped with a warning.
        scale: softmax temperature for the routing and token logits (official: ``C ** -0.5``).
        impl: ``"auto"`` (triton on CUDA, reference elsewhere), ``"triton"``, ``"flex"`` or ``"reference"``.

    Returns:
        (B, H, W, Cv): per token, attention over the tokens of its region's ``topk`` routed regions.
    """
    topk = _check(q, k, v, n_win, num_heads, topk)
    # Explicit impl="flex" also runs on CPU (FlexAttention's eager path; tests use it).
    impl = pick("bilevel_routing_attention", impl, {"triton": triton_supported(q, k, v),
                                                    "flex": q.is_cuda or impl == "flex", "reference": True})
    fn = {"triton": _triton, "flex": _flex, "reference": _reference}[impl]
    return fn(q, k, v, n_win, num_heads, topk, scale)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 8, size: int = 56, channels: int = 64,
                   num_heads: int = 2, n_win: int = 7, topk: int = 1) -> dict:
    """Stage-1 BiFormer-S at 224: (8, 56, 56, 64), 2 heads, 7x7 regions, top-1."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, size, size, channels, generator=g).to(device, dtype) for _ in range(3))
    return dict(q=q, k=k, v=v, n_win=n_win, num_heads=num_heads, topk=topk, scale=channels ** -0.5)
