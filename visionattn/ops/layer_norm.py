"""LayerNorm over the last axis, with a Triton path for narrow rows of any width and row stride.

``y = (x - mean) / sqrt(var + eps) * weight (+ bias)`` over the last axis of ``x (..., D)``.

Why a kernel of our own: PyTorch's CUDA LayerNorm takes a vectorised one-pass kernel only when
``D`` is a multiple of the vector width; otherwise it falls back to two kernels with one thread
block per row. MatchStereo normalises rows of ``C + 2 + 2h`` and ``C + 2`` channels (e.g. 42 and
34) over up to a million tokens, where that fallback took 40 % of the GPU time of a 4K forward.
The Triton kernel normalises ``BLOCK_M`` rows per program in one pass, and reads rows through a
stride, so a channel slice of a wider tensor needs no copy. Its backward is written with PyTorch
ops (recomputing the statistics); inference is what it speeds up.

With ``residual=r``, the op is a pre-norm transformer's residual step in one pass:
``s = x + r`` and ``y = LayerNorm(s)``, both returned (``s`` is the residual stream the next
block adds to). The fused kernel reads ``x`` and ``r`` and writes ``s`` and ``y`` once, where the
add followed by PyTorch's LayerNorm reads and writes the stream five times; its backward is a
Triton kernel too (from ``s`` and the row statistics saved by the forward, with the gradient of
``s`` added in the same pass). Under autocast ``y`` comes out in the autocast dtype (autocast's
LayerNorm gives float32, which the following autocast Linear rounds to that dtype anyway).
``width=W`` (> D) returns rows of W channels, the norm in the first D and zeros after: a GEMM input
padded to 16-byte rows (MatchStereo's odd widths) without a pad or concatenation pass of its own.
``residual_bias=c`` (per channel) makes it ``s = x + (r + c)``: a convolution's bias added in the
kernel rather than by PyTorch in a pass of its own after cuDNN's bias-free depth-wise kernel; the
kernel takes it when ``c`` needs no gradient (otherwise the reference runs).
``residual_scale=k`` (one factor per sample, ``(N,)`` for ``N = r.shape[0]``) makes it
``s = x + r * k``, the product rounded to ``r``'s dtype as PyTorch's multiply rounds it: drop path's
per-sample factors (:class:`visionattn.models.drop_path.DropPath`), applied in the kernel's pass
rather than by a broadcast multiply of their own, forward and backward (the kernel writes the
residual's gradient ``ds * k`` beside ``ds``). The kernel takes ``k`` when it needs no gradient.

Implementations: ``"triton"`` (CUDA, fp32/fp16/bf16; CPU under ``TRITON_INTERPRET=1``;
:mod:`._layer_norm_triton`) and ``"reference"`` (``torch.nn.functional.layer_norm``).
"""
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ._checks import param_dtypes, check_int, check_number, check_params, check_tensors
from ._layer_norm_triton import rows_are_a_view  # importing it registers the custom op
from ._triton import can_run, interpreting, needs_grad, triton_available  # noqa: F401 (the last two re-exported)
from .dispatch import pick

IMPLS = ("triton", "reference")


def _triton_supports(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether the Triton kernel can run these inputs: rows of at most 8192 channels with unit
    stride, read as (rows, D) through one row stride."""
    return (can_run(x) and x.dim() >= 1 and x.shape[-1] <= 8192 and x.stride(-1) == 1
            and rows_are_a_view(x))


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, eps: float = 1e-5,
               impl: str = "auto", residual: Optional[torch.Tensor] = None,
               residual_bias: Optional[torch.Tensor] = None, width: Optional[int] = None,
               residual_scale: Optional[torch.Tensor] = None) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """LayerNorm of ``x (..., D)`` over ``D`` with ``weight (D,)`` and optional ``bias (D,)``.

    Returns a contiguous ``(..., D)`` tensor in ``x``'s dtype (statistics in float32). With
    ``residual`` (same shape as ``x``): ``(LayerNorm(s), s)`` with ``s = x + residual``, or
    ``s = x + (residual + residual_bias)`` with a ``(D,)`` ``residual_bias``, or
    ``s = x + residual * residual_scale`` with an ``(N,)`` ``residual_scale``, one factor per sample
    ``residual[n]``. ``width`` (> D, without ``residual``): a ``(..., width)`` result, zeros past channel D.
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
    if width is not None:
        width = check_int(op, "width", width, minimum=x.shape[-1])
        if residual is not None:
            raise ValueError("layer_norm: width= pads the plain form's output; it does not combine with residual=")
    if residual is not None:
        return _add_layer_norm(x, residual, weight, bias, eps, impl, residual_bias, residual_scale)
    for name, value in (("residual_bias", residual_bias), ("residual_scale", residual_scale)):
        if value is not None:
            raise ValueError(f"layer_norm: {name} belongs to a residual branch; pass residual= too")
    supported = {"triton": _triton_supports(x, weight, bias), "reference": True}
    pad = 0 if width is None else width - x.shape[-1]
    if pick("layer_norm", impl, supported) == "triton":
        return torch.ops.visionattn.layer_norm_triton(x, weight, bias, float(eps), width if pad else 0)
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return F.pad(y, (0, pad)) if pad else y


def _add_supports(x: torch.Tensor, r: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """The fused kernel takes x and r of one shape, each read as (rows, D) through a row stride,
    floating dtypes that may differ (as under autocast), on CUDA or the interpreter."""
    floats = (torch.float32, torch.float16, torch.bfloat16)
    return (can_run(x, dtypes=floats) and r.device == x.device and r.dtype in floats and weight.dtype in floats
            and (bias is None or bias.dtype in floats) and x.dim() >= 1 and x.shape[-1] <= 8192
            and x.stride(-1) == 1 and r.stride(-1) == 1 and rows_are_a_view(x) and rows_are_a_view(r))


def _add_layer_norm(x, r, weight, bias, eps, impl, rb=None, k=None):
    if r.shape != x.shape:
        raise ValueError(f"layer_norm: residual of shape {tuple(r.shape)} must have x's shape {tuple(x.shape)} "
                         f"(broadcast it first)")
    # the residual bias is the residual branch's own (a convolution's bias): r's dtypes, not x's
    check_params("layer_norm", r, dict(residual_bias=rb), param_dtypes(r))
    if rb is not None and tuple(rb.shape) != (x.shape[-1],):
        raise ValueError(f"layer_norm: residual_bias of shape {tuple(rb.shape)} must be ({x.shape[-1]},), one value "
                         f"per channel of the last axis")
    if k is not None:
        _check_residual_scale(r, rb, k)
    triton_ok = (_add_supports(x, r, weight, bias) and (rb is None or (rb.dtype == r.dtype and not needs_grad(rb)))
                 and (k is None or not needs_grad(k)))
    if pick("layer_norm", impl, {"triton": triton_ok, "reference": True}) == "triton":
        s_dtype = torch.promote_types(x.dtype, r.dtype)
        y_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else s_dtype
        y, s, _, _ = torch.ops.visionattn.add_layer_norm_triton(x, r, weight, bias, float(eps), y_dtype, rb,
                                                                None if k is None else k.contiguous())
        return y, s
    if k is not None:
        r = r * k.view((-1,) + (1,) * (r.dim() - 1))
    s = x + (r if rb is None else r + rb)
    return F.layer_norm(s, (s.shape[-1],), weight, bias, eps), s


def _check_residual_scale(r: torch.Tensor, rb: Optional[torch.Tensor], k: torch.Tensor) -> None:
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"layer_norm: residual_scale must be a torch.Tensor or None, got {type(k).__name__}")
    if rb is not None:
        raise ValueError("layer_norm: residual_bias and residual_scale do not combine; add the bias to the "
                         "residual before scaling it")
    if r.dim() < 2 or tuple(k.shape) != (r.shape[0],):
        raise ValueError(f"layer_norm: residual_scale of shape {tuple(k.shape)} must be ({r.shape[0]},), one "
                         f"factor per sample of the residual {tuple(r.shape)} (flatten a (N, 1, ..., 1) one)")
    if k.dtype != r.dtype or k.device != r.device:
        raise ValueError(f"layer_norm: residual_scale ({k.dtype}, {k.device}) must have the residual's dtype and "
                         f"device ({r.dtype}, {r.device}): residual_scale.to(residual)")


def example_inputs(device="cpu", dtype=torch.float32, tokens: int = 2 * 96 * 312, dim: int = 42,
                   residual: int = 0, **_) -> Dict:
    """Typical call: ``norm0`` of MatchStereo-T at the 1/4 level of a 384x1248 pair (C + 2 + 2h = 42).
    ``residual=1``: the fused residual form with a bias, e.g. ``tokens=401408 dim=64 residual=1`` for
    BiFormer-S's stage 1 at batch 128."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, dim, generator=g).to(device, dtype)
    weight = (1 + 0.1 * torch.randn(dim, generator=g)).to(device, dtype)
    if not residual:
        return dict(x=x, weight=weight, eps=1e-5)
    bias = (0.1 * torch.randn(dim, generator=g)).to(device, dtype)
    return dict(x=x, weight=weight, bias=bias, eps=1e-6, residual=torch.randn(tokens, dim, generator=g).to(device, dtype))
