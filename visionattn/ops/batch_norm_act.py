"""BatchNorm with running statistics (eval mode), residual and ReLU, in one pass.

For ``x: (N, C)`` or ``(B, C, H, W)``, per-channel statistics and affine parameters (all (C,)):

    out = act((x - running_mean) / sqrt(running_var + eps) * weight + bias + residual)

with ``residual`` (x's shape) optional and ``act`` = ReLU or none.

Why: the LiDAR networks (ScatterFormer's voxel layers, its dense BEV backbone and CenterHead) run
``conv -> BN -> ReLU`` and ``BN -> + residual -> ReLU`` about a hundred times a frame, on (100k, 128)
voxel features and (128, 240, 240) BEV maps. In PyTorch that is two or three passes over each map
(the normalisation, the add, the ReLU) plus a handful of small launches that fold the statistics,
and its broadcasting multiply-add does not take the vectorised path. Here each map is read and
written once, the statistics folded where the channels are loaded. Training-mode BatchNorm (batch
statistics) is PyTorch's; this op is the eval-mode normalisation only.

Implementations (``impl=``):

- ``"triton"``: one elementwise kernel over the (M, C) rows of (N, C)-contiguous features or a
  channels_last map, float32 math and one rounding at the end (:mod:`._batch_norm_act_triton`);
  the custom op ``visionattn::batch_norm_act`` with a fake kernel and autograd (backward: the
  reference's gradients, recomputed; frozen-BN fine-tuning trains through it). fp32/fp16/bf16 on
  CUDA (on CPU tensors under ``TRITON_INTERPRET=1``, for the tests). CUDA default for those layouts.
- ``"reference"``: ``F.batch_norm(training=False)``, the add and ``F.relu``, any device, dtype and
  layout. CPU default.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import _batch_norm_act_triton
from ._checks import check_number, check_params, check_tensors, param_dtypes
from ._triton import can_run, launch_directly, triton
from .dispatch import pick

IMPLS: Tuple[str, ...] = ("triton", "reference")
ACTIVATIONS = (None, "relu")


def batch_norm_act_reference(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                             weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
                             residual: Optional[torch.Tensor] = None, act: Optional[str] = None) -> torch.Tensor:
    """act(BN_eval(x) + residual), each step its own PyTorch op."""
    out = F.batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=eps)
    if residual is not None:
        out = out + residual
    return F.relu(out) if act == "relu" else out


def _check(x, running_mean, running_var, weight, bias, residual, act) -> None:
    op = "batch_norm_act"
    check_tensors(op, dict(x=x, residual=residual))
    params = dict(running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    check_params(op, x, params, param_dtypes(x))
    if x.dim() not in (2, 4):
        raise ValueError(f"batch_norm_act expects (N, C) features or a (B, C, H, W) map; got shape {tuple(x.shape)}")
    C = x.shape[1]
    for name, t in params.items():
        if t is None:
            raise TypeError(f"batch_norm_act: {name} must be a ({C},) tensor, got None (for a BatchNorm without "
                            f"affine parameters or running statistics call F.batch_norm)")
        if tuple(t.shape) != (C,):
            raise ValueError(f"batch_norm_act: {name} must have shape ({C},) for x {tuple(x.shape)}; "
                             f"got {tuple(t.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"batch_norm_act: residual must have x's shape {tuple(x.shape)}; got {tuple(residual.shape)}")
    if act not in ACTIVATIONS:
        raise ValueError(f"batch_norm_act: act={act!r} is not one of {list(ACTIVATIONS)}")


def _rows(t: torch.Tensor) -> bool:
    """Whether ``t`` is a row-major (M, C) view: (N, C) contiguous or a channels_last (B, C, H, W) map."""
    return t.is_contiguous() if t.dim() == 2 else t.is_contiguous(memory_format=torch.channels_last)


def _triton_supports(x: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
    if not (can_run(x, residual) and _rows(x)):
        return False
    # a (B, C, 1, 1) map is contiguous in both layouts: the residual must then have x's strides too
    return residual is None or (_rows(residual) and residual.stride() == x.stride())


def _backward_by_reference(ctx, grad):
    x, mean, var, weight, bias, residual = ctx.saved_tensors
    with torch.enable_grad():  # the reference's gradients, recomputed (the kernel targets inference)
        leaves = [None if t is None else t.detach().requires_grad_(ctx.needs_input_grad[i])
                  for i, t in zip((0, 3, 4, 6), (x, weight, bias, residual))]
        out = batch_norm_act_reference(leaves[0], mean, var, leaves[1], leaves[2], ctx.eps, leaves[3], ctx.act)
        wrt = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wrt, grad) if wrt else ())
    gx, gw, gb, gres = (next(grads) if t is not None and t.requires_grad else None for t in leaves)
    return gx, None, None, gw, gb, None, gres, None


def _setup_context(ctx, inputs, output):
    x, mean, var, weight, bias, eps, residual, act = inputs
    ctx.save_for_backward(x, mean, var, weight, bias, residual)
    ctx.eps, ctx.act = eps, act


if triton is not None:  # the Triton custom op differentiates as the reference does
    _batch_norm_act_triton.batch_norm_act_triton.register_autograd(_backward_by_reference,
                                                                   setup_context=_setup_context)


def batch_norm_act(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor, eps: float = 1e-5, residual: Optional[torch.Tensor] = None,
                   act: Optional[str] = None, impl: str = "auto") -> torch.Tensor:
    """``act(BN_eval(x) + residual)`` (formula in the module docstring).

    Args:
        x: (N, C) features or (B, C, H, W) map.
        running_mean, running_var, weight, bias: (C,), in x's dtype or float32 (read in float32 by
            the Triton path).
        eps: added to the running variance.
        residual: x's shape, added after the normalisation, or None.
        act: ``"relu"`` or None.
        impl: ``"auto"``, ``"triton"`` ((N, C)-contiguous x or channels_last maps) or ``"reference"``.

    Returns:
        x's shape, dtype and layout.
    """
    _check(x, running_mean, running_var, weight, bias, residual, act)
    eps = check_number("batch_norm_act", "eps", eps, 0.0)
    if pick("batch_norm_act", impl, {"triton": _triton_supports(x, residual), "reference": True}) == "triton":
        args = (x, running_mean, running_var, weight, bias, float(eps), residual, act)
        if launch_directly(x, weight, bias, residual):
            return _batch_norm_act_triton.batch_norm_act_launch(*args)
        return torch.ops.visionattn.batch_norm_act(*args)
    return batch_norm_act_reference(x, running_mean, running_var, weight, bias, eps, residual, act)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 1, channels: int = 128, height: int = 240,
                   width: int = 240, voxels: int = 0, residual: bool = True, act: Optional[str] = "relu") -> dict:
    """ScatterFormer's dense BEV backbone at Waymo size: BN + residual + ReLU on a (1, 128, 240, 240)
    channels_last map; ``voxels=N`` gives (N, channels) voxel features instead (its voxel layers:
    ~60k-100k voxels). Statistics and affine parameters in float32, as a model keeps them."""
    g = torch.Generator().manual_seed(0)
    shape = (voxels, channels) if voxels else (batch, channels, height, width)

    def features():
        t = torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
        return t if voxels else t.contiguous(memory_format=torch.channels_last)

    stats = dict(running_mean=torch.randn(channels, generator=g), running_var=torch.rand(channels, generator=g) + 0.5,
                 weight=torch.rand(channels, generator=g) + 0.5, bias=torch.randn(channels, generator=g))
    out = dict(x=features(), **{k: v.to(device) for k, v in stats.items()}, eps=1e-3, act=act)
    if residual:
        out["residual"] = features()
    return out
