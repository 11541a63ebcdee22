"""GroupNorm followed by an activation, in one normalisation pass, for NCHW and channels_last maps.

For ``x: (B, C, H, W)``, ``G`` groups of ``C / G`` consecutive channels, per-channel ``weight``,
``bias`` and an optional ``input_bias`` (all (C,)):

    z   = x + input_bias                                  (input_bias optional)
    out = act((z - mean_bg) / sqrt(var_bg + eps) * weight + bias)

with mean and (biased) variance over the ``C/G * H * W`` elements of each (batch, group), and
``act`` = SiLU (``z * sigmoid(z)``, the "swish" of VQGAN-style networks), GELU (the exact erf form)
or none. With one group per channel it is InstanceNorm (MatchStereo's stem: conv, InstanceNorm, GELU).

Why: VQGAN-style autoencoders (RestoreFormer, taming-transformers, Stable Diffusion's VAE) run
``GroupNorm(32) -> swish`` before every 3x3 convolution. PyTorch computes it in three passes over
the map (statistics, normalisation, activation), and its channels_last GroupNorm statistics take
one thread block per (batch, group), which at batch 1 leaves most of a large GPU idle: for
RestoreFormer++ at 512x512 (bf16, channels_last, H200) GroupNorm statistics were 44 % of the GPU
time and the elementwise passes around them another third. ``input_bias`` lets the convolution
that produced ``x`` run without its bias (PyTorch adds a convolution's bias in a pass of its own):
the bias is added where the map is read anyway.

Implementations (``impl=``):

- ``"triton"``: split-reduction statistics (Welford in float32, many programs per group), then one
  kernel that normalises, applies the activation and writes the output once, in x's dtype and
  layout (:mod:`._group_norm_act_triton`); the custom op ``visionattn::group_norm_act`` with a
  fake kernel and autograd (backward: the reference's gradients, recomputed; the op targets
  inference). fp32/fp16/bf16 on CUDA (on CPU tensors under ``TRITON_INTERPRET=1``, for the tests),
  NCHW-contiguous or channels_last maps. CUDA default.
- ``"reference"``: ``F.group_norm`` then ``F.silu`` / ``F.gelu``, any device, dtype and layout. CPU default.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._checks import check_int, check_number, check_params, check_tensors
from . import _group_norm_act_triton
from ._group_norm_act_triton import ACTIVATIONS, layout
from ._triton import can_run, launch_directly, triton
from .dispatch import pick

IMPLS: Tuple[str, ...] = ("triton", "reference")


def group_norm_act_reference(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor] = None,
                             bias: Optional[torch.Tensor] = None, eps: float = 1e-5, act: Optional[str] = None,
                             input_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """act(GroupNorm(x + input_bias)), each step its own PyTorch op. x: (B, C, H, W); the rest (C,)."""
    if input_bias is not None:
        x = x + input_bias.view(1, -1, 1, 1)
    out = F.group_norm(x, num_groups, weight, bias, eps)  # (B, C, H, W)
    if act == "silu":
        out = F.silu(out)
    elif act == "gelu":
        out = F.gelu(out)
    return out


def _check(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
           act: Optional[str], input_bias: Optional[torch.Tensor]) -> None:
    op = "group_norm_act"
    check_tensors(op, dict(x=x))
    check_params(op, x, dict(weight=weight, bias=bias, input_bias=input_bias))
    num_groups = check_int(op, "num_groups", num_groups)
    if x.dim() != 4:
        raise ValueError(f"group_norm_act expects a (B, C, H, W) map; got shape {tuple(x.shape)}")
    C = x.shape[1]
    if num_groups < 1 or C % num_groups:
        raise ValueError(f"group_norm_act: num_groups={num_groups} must divide the {C} channels")
    for name, t in (("weight", weight), ("bias", bias), ("input_bias", input_bias)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"group_norm_act: {name} must have shape ({C},) for x {tuple(x.shape)}; "
                             f"got {tuple(t.shape)}")
    if act not in ACTIVATIONS:
        raise ValueError(f"group_norm_act: act={act!r} is not one of {list(ACTIVATIONS)}")


def _backward_by_reference(ctx, grad):
    x, weight, bias, input_bias = ctx.saved_tensors
    with torch.enable_grad():  # the reference's gradients, recomputed (the kernel targets inference)
        leaves = [None if t is None else t.detach().requires_grad_(ctx.needs_input_grad[i])
                  for i, t in zip((0, 2, 3, 6), (x, weight, bias, input_bias))]
        out = group_norm_act_reference(leaves[0], ctx.num_groups, leaves[1], leaves[2], ctx.eps, ctx.act, leaves[3])
        wrt = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wrt, grad) if wrt else ())
    gx, gw, gb, gxb = (next(grads) if t is not None and t.requires_grad else None for t in leaves)
    return gx, None, gw, gb, None, None, gxb


def _setup_context(ctx, inputs, output):
    x, num_groups, weight, bias, eps, act, input_bias = inputs
    ctx.save_for_backward(x, weight, bias, input_bias)
    ctx.num_groups, ctx.eps, ctx.act = num_groups, eps, act


if triton is not None:  # the Triton custom op differentiates as the reference does
    _group_norm_act_triton.group_norm_act_triton.register_autograd(_backward_by_reference,
                                                                   setup_context=_setup_context)


def _triton_supports(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                     input_bias: Optional[torch.Tensor] = None) -> bool:
    """Float maps on CUDA (or the interpreter), NCHW-contiguous or channels_last; the per-channel
    tensors may be of any float dtype (read in float32)."""
    params_ok = all(t is None or (t.is_floating_point() and t.device == x.device) for t in (weight, bias, input_bias))
    return can_run(x) and layout(x) != "" and params_ok


def resolve_impl(x: torch.Tensor, impl: str = "auto") -> str:
    """The implementation :func:`group_norm_act` would run for ``x`` (a caller that restructures its
    graph for the kernel, e.g. folding a convolution's bias into ``input_bias``, asks first)."""
    return pick("group_norm_act", impl, {"triton": _triton_supports(x), "reference": True})


def group_norm_act(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, eps: float = 1e-5, act: Optional[str] = None, *,
                   input_bias: Optional[torch.Tensor] = None, impl: str = "auto") -> torch.Tensor:
    """``act(GroupNorm(x + input_bias))`` (formula in the module docstring).

    Args:
        x: (B, C, H, W) map, C a multiple of ``num_groups``.
        num_groups: groups of C / num_groups consecutive channels (32 in VQGAN-style networks).
        weight, bias: (C,) affine parameters, or None (identity).
        eps: added to the variance (RestoreFormer: 1e-6).
        act: ``"silu"`` (x * sigmoid(x)), ``"gelu"`` (erf form) or None.
        input_bias: (C,) added to x before the statistics (a producing convolution's bias), or None.
        impl: ``"auto"``, ``"triton"`` or ``"reference"``.

    Returns:
        (B, C, H, W) in x's dtype; statistics in float32. The Triton path keeps x's layout (NCHW in,
        NCHW out; channels_last in, channels_last out).
    """
    _check(x, num_groups, weight, bias, act, input_bias)
    eps = check_number("group_norm_act", "eps", eps, 0.0)
    supported = {"triton": _triton_supports(x, weight, bias, input_bias), "reference": True}
    if pick("group_norm_act", impl, supported) == "triton":
        args = (x, num_groups, weight, bias, float(eps), act, input_bias)
        if launch_directly(x, weight, bias, input_bias):
            return _group_norm_act_triton.group_norm_act_launch(*args)
        return torch.ops.visionattn.group_norm_act(*args)
    return group_norm_act_reference(x, num_groups, weight, bias, eps, act, input_bias)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 1, channels: int = 128, height: int = 512,
                   width: int = 512, num_groups: int = 32, act: Optional[str] = "silu", channels_last: bool = True,
                   with_input_bias: bool = True) -> dict:
    """RestoreFormer++ at 512x512: the first decoder block of the 512x512 level (128 channels, 4 per
    group, a million elements per group), with its producing convolution's bias folded in."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(batch, channels, height, width, generator=g) * 2 + 0.5).to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = dict(x=x, num_groups=num_groups, eps=1e-6, act=act,
               weight=(1 + 0.2 * torch.randn(channels, generator=g)).to(device=device, dtype=dtype),
               bias=(0.1 * torch.randn(channels, generator=g)).to(device=device, dtype=dtype))
    if with_input_bias:
        out["input_bias"] = (0.1 * torch.randn(channels, generator=g)).to(device=device, dtype=dtype)
    return out
