"""``nn.Linear`` and ``nn.Conv2d`` whose bias gradient runs through :func:`visionattn.ops.bias_grad`.

The forward is PyTorch's (``F.linear`` / ``F.conv2d``, cuBLAS / cuDNN, the bias in the epilogue) and so
are the input and weight gradients (the same matrix products autograd runs). Only the bias gradient
changes: PyTorch's generic reduction reads the output gradient at a fraction of the memory bandwidth
(see :mod:`visionattn.ops.bias_grad`), the op's Triton column sum at close to all of it.

The path is taken while a CUDA graph records the layer (:class:`visionattn.cuda_graph.TrainingGraph`,
``model.cuda_graph=True`` in the training configs) when a bias gradient is wanted and ``bias_grad``'s
fast path can run (CUDA, or the CPU interpreter in tests). There its two kernel launches cost host
time once; at every replay they save the GPU time of PyTorch's reduction. In an eager step they are
two launches from Python in place of one from C++: BiFormer-S's eager training step, already bound by
its launches, took 199 ms against 128 ms with PyTorch's reductions on an H200 (batch 64, bf16), so
eagerly, and under TorchScript, torch.fx tracing and ``use_impl("bias_grad:reference")``, the layers
are plain ``F.linear`` / ``F.conv2d``. Parameters and state-dict keys are ``nn.Linear``'s and
``nn.Conv2d``'s, so checkpoints load unchanged.
Under autocast the inputs are cast as autocast casts them, and the gradients come back in the
dtypes of the parameters and inputs.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..ops._triton import can_run
from ..ops.bias_grad import bias_grad
from ..ops.dispatch import graph_recording, pick

__all__ = ["Conv2d", "Linear", "conv2d", "linear"]


def _routes_bias_grad(x: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    if bias is None or isinstance(x, torch.fx.Proxy) or not (torch.is_grad_enabled() and graph_recording()
                                                              and bias.requires_grad):
        return False
    return pick("bias_grad", "auto", {"triton": can_run(x), "reference": True}) == "triton"


def _autocast(*tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The tensors as autocast would hand them to a matmul or convolution (unchanged outside autocast)."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x, weight, bias = _autocast(x, weight, bias)
        with torch.autocast(x.device.type, enabled=False):
            out = F.linear(x, weight, bias)
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad.matmul(weight) if need_x else None
        grad_w = grad.reshape(-1, grad.shape[-1]).t().mm(x.reshape(-1, x.shape[-1])) if need_w else None
        grad_b = bias_grad(grad, -1) if need_b else None
        return grad_x, grad_w, grad_b


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        x, weight, bias = _autocast(x, weight, bias)
        with torch.autocast(x.device.type, enabled=False):
            out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = None
        if need_x or need_w:  # PyTorch's convolution backward without its bias reduction
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, [0, 0], groups, [need_x, need_w, False])
        grad_b = bias_grad(grad, 1) if need_b else None
        return grad_x, grad_w, grad_b, None, None, None, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear``, with the bias gradient by :func:`visionattn.ops.bias_grad` where it runs."""
    if torch.jit.is_scripting():
        return F.linear(x, weight, bias)
    if _routes_bias_grad(x, bias):
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: Tuple[int, int],
           padding: Tuple[int, int], dilation: Tuple[int, int], groups: int) -> torch.Tensor:
    """``F.conv2d`` with numeric padding, with the bias gradient by :func:`visionattn.ops.bias_grad` where it runs."""
    if torch.jit.is_scripting():
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if _routes_bias_grad(x, bias):
        return _Conv2d.apply(x, weight, bias, stride, padding, dilation, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and keys) whose bias gradient runs through ``bias_grad``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and keys; zero padding given as numbers) whose bias gradient runs
    through ``bias_grad``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError(f"Conv2d: padding={self.padding!r}, padding_mode={self.padding_mode!r}; this layer takes "
                             f"zero padding given as numbers (use nn.Conv2d for the others)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
