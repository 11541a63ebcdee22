"""Depth-wise 2-D convolution (stride 1, zero "same" padding) with a convolution epilogue, on
channels_last maps.

For ``x: (B, C, H, W)``, ``weight: (C, 1, K, K)`` with K odd, and optional per-channel
``bias, scale: (C,)``, ``residual: (B, C, H, W)``:

    y   = F.conv2d(x, weight, bias, padding=K // 2, groups=C)
    out = residual + scale * act(y)             (act = GELU (erf) or identity)

Why: Restore-RWKV's Omni-Shift (one 5x5 depth-wise kernel in eval mode) runs on the channels_last
view of (B, T, C) tokens, and FFNet's token mixers are a 7x7 (or 3x3) depth-wise conv with bias and
GELU, then one with bias, layer scale and the block's residual. PyTorch's native depth-wise kernel
takes NCHW only, cuDNN's channels_last depth-wise kernels reach a small fraction of the memory
bandwidth (FFNet's profile, benchmarks/README.md), and cuDNN adds a bias, an activation and a
residual in passes of their own.

Implementations (``impl=``), fastest first:
- ``"cuda"``: a CUDA C kernel compiled by NVRTC at first use, register sliding windows, float32
  accumulation and epilogue, one rounding (:mod:`._depthwise_conv2d_cuda`). Inference only (no
  gradients, eager): CUDA default for channels_last maps when nothing needs a gradient.
- ``"triton"``: channels_last inputs, float32 accumulation and epilogue, one rounding (the custom op
  ``visionattn::depthwise_conv2d`` with a fake kernel and the reference's gradients;
  :mod:`._depthwise_conv2d_triton`). CUDA default otherwise (CPU under ``TRITON_INTERPRET=1``).
- ``"reference"``: ``torch.nn.functional.conv2d`` and the epilogue in PyTorch ops (any
  device/layout). CPU default.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from . import _depthwise_conv2d_cuda, _depthwise_conv2d_triton
from ._checks import check_params, check_tensors, param_dtypes
from ._triton import can_run, launch_directly, needs_grad, triton
from .dispatch import pick, portable

IMPLS = ("cuda", "triton", "reference")


def depthwise_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                               residual: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                               gelu: bool = False) -> torch.Tensor:
    """F.conv2d with groups = channels and zero padding K // 2, then the epilogue (float32
    parameters of a half-precision x are cast to its dtype, as autocast would)."""
    bias = None if bias is None else bias.to(x.dtype)
    out = F.conv2d(x, weight.to(x.dtype), bias, padding=weight.shape[-1] // 2, groups=x.shape[1])
    if gelu:
        out = F.gelu(out)
    if scale is not None:
        out = out * scale.to(x.dtype).view(1, -1, 1, 1)
    return out if residual is None else residual + out


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, scale, gelu = inputs
    ctx.save_for_backward(x, weight, bias, scale)
    ctx.gelu, ctx.has_residual = gelu, residual is not None


def _backward_by_reference(ctx, grad):
    x, weight, bias, scale = ctx.saved_tensors
    with torch.enable_grad():  # the reference's gradients, recomputed (this op targets inference)
        leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, bias, scale)]
        out = depthwise_conv2d_reference(leaves[0], leaves[1], leaves[2], None, leaves[3], ctx.gelu)
        wrt = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(out, wrt, grad))
    g_x, g_w, g_b, g_s = (next(grads) if t is not None else None for t in leaves)
    return g_x, g_w, g_b, grad if ctx.has_residual else None, g_s, None


if triton is not None:  # the Triton custom op differentiates as the reference does
    _depthwise_conv2d_triton.depthwise_conv2d_triton.register_autograd(_backward_by_reference,
                                                                      setup_context=_setup_context)


def _nhwc(t: Optional[torch.Tensor]) -> bool:
    return t is None or t.is_contiguous(memory_format=torch.channels_last)


def resolve_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 residual: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                 impl: str = "auto") -> str:
    """The implementation :func:`depthwise_conv2d` would run for these inputs (callers that
    restructure their graph around the fused epilogue ask first)."""
    tensors = (weight, bias, residual, scale)
    # neither kernel under torch.fx tracing nor inside portable_ops (export): see _triton.can_run
    fast = not isinstance(x, torch.fx.Proxy) and not portable() and _nhwc(x) and _nhwc(residual)
    cuda = (fast and not torch.compiler.is_compiling() and not needs_grad(x, *tensors)
            and _depthwise_conv2d_cuda.supports(x, *tensors))
    return pick("depthwise_conv2d", impl, {"cuda": cuda, "triton": fast and can_run(x, *tensors),
                                           "reference": True})


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     residual: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                     gelu: bool = False, impl: str = "auto") -> torch.Tensor:
    """Depth-wise convolution and epilogue (formula in the module docstring).

    Args:
        x: (B, C, H, W); the CUDA and Triton paths take channels_last maps.
        weight: (C, 1, K, K), K odd.
        bias, scale: (C,) or None; residual: (B, C, H, W) or None.
        gelu: apply GELU (erf form) after the bias.
        impl: "auto", "cuda", "triton" or "reference".
    Returns:
        (B, C, H, W) of x's dtype (channels_last from the CUDA and Triton paths).
    """
    op = "depthwise_conv2d"
    check_tensors(op, dict(x=x, residual=residual))
    check_params(op, x, dict(weight=weight, bias=bias, scale=scale), param_dtypes(x))
    C = x.shape[1] if x.dim() == 4 else -1
    if (x.dim() != 4 or weight.dim() != 4 or weight.shape[0] != C or weight.shape[1] != 1
            or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0
            or any(t is not None and t.shape != (C,) for t in (bias, scale))
            or (residual is not None and residual.shape != x.shape)):
        raise ValueError(f"depthwise_conv2d expects x, residual: (B, C, H, W), weight: (C, 1, K, K) with K odd and "
                         f"bias, scale: (C,); got x {tuple(x.shape)}, weight {tuple(weight.shape)}, bias "
                         f"{None if bias is None else tuple(bias.shape)}, scale "
                         f"{None if scale is None else tuple(scale.shape)}, residual "
                         f"{None if residual is None else tuple(residual.shape)}")
    chosen = resolve_impl(x, weight, bias, residual, scale, impl)
    if chosen == "cuda":
        return _depthwise_conv2d_cuda.depthwise_conv2d_launch(x, weight, bias, residual, scale, gelu)
    if chosen == "triton":
        if launch_directly(x, weight, bias, residual, scale):
            return _depthwise_conv2d_triton.depthwise_conv2d_launch(x, weight, bias, residual, scale, gelu)
        return torch.ops.visionattn.depthwise_conv2d(x, weight, bias, residual, scale, gelu)
    return depthwise_conv2d_reference(x, weight, bias, residual, scale, gelu)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 1, channels: int = 48, height: int = 256,
                   width: int = 256, kernel: int = 5) -> dict:
    """Restore-RWKV level-1 Omni-Shift at 256x256 (eval: one 5x5 kernel), channels_last."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, height, width, generator=g).to(device=device, dtype=dtype)
    return dict(x=x.contiguous(memory_format=torch.channels_last),
                weight=torch.randn(channels, 1, kernel, kernel, generator=g).to(device=device, dtype=dtype) / kernel)
