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
  kernel and autograd (backward: the reference's, recomputed). CUDA default for channels_last maps.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .dispatch import pick

try:  # triton is optional: the reference runs everywhere
    import triton
    import triton.language as tl
    from triton import knobs

    _INTERPRET = bool(knobs.runtime.interpret)  # TRITON_INTERPRET=1: CPU tensors run the kernel (tests).
    # Read once here: kernels are built at import anyway, and torch.compile cannot trace the knob.
except ImportError:  # pragma: no cover
    triton, _INTERPRET = None, False

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


if triton is not None:
    @triton.jit
    def _channel_bias_act_kernel(y_ptr, bias_ptr, res_ptr, scale_ptr, out_ptr, M, C,
                                 GELU: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_RES: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        """One (BLOCK_M rows x BLOCK_C channels) tile of the row-major (M, C) NHWC view."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < C
        mask = (rows < M)[:, None] & cmask[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        z = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        z = z + tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if GELU:
            z = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
        if HAS_SCALE:
            z = z * tl.load(scale_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:
            z = z + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=mask)


def _is_nhwc(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


@torch.library.custom_op("visionattn::channel_bias_act", mutates_args=())
def _channel_bias_act_triton(y: torch.Tensor, bias: torch.Tensor, residual: Optional[torch.Tensor],
                             scale: Optional[torch.Tensor], gelu: bool) -> torch.Tensor:
    """Channels_last y/residual (B, C, H, W) -> channels_last out of y's dtype."""
    B, C, H, W = y.shape
    out = torch.empty_like(y, memory_format=torch.channels_last)
    M = B * H * W
    block_c = min(triton.next_power_of_2(C), 128)
    block_m = max(2048 // block_c, 1) if y.is_cuda else 4  # tiny tiles on the CPU interpreter: masks get tested
    grid = (triton.cdiv(M, block_m), triton.cdiv(C, block_c))
    _channel_bias_act_kernel[grid](
        y, bias.contiguous(), y if residual is None else residual, bias if scale is None else scale.contiguous(),
        out, M, C, GELU=gelu, HAS_SCALE=scale is not None, HAS_RES=residual is not None,
        BLOCK_M=block_m, BLOCK_C=block_c)
    return out


@_channel_bias_act_triton.register_fake
def _(y, bias, residual, scale, gelu):
    return torch.empty_like(y, memory_format=torch.channels_last)


def _setup_context(ctx, inputs, output):
    y, bias, residual, scale, gelu = inputs
    ctx.save_for_backward(y, bias, scale)
    ctx.gelu, ctx.has_residual = gelu, residual is not None


def _backward(ctx, grad):
    y, bias, scale = ctx.saved_tensors
    with torch.enable_grad():  # the reference's gradients, recomputed (this op targets inference)
        y_, bias_ = y.detach().requires_grad_(), bias.detach().requires_grad_()
        scale_ = None if scale is None else scale.detach().requires_grad_()
        out = channel_bias_act_reference(y_, bias_, None, scale_, ctx.gelu)
        wrt = [y_, bias_] + ([] if scale_ is None else [scale_])
        grads = torch.autograd.grad(out, wrt, grad)
    g_scale = None if scale is None else grads[2]
    return grads[0], grads[1], grad if ctx.has_residual else None, g_scale, None


_channel_bias_act_triton.register_autograd(_backward, setup_context=_setup_context)


def _triton_supported(y: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
    if triton is None or y.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if not _is_nhwc(y) or (residual is not None and (not _is_nhwc(residual) or residual.dtype != y.dtype)):
        return False
    return y.is_cuda or (_INTERPRET and y.device.type == "cpu")


def resolve_impl(y: torch.Tensor, residual: Optional[torch.Tensor] = None, impl: str = "auto") -> str:
    """The implementation :func:`channel_bias_act` would run for these inputs (callers that only
    restructure their graph for the one-pass kernel ask first: on the reference path a conv with its
    own bias is as good)."""
    return pick("channel_bias_act", impl, {"triton": _triton_supported(y, residual), "reference": True})


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
    C = y.shape[1] if y.dim() == 4 else -1
    if (y.dim() != 4 or bias.shape != (C,) or (scale is not None and scale.shape != (C,))
            or (residual is not None and residual.shape != y.shape)):
        raise ValueError(f"channel_bias_act expects y, residual: (B, C, H, W) and bias, scale: (C,); got y "
                         f"{tuple(y.shape)}, bias {tuple(bias.shape)}, scale "
                         f"{None if scale is None else tuple(scale.shape)}, residual "
                         f"{None if residual is None else tuple(residual.shape)}")
    if resolve_impl(y, residual, impl) == "triton":
        return _channel_bias_act_triton(y, bias, residual, scale, gelu)
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
