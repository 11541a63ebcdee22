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
- ``"reference"``: the readable gather-then-attend version, faithful to the official legacy op.

Parity notes (released weights): the routing logits are ``(scale * mean_q) @ mean_k^T`` with the
same ``scale`` as the token attention, which the official model sets to ``C ** -0.5`` (the full
channel width, not the head width). Region means include every token of the region (padding
tokens too: the model pads its input before the projection, as the official dense backbone does).
"""
import warnings
from typing import Tuple

import torch

from . import _bilevel_routing_attention_triton  # noqa: F401 (registers the custom ops)
from ._checks import check_int, check_number, check_tensors
from ._triton import can_run
from .dispatch import pick

# A FlexAttention block-sparse path was measured and dropped: its 128-token blocks are far larger than
# BiFormer's regions (64/16/4 tokens at 224), so it computed mostly masked work (2-4x slower than
# the triton path on an H200, benchmarks/README.md).
IMPLS: Tuple[str, ...] = ("triton", "reference")


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int, num_heads: int, topk: int) -> int:
    """Validate the inputs; return the number of regions the routing may pick (topk clamped)."""
    op = "bilevel_routing_attention"
    check_tensors(op, dict(q=q, k=k, v=v))
    n_win, num_heads, topk = check_int(op, "n_win", n_win), check_int(op, "num_heads", num_heads), \
        check_int(op, "topk", topk)
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


def route(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int, scale: float) -> torch.Tensor:
    """Region-level routing: indices (B, R, topk) of the key regions each query region attends to.

    q, k: (B, H, W, C). Means are taken per region on detached tensors (hard, non-differentiable
    routing, as in every released model).
    """
    # detach(), not ``with torch.no_grad()``: TorchScript's common-subexpression elimination merged the
    # view of q made inside such a block with the same view made by to_regions after it, and q's
    # gradient was lost in a scripted model
    q, k = q.detach(), k.detach()
    b, height, width, c = q.shape
    h, w = height // n_win, width // n_win
    # Reduce over (h, w) of a (B, S, h, S, w, C) view: no region-major copy of q and k.
    q_mean = q.reshape(b, n_win, h, n_win, w, c).mean((2, 4)).reshape(b, n_win * n_win, c)  # (B, R, C)
    k_mean = k.reshape(b, n_win, h, n_win, w, c).mean((2, 4)).reshape(b, n_win * n_win, c)  # (B, R, C)
    logits = (q_mean * scale) @ k_mean.transpose(-2, -1)  # (B, R, R)
    return torch.topk(logits, k=topk, dim=-1).indices  # (B, R, topk)


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int, num_heads: int, topk: int,
               scale: float) -> torch.Tensor:
    b, height, width, c = q.shape
    cv = v.shape[-1]
    idx = route(q, k, n_win, topk, scale)  # (B, R, topk)
    q_r, k_r, v_r = to_regions(q, n_win), to_regions(k, n_win), to_regions(v, n_win)  # (B, R, hw, C)
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


def bilevel_routing_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int,
                                        num_heads: int, topk: int, scale: float) -> torch.Tensor:
    """The reference path of :func:`bilevel_routing_attention` without checks or dispatch (``topk``
    clamped to the region count): what TorchScript compiles (``torch.jit.script``)."""
    return _reference(q, k, v, n_win, num_heads, min(topk, n_win * n_win), scale)


def _triton_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton kernels can run these inputs (CUDA, or the CPU interpreter for tests)."""
    return can_run(q, k, v)


def _triton(q, k, v, n_win, num_heads, topk, scale):
    idx = route(q, k, n_win, topk, scale)  # (B, R, topk) int64
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
        impl: ``"auto"`` (triton on CUDA, reference elsewhere), ``"triton"`` or ``"reference"``.

    Returns:
        (B, H, W, Cv): per token, attention over the tokens of its region's ``topk`` routed regions.
    """
    topk = _check(q, k, v, n_win, num_heads, topk)
    scale = check_number("bilevel_routing_attention", "scale", scale, positive=True)
    impl = pick("bilevel_routing_attention", impl, {"triton": _triton_supports(q, k, v), "reference": True})
    fn = _triton if impl == "triton" else _reference
    return fn(q, k, v, n_win, num_heads, topk, scale)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 8, size: int = 56, channels: int = 64,
                   num_heads: int = 2, n_win: int = 7, topk: int = 1) -> dict:
    """Stage-1 BiFormer-S at 224: (8, 56, 56, 64), 2 heads, 7x7 regions, top-1."""
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, size, size, channels, generator=g).to(device, dtype) for _ in range(3))
    return dict(q=q, k=k, v=v, n_win=n_win, num_heads=num_heads, topk=topk, scale=channels ** -0.5)
