"""The gradient of a bias: a layer's output gradient summed over every axis but the channel axis.

For a Linear layer's output gradient ``grad: (..., C)`` (``dim=-1``) or a convolution's
``grad: (B, C, H, W)`` (``dim=1``):

    bias_grad[c] = sum of grad over every index whose channel is c          (shape (C,))

Why: PyTorch computes a bias gradient in the backward of every Linear and convolution with a
generic reduction kernel, which on (M, C) rows with C of 64-768 channels reads the gradient at
a fraction of the memory bandwidth. In a BiFormer-S training step (batch 64, bf16) those 182
reductions took 17 % of the GPU time (5.7 of 33.4 ms on an H200), several times what their bytes
need. The layers in :mod:`visionattn.models.bias_grad_layers` route their bias gradient here.

Implementations (``impl=``):

- ``"triton"``: a column sum over the (M, C) rows of a row-major view: (..., C)-contiguous
  gradients (``dim=-1``) or channels_last (B, C, H, W) maps (``dim=1``). Programs sum blocks of rows
  in float32 into a (programs, C) table, a second kernel sums the table per channel and rounds once
  (:mod:`._bias_grad_triton`). The split is fixed by the shape, so the result is deterministic.
  fp32/fp16/bf16 on CUDA (on CPU tensors under ``TRITON_INTERPRET=1``, for the tests). CUDA default
  for those layouts.
- ``"reference"``: ``grad.sum(...)`` over the other axes, any device, dtype and layout. CPU default.
"""
from typing import Tuple

import torch

from . import _bias_grad_triton
from ._checks import check_tensors
from ._triton import can_run, launch_directly
from .dispatch import pick

IMPLS: Tuple[str, ...] = ("triton", "reference")


def bias_grad_reference(grad: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The sum of ``grad`` over every axis but ``dim``, in ``grad``'s dtype (PyTorch accumulates in float32)."""
    dim = dim % grad.dim()
    return grad.sum([d for d in range(grad.dim()) if d != dim])


def _check(grad: torch.Tensor, dim: int) -> None:
    check_tensors("bias_grad", dict(grad=grad))
    if isinstance(dim, bool) or not isinstance(dim, int) or not -grad.dim() <= dim < grad.dim():
        raise ValueError(f"bias_grad: dim={dim!r} is not an axis of grad {tuple(grad.shape)}; pass the channel axis "
                         f"(-1 for a Linear layer's output, 1 for a convolution's)")


def _triton_supports(grad: torch.Tensor, dim: int) -> bool:
    """A row-major (M, C) view: channels last and contiguous, or a channels_last (B, C, H, W) map."""
    if not can_run(grad):
        return False
    dim = dim % grad.dim()
    if dim == grad.dim() - 1:
        return grad.is_contiguous()
    return dim == 1 and grad.dim() == 4 and grad.is_contiguous(memory_format=torch.channels_last)


def bias_grad(grad: torch.Tensor, dim: int = -1, impl: str = "auto") -> torch.Tensor:
    """The bias gradient of a layer whose bias broadcasts along ``dim`` (formula in the module docstring).

    Args:
        grad: the layer's output gradient, (..., C) for ``dim=-1`` or (B, C, H, W) for ``dim=1``.
        dim: the channel axis.
        impl: ``"auto"``, ``"triton"`` ((..., C)-contiguous with ``dim=-1``, channels_last maps with
            ``dim=1``) or ``"reference"``.

    Returns:
        (C,) in ``grad``'s dtype.
    """
    _check(grad, dim)
    if pick("bias_grad", impl, {"triton": _triton_supports(grad, dim), "reference": True}) == "triton":
        if launch_directly(grad):
            return _bias_grad_triton.bias_grad_launch(grad, grad.shape[dim])
        return torch.ops.visionattn.bias_grad(grad, grad.shape[dim])
    return bias_grad_reference(grad, dim)


def example_inputs(device="cpu", dtype=torch.bfloat16, batch: int = 64, size: int = 56, channels: int = 192) -> dict:
    """BiFormer-S's largest case at 224 and batch 64: the output gradient of a stage-1 qkv projection
    or MLP expansion, (64, 56, 56, 192) tokens with channels last."""
    g = torch.Generator().manual_seed(0)
    return dict(grad=torch.randn(batch, size, size, channels, generator=g).to(device, dtype), dim=-1)
