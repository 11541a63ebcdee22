"""LayerNorm over the last axis, with a Triton path for narrow rows of any width and row stride.

``y = (x - mean) / sqrt(var + eps) * weight (+ bias)`` over the last axis of ``x (..., D)``.

Why a kernel of our own: PyTorch's CUDA LayerNorm takes a vectorised one-pass kernel only when
``D`` is a multiple of the vector width; otherwise it falls back to two kernels with one thread
block per row. MatchStereo normalises rows of ``C + 2 + 2h`` and ``C + 2`` channels (e.g. 42 and
34) over up to a million tokens, where that fallback took 40 % of the GPU time of a 4K forward.
The Triton kernel normalises ``BLOCK_M`` rows per program in one pass, and reads rows through a
stride, so a channel slice of a wider tensor needs no copy. Its backward is written with PyTorch
ops (recomputing the statistics); inference is what it speeds up.

Implementations: ``"triton"`` (CUDA, fp32/fp16/bf16; CPU under ``TRITON_INTERPRET=1``;
:mod:`._layer_norm_triton`) and ``"reference"`` (``torch.nn.functional.layer_norm``).
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ._checks import param_dtypes, check_number, check_params, check_tensors
from ._layer_norm_triton import rows_are_a_view  # importing it registers the custom op
from ._triton import can_run, interpreting, triton_available  # noqa: F401 (the last two re-exported)
from .dispatch import pick

IMPLS = ("triton", "reference")


def _triton_supports(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether the Triton kernel can run these inputs: rows of at most 8192 channels with unit
    stride, read as (rows, D) through one row stride."""
    return (can_run(x) and x.dim() >= 1 and x.shape[-1] <= 8192 and x.stride(-1) == 1
            and rows_are_a_view(x))


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, eps: float = 1e-5,
               impl: str = "auto") -> torch.Tensor:
    """LayerNorm of ``x (..., D)`` over ``D`` with ``weight (D,)`` and optional ``bias (D,)``.

    Returns a contiguous ``(..., D)`` tensor in ``x``'s dtype (statistics in float32).
    """
    op = "layer_norm"
    check_tensors(op, dict(x=x))
    if weight is None:
        raise TypeError("layer_norm: weight must be a (D,) tensor, got None")
    check_params(op, x, dict(weight=weight, bias=bias), param_dtypes(x))
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"layer_norm: x must be (..., D) with D >= 1, got {tuple(x.shape)}")
    eps = check_number(op, "eps", eps, 0.0)
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"layer_norm: weight of shape {tuple(weight.shape)} does not match the last axis "
                         f"of x {tuple(x.shape)}")
    supported = {"triton": _triton_supports(x, weight, bias), "reference": True}
    if pick("layer_norm", impl, supported) == "triton":
        return torch.ops.visionattn.layer_norm_triton(x, weight, bias, float(eps))
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def example_inputs(device="cpu", dtype=torch.float32, tokens: int = 2 * 96 * 312, dim: int = 42, **_) -> Dict:
    """Typical call: ``norm0`` of MatchStereo-T at the 1/4 level of a 384x1248 pair (C + 2 + 2h = 42)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, dim, generator=g).to(device, dtype)
    weight = (1 + 0.1 * torch.randn(dim, generator=g)).to(device, dtype)
    return dict(x=x, weight=weight, eps=1e-5)
