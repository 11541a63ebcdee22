"""Gated depth-wise convolution: the middle of a convolutional GLU, ``gate * GELU(dwconv(x) + bias)``.

For channels-last tokens ``h: (B, H, W, 2C)`` whose first ``C`` channels are the conv branch ``x``
and last ``C`` the gate, ``weight: (C, 1, K, K)`` with K odd and ``bias: (C,)``:

    out[b, i, j, c] = h[b, i, j, C + c] * GELU(bias[c] + sum_{s, t} weight[c, 0, s, t] x[b, i + s - K//2, j + t - K//2, c])

zero padding, stride 1, exact (erf) GELU. ``out: (B, H, W, C)``.

Why: MatchStereo's ConvGLU (fc1 -> depth-wise 3x3 -> GELU -> times the gate -> fc2) ran the middle
as four passes over hidden-size tensors (the conv with its bias, GELU, the product) plus a
layout-converting cuDNN kernel; at 4K each pass moves hundreds of MB. One kernel reads the conv
branch and the gate once and writes the product; with ``inplace=True`` (no autograd) it writes into
the gate half of ``h``, so no hidden-size tensor is allocated at all.

Implementations (``impl=``):
- ``"reference"``: ``F.conv2d`` + ``F.gelu`` + product (each its own pass), any device. CPU default.
- ``"triton"``: float32 accumulation and epilogue, one rounding (the custom op
  ``visionattn::depthwise_glu`` with a fake kernel and the reference's gradients, recomputed;
  :mod:`._depthwise_glu_triton`). CUDA default without autograd (CPU under ``TRITON_INTERPRET=1``);
  under autograd ``"auto"`` takes the reference.
"""
import torch
import torch.nn.functional as F

from . import _depthwise_glu_triton
from ._checks import check_params, check_tensors, param_dtypes
from ._triton import can_run, launch_directly, needs_grad, triton
from .dispatch import pick

IMPLS = ("triton", "reference")


def depthwise_glu_reference(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            inplace: bool = False) -> torch.Tensor:
    """The formula in PyTorch ops: (B, H, W, 2C) -> (B, H, W, C) (``inplace``: into h's gate half)."""
    C = weight.shape[0]
    x, gate = h[..., :C], h[..., C:]
    y = F.gelu(F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=weight.shape[-1] // 2, groups=C))
    return gate.mul_(y.permute(0, 2, 3, 1)) if inplace else gate * y.permute(0, 2, 3, 1)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward_by_reference(ctx, grad):
    h, weight, bias = ctx.saved_tensors
    with torch.enable_grad():  # the reference's gradients, recomputed (the kernel targets inference)
        leaves = [t.detach().requires_grad_() for t in (h, weight, bias)]
        return torch.autograd.grad(depthwise_glu_reference(*leaves), leaves, grad)


if triton is not None:  # the Triton custom op differentiates as the reference does
    _depthwise_glu_triton.depthwise_glu_triton.register_autograd(_backward_by_reference, setup_context=_setup_context)


def _check(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    op = "depthwise_glu"
    check_tensors(op, dict(h=h))
    check_params(op, h, dict(weight=weight, bias=bias), param_dtypes(h))
    ok = (h.dim() == 4 and weight.dim() == 4 and bias.dim() == 1 and h.shape[-1] == 2 * weight.shape[0]
          and weight.shape[1] == 1 and weight.shape[2] == weight.shape[3] and weight.shape[2] % 2 == 1
          and bias.shape[0] == weight.shape[0])
    if not ok:
        raise ValueError(f"depthwise_glu expects h: (B, H, W, 2C) (conv half, then gate half), weight: (C, 1, K, K) "
                         f"with K odd and bias: (C,); got h {tuple(h.shape)}, weight {tuple(weight.shape)}, "
                         f"bias {tuple(bias.shape)}")


def depthwise_glu(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, inplace: bool = False,
                  impl: str = "auto") -> torch.Tensor:
    """``gate * GELU(depthwise_conv(x) + bias)`` of ``h = [x, gate]`` (formula in the module docstring).

    Args:
        h: (B, H, W, 2C) channels-last tokens, e.g. the output of a ConvGLU's fc1.
        weight: (C, 1, K, K), K odd; bias: (C,).
        inplace: write the result into h's gate half and return that view (h's conv half is left as
            it was): no hidden-size allocation. Only without autograd (``torch.no_grad()`` or no
            input requiring a gradient), and h must be contiguous. Under ``torch.compile`` the Triton
            path returns a new tensor instead (the functional custom op that the compiler sees).
        impl: "auto", "triton" or "reference".
    Returns:
        (B, H, W, C) of h's dtype.
    """
    _check(h, weight, bias)
    if inplace:
        if needs_grad(h, weight, bias):
            raise ValueError("depthwise_glu(inplace=True) overwrites h's gate half, which autograd would need; "
                             "call it under torch.no_grad() or with inplace=False")
        if not h.is_contiguous():
            raise ValueError(f"depthwise_glu(inplace=True) writes into h's gate half, so h must be contiguous; got "
                             f"strides {h.stride()} for shape {tuple(h.shape)} (pass h.contiguous() or inplace=False)")
    # "auto" takes the kernel only without autograd: its backward recomputes the reference's forward,
    # so a training step would pay for both forwards (impl="triton" still differentiates)
    triton_ok = can_run(h, weight, bias) and (impl == "triton" or not needs_grad(h, weight, bias))
    if pick("depthwise_glu", impl, {"triton": triton_ok, "reference": True}) == "triton":
        if launch_directly(h, weight, bias):  # eager (always, when inplace)
            return _depthwise_glu_triton.depthwise_glu_launch(h.contiguous(), weight, bias, into_gate=inplace)
        return torch.ops.visionattn.depthwise_glu(h.contiguous(), weight, bias)
    return depthwise_glu_reference(h, weight, bias, inplace)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 2, channels: int = 128, height: int = 272,
                   width: int = 480, kernel: int = 3) -> dict:
    """MatchStereo-T's ConvGLU at 1/8 of a 4K pair (both views stacked; hidden 128)."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(batch, height, width, 2 * channels, generator=g).to(device=device, dtype=dtype)
    weight = (torch.randn(channels, 1, kernel, kernel, generator=g) / kernel).to(device=device, dtype=dtype)
    return dict(h=h, weight=weight, bias=(0.1 * torch.randn(channels, generator=g)).to(device=device, dtype=dtype))
