"""Depth-wise 2-D convolution (stride 1, zero "same" padding) with an optional fused epilogue, and a
channels_last kernel.

For ``x: (B, C, H, W)``, ``weight: (C, 1, K, K)`` with K odd, and optional per-channel
``bias, scale: (C,)`` and ``residual: (B, C, H, W)``:

    y   = conv2d(x, weight, bias, padding=K // 2, groups=C)     # zero bias when None
    out = residual + scale * act(y)                              # act = GELU (erf) or identity

(no residual: ``scale * act(y)``; no scale: ``act(y) [+ residual]``). Without the optional
arguments it is ``F.conv2d(x, weight, padding=K // 2, groups=C)``.

Why: Restore-RWKV's Omni-Shift (one 5x5 depth-wise kernel in eval mode) runs on the channels_last
view of (B, T, C) tokens, and FFNet's blocks run 3x3/7x7 depth-wise convs on channels_last maps.
PyTorch's native depth-wise kernel takes NCHW only, cuDNN's channels_last depth-wise kernels reach
a small fraction of the memory bandwidth (FFNet's profile, benchmarks/ffnet.md) and add a bias in
a separate pass; FFNet's token mixer follows its depth-wise convs with bias + GELU and bias + layer
scale + residual, which this op applies before the single store.

Implementations (``impl=``):
- ``"reference"``: ``torch.nn.functional.conv2d`` then the epilogue in PyTorch ops (any
  device/layout). CPU default.
- ``"triton"``: channels_last x (and residual), float32 accumulation and epilogue, one rounding
  (the custom op ``visionattn::depthwise_conv2d`` with a fake kernel and the reference's
  gradients; :mod:`._depthwise_conv2d_triton`). CUDA default for channels_last maps (CPU under
  ``TRITON_INTERPRET=1``).
"""
from typing import Optional

import torch
import torch.nn.functional as F

from . import _depthwise_conv2d_triton
from ._checks import check_params, check_tensors, param_dtypes
from ._triton import can_run, launch_directly, triton
from .dispatch import pick

IMPLS = ("triton", "reference")


def depthwise_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                               residual: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                               gelu: bool = False) -> torch.Tensor:
    """F.conv2d with groups = channels and zero padding K // 2, then residual + scale * act(.)."""
    out = F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])  # (B, C, H, W)
    if gelu:
        out = F.gelu(out)
    if scale is not None:
        out = out * scale.view(1, -1, 1, 1)
    return out if residual is None else residual + out


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, scale, gelu = inputs
    ctx.save_for_backward(x, weight, bias, scale)
    ctx.gelu, ctx.has_residual = gelu, residual is not None


def _backward_by_reference(ctx, grad):
    x, weight, bias, scale = ctx.saved_tensors
    with torch.enable_grad():  # the reference's gradients, recomputed (this op targets inference)
        leaves = [None if t is None else t.detach().requires_grad_() for t in (x, weight, bias, scale)]
        out = depthwise_conv2d_reference(leaves[0], leaves[1], leaves[2], None, leaves[3], ctx.gelu)
        wrt = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(out, wrt, grad))
    g_x, g_weight, g_bias, g_scale = (None if t is None else next(grads) for t in leaves)
    return g_x, g_weight, g_bias, grad if ctx.has_residual else None, g_scale, None


if triton is not None:  # the Triton custom op differentiates as the reference does
    _depthwise_conv2d_triton.depthwise_conv2d_triton.register_autograd(_backward_by_reference,
                                                                      setup_context=_setup_context)


def _is_nhwc(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def _triton_supports(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor] = None) -> bool:
    """Whether the Triton kernel can run these inputs: channels_last x (and residual), weight of x's dtype."""
    return can_run(x, weight, residual) and _is_nhwc(x) and (residual is None or _is_nhwc(residual))


def resolve_impl(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor] = None,
                 impl: str = "auto") -> str:
    """The implementation :func:`depthwise_conv2d` would run for these inputs (callers that restructure
    their graph only for the fused kernel ask first, as FFNet does: on the reference path cuDNN's conv
    with its own bias is as good)."""
    return pick("depthwise_conv2d", impl, {"triton": _triton_supports(x, weight, residual), "reference": True})


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     residual: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                     gelu: bool = False, impl: str = "auto") -> torch.Tensor:
    """Depth-wise convolution with an optional epilogue (formula in the module docstring).

    Args:
        x: (B, C, H, W); the Triton path takes channels_last maps.
        weight: (C, 1, K, K), K odd.
        bias: (C,) or None, added to the convolution.
        residual: (B, C, H, W) or None (channels_last for the Triton path).
        scale: (C,) or None (layer scale, applied after the activation).
        gelu: apply GELU (erf form) after the bias.
        impl: "auto", "triton" or "reference".
    Returns:
        (B, C, H, W) of x's dtype (channels_last from the Triton path).
    """
    op = "depthwise_conv2d"
    check_tensors(op, dict(x=x, residual=residual))
    check_params(op, x, dict(weight=weight, bias=bias, scale=scale), param_dtypes(x))
    if (x.dim() != 4 or weight.dim() != 4 or weight.shape[0] != x.shape[1] or weight.shape[1] != 1
            or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0):
        raise ValueError(f"depthwise_conv2d expects x: (B, C, H, W) and weight: (C, 1, K, K) with K odd; got x "
                         f"{tuple(x.shape)}, weight {tuple(weight.shape)}")
    C = x.shape[1]
    for name, t in (("bias", bias), ("scale", scale)):
        if t is not None and t.shape != (C,):
            raise ValueError(f"depthwise_conv2d: {name} must have shape ({C},) (one value per channel of x "
                             f"{tuple(x.shape)}), got {tuple(t.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"depthwise_conv2d: residual must have x's shape {tuple(x.shape)}, got "
                         f"{tuple(residual.shape)}")
    if resolve_impl(x, weight, residual, impl) == "triton":
        if launch_directly(x, weight, bias, residual, scale):
            return _depthwise_conv2d_triton.depthwise_conv2d_launch(x, weight, bias, residual, scale, gelu)
        return torch.ops.visionattn.depthwise_conv2d(x, weight, bias, residual, scale, gelu)
    return depthwise_conv2d_reference(x, weight, bias, residual, scale, gelu)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 1, channels: int = 48, height: int = 256,
                   width: int = 256, kernel: int = 5, bias: bool = False, gelu: bool = False,
                   residual: bool = False, scale: bool = False) -> dict:
    """Restore-RWKV level-1 Omni-Shift at 256x256 (eval: one 5x5 kernel), channels_last; ``bias``,
    ``gelu``, ``residual``, ``scale`` add the epilogue (FFNet: ``kernel=7, bias=True, gelu=True``...)."""
    g = torch.Generator().manual_seed(0)

    def nhwc(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)

    out = dict(x=nhwc(batch, channels, height, width),
               weight=torch.randn(channels, 1, kernel, kernel, generator=g).to(device=device, dtype=dtype) / kernel)
    if bias:
        out["bias"] = torch.randn(channels, generator=g).to(device=device, dtype=dtype)
    if residual:
        out["residual"] = nhwc(batch, channels, height, width)
    if scale:
        out["scale"] = torch.rand(channels, generator=g).to(device=device, dtype=dtype)
    if gelu:
        out["gelu"] = True
    return out
