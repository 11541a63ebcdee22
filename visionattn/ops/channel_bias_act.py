"""Convolution epilogue in one pass: per-channel bias, optional GELU, optional scaled residual.

For a feature map ``y: (B, C, H, W)`` and per-channel ``bias, scale: (C,)``:

    out = residual + scale * act(y + bias)      (act = GELU (erf) or identity; residual, scale optional)

Why: cuDNN convolutions do not take a bias, so PyTorch adds a conv's bias in its own pass over the
output, and the GELU / residual add that follow are more passes. Running the conv without bias and
this op after it reads and writes the map once. FFNet's token mixer uses it after its two depthwise
convs (bias + GELU; bias + layer scale + residual).

Implementations (``impl=``):
- ``"reference"``: the formula in PyTorch ops (each its own pass), any device/layout. CPU default.
- ``"triton"``: one elementwise kernel over the (B*H*W, C) rows of a channels_last map (fp32
  math, one rounding at the end), the custom op ``visionattn::channel_bias_act`` with a fake
  kernel and autograd (backward: the reference's, recomputed; :mod:`._channel_bias_act_triton`).
  CUDA default for channels_last maps (CPU under ``TRITON_INTERPRET=1``).
"""
from typing import Optional

import torch
import torch.nn.functional as F

from . import _channel_bias_act_triton
from ._checks import param_dtypes, check_params, check_tensors
from ._triton import can_run, launch_directly, triton
from .dispatch import pick

IMPLS = ("triton", "reference")


def channel_bias_act_reference(y: torch.Tensor, bias: torch.Tensor, residual: Optional[torch.Tensor] = None,
                               scale: Optional[torch.Tensor] = None, gelu: bool = False) -> torch.Tensor:
    """residual + scale * act(y + bias). y, residual: (B, C, H, W); bias, scale: (C,)."""
    out = y + bias.view(1, -1, 1, 1)
    if gelu:
        out = F.gelu(out)
    if scale is not None:
        out = out * scale.view(1, -1, 1, 1)
    return out if residual is None else residual + out


def _setup_context(ctx, inputs, output):
    y, bias, residual, scale, gelu = inputs
    ctx.save_for_backward(y, bias, scale)
    ctx.gelu, ctx.has_residual = gelu, residual is not None


def _backward_by_reference(ctx, grad):
    y, bias, scale = ctx.saved_tensors
    with torch.enable_grad():  # the reference's gradients, recomputed (this op targets inference)
        y_, bias_ = y.detach().requires_grad_(), bias.detach().requires_grad_()
        scale_ = None if scale is None else scale.detach().requires_grad_()
        out = channel_bias_act_reference(y_, bias_, None, scale_, ctx.gelu)
        wrt = [y_, bias_] + ([] if scale_ is None else [scale_])
        grads = torch.autograd.grad(out, wrt, grad)
    g_scale = None if scale is None else grads[2]
    return grads[0], grads[1], grad if ctx.has_residual else None, g_scale, None


if triton is not None:  # the Triton custom op differentiates as the reference does
    _channel_bias_act_triton.channel_bias_act_triton.register_autograd(_backward_by_reference,
                                                                    setup_context=_setup_context)


def _is_nhwc(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def _triton_supports(y: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
    """Whether the Triton kernel can run these inputs: channels_last y (and residual, of y's dtype)."""
    return can_run(y, residual) and _is_nhwc(y) and (residual is None or _is_nhwc(residual))


def resolve_impl(y: torch.Tensor, residual: Optional[torch.Tensor] = None, impl: str = "auto") -> str:
    """The implementation :func:`channel_bias_act` would run for these inputs (callers that only
    restructure their graph for the one-pass kernel ask first: on the reference path a conv with its
    own bias is as good)."""
    return pick("channel_bias_act", impl, {"triton": _triton_supports(y, residual), "reference": True})


def channel_bias_act(y: torch.Tensor, bias: torch.Tensor, residual: Optional[torch.Tensor] = None,
                     scale: Optional[torch.Tensor] = None, gelu: bool = False, impl: str = "auto") -> torch.Tensor:
    """``residual + scale * act(y + bias)`` (formula in the module docstring).

    Args:
        y: (B, C, H, W) conv output without its bias.
        bias: (C,); scale: (C,) or None (layer scale); residual: (B, C, H, W) or None.
        gelu: apply GELU (erf form) after the bias.
        impl: "auto", "triton" (channels_last y/residual) or "reference".
    Returns:
        (B, C, H, W), y's dtype (channels_last from the Triton path).
    """
    op = "channel_bias_act"
    check_tensors(op, dict(y=y, residual=residual))
    check_params(op, y, dict(bias=bias, scale=scale), param_dtypes(y))
    if bias is None:
        raise TypeError("channel_bias_act: bias must be a (C,) tensor, got None")
    C = y.shape[1] if y.dim() == 4 else -1
    if (y.dim() != 4 or bias.shape != (C,) or (scale is not None and scale.shape != (C,))
            or (residual is not None and residual.shape != y.shape)):
        raise ValueError(f"channel_bias_act expects y, residual: (B, C, H, W) and bias, scale: (C,); got y "
                         f"{tuple(y.shape)}, bias {tuple(bias.shape)}, scale "
                         f"{None if scale is None else tuple(scale.shape)}, residual "
                         f"{None if residual is None else tuple(residual.shape)}")
    if resolve_impl(y, residual, impl) == "triton":
        if launch_directly(y, bias, residual, scale):
            return _channel_bias_act_triton.channel_bias_act_launch(y, bias, residual, scale, gelu)
        return torch.ops.visionattn.channel_bias_act(y, bias, residual, scale, gelu)
    return channel_bias_act_reference(y, bias, residual, scale, gelu)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 32, channels: int = 88, height: int = 64,
                   width: int = 64, gelu: bool = False, residual: bool = True, scale: bool = False) -> dict:
    """FFNet-2 stage-0 token mixer at 256x256 (batch 32 by default): the value conv's bias + residual."""
    g = torch.Generator().manual_seed(0)

    def nhwc(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)

    out = dict(y=nhwc(batch, channels, height, width),
               bias=torch.randn(channels, generator=g).to(device=device, dtype=dtype), gelu=gelu)
    if residual:
        out["residual"] = nhwc(batch, channels, height, width)
    if scale:
        out["scale"] = torch.rand(channels, generator=g).to(device=device, dtype=dtype)
    return out
