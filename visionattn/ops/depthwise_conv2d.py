"""Depth-wise 2-D convolution (stride 1, zero "same" padding, no bias) with a channels_last kernel.

For ``x: (B, C, H, W)`` and ``weight: (C, 1, K, K)`` with K odd:
``out[b, c] = conv2d(x[b, c], weight[c], padding=K // 2)``, i.e. ``F.conv2d(x, weight, padding=K//2, groups=C)``.

Why: Restore-RWKV's Omni-Shift (one 5x5 depth-wise kernel in eval mode) runs on the channels_last
view of (B, T, C) tokens. PyTorch's native depth-wise kernel takes NCHW only, and cuDNN's
channels_last depth-wise kernels reach a small fraction of the memory bandwidth (FFNet's profile,
benchmarks/README.md); this kernel reads each input row segment with contiguous channels and
writes the output once.

Implementations (``impl=``):
- ``"reference"``: ``torch.nn.functional.conv2d`` (any device/layout). CPU default.
- ``"triton"``: channels_last inputs, float32 accumulation, one rounding (the custom op
  ``visionattn::depthwise_conv2d`` with a fake kernel and the reference's gradients;
  :mod:`._depthwise_conv2d_triton`). CUDA default for channels_last maps (CPU under
  ``TRITON_INTERPRET=1``).
"""
import torch
import torch.nn.functional as F

from . import _depthwise_conv2d_triton
from ._checks import check_params, check_tensors, param_dtypes
from ._triton import can_run, launch_directly, triton
from .dispatch import pick

IMPLS = ("triton", "reference")


def depthwise_conv2d_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.conv2d with groups = channels and zero padding K // 2."""
    return F.conv2d(x, weight, padding=weight.shape[-1] // 2, groups=x.shape[1])


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward_by_reference(ctx, grad):
    x, weight = ctx.saved_tensors
    with torch.enable_grad():  # the reference's gradients, recomputed (this op targets inference)
        x_, w_ = x.detach().requires_grad_(), weight.detach().requires_grad_()
        return torch.autograd.grad(depthwise_conv2d_reference(x_, w_), (x_, w_), grad)


if triton is not None:  # the Triton custom op differentiates as the reference does
    _depthwise_conv2d_triton.depthwise_conv2d_triton.register_autograd(_backward_by_reference,
                                                                      setup_context=_setup_context)


def _triton_supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the Triton kernel can run these inputs: a channels_last x, weight of x's dtype."""
    return can_run(x, weight) and x.is_contiguous(memory_format=torch.channels_last)


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Depth-wise convolution (formula in the module docstring).

    Args:
        x: (B, C, H, W); the Triton path takes channels_last maps.
        weight: (C, 1, K, K), K odd.
        impl: "auto", "triton" or "reference".
    Returns:
        (B, C, H, W) of x's dtype (channels_last from the Triton path).
    """
    op = "depthwise_conv2d"
    check_tensors(op, dict(x=x))
    check_params(op, x, dict(weight=weight), param_dtypes(x))
    if (x.dim() != 4 or weight.dim() != 4 or weight.shape[0] != x.shape[1] or weight.shape[1] != 1
            or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0):
        raise ValueError(f"depthwise_conv2d expects x: (B, C, H, W) and weight: (C, 1, K, K) with K odd; got x "
                         f"{tuple(x.shape)}, weight {tuple(weight.shape)}")
    if pick(op, impl, {"triton": _triton_supports(x, weight), "reference": True}) == "triton":
        if launch_directly(x, weight):
            return _depthwise_conv2d_triton.depthwise_conv2d_launch(x, weight)
        return torch.ops.visionattn.depthwise_conv2d(x, weight)
    return depthwise_conv2d_reference(x, weight)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 1, channels: int = 48, height: int = 256,
                   width: int = 256, kernel: int = 5) -> dict:
    """Restore-RWKV level-1 Omni-Shift at 256x256 (eval: one 5x5 kernel), channels_last."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, height, width, generator=g).to(device=device, dtype=dtype)
    return dict(x=x.contiguous(memory_format=torch.channels_last),
                weight=torch.randn(channels, 1, kernel, kernel, generator=g).to(device=device, dtype=dtype) / kernel)
