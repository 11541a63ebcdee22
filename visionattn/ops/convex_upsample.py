"""Convex upsampling (RAFT): each fine pixel is a learnt convex mix of its coarse 3x3 neighbourhood.

For a coarse field ``field: (B, h, w, D)`` (channels last, e.g. flow or disparity as 2-vectors) and
mask logits ``mask: (B, 9 f^2, h, w)`` (channel ``k f^2 + u f + v``: neighbour ``k = 3 (dy+1) + (dx+1)``,
sub-pixel ``(u, v)``):

    out[b, f i + u, f j + v, d] = sum_k softmax_k(mask[b, k f^2 + u f + v, i, j]) * f * field[b, i + dy_k, j + dx_k, d]

with zeros outside the map (displacements are scaled by ``f`` with the grid). ``out: (B, f h, f w, D)``.

Why: MatchStereo upsamples its fields x2 between levels and x4 at the end. The reference
materialises the softmax weights and their product with the neighbours, ``9 f^2 D`` values per
coarse pixel, in several passes; at 4K the final x4 alone moves about 2 GB. One kernel reads the
logits once and writes the fine field.

Implementations (``impl=``):
- ``"reference"``: softmax, ``F.unfold`` and a weighted sum (each its own pass), any device. CPU default.
- ``"triton"``: float32 softmax and sums, one rounding; ``f`` a power of two (the custom op
  ``visionattn::convex_upsample`` with a fake kernel and the reference's gradients, recomputed;
  :mod:`._convex_upsample_triton`). CUDA default without autograd (CPU under ``TRITON_INTERPRET=1``);
  under autograd ``"auto"`` takes the reference.
"""
import torch
import torch.nn.functional as F

from . import _convex_upsample_triton
from ._checks import check_int, check_tensors
from ._triton import can_run, launch_directly, needs_grad, triton
from .dispatch import pick

IMPLS = ("triton", "reference")


def convex_upsample_reference(field: torch.Tensor, mask: torch.Tensor, factor: int) -> torch.Tensor:
    """The formula in PyTorch ops: (B, h, w, D), (B, 9 f^2, h, w) -> (B, f h, f w, D)."""
    B, h, w, D = field.shape
    weights = mask.view(B, 1, 9, factor, factor, h, w).softmax(dim=2)
    neighbours = F.unfold(field.permute(0, 3, 1, 2) * factor, 3, padding=1).view(B, D, 9, 1, 1, h, w)
    up = (weights * neighbours).sum(dim=2)  # (B, D, f, f, h, w)
    return up.permute(0, 4, 2, 5, 3, 1).reshape(B, factor * h, factor * w, D)


def _setup_context(ctx, inputs, output):
    field, mask, factor = inputs
    ctx.save_for_backward(field, mask)
    ctx.factor = factor


def _backward_by_reference(ctx, grad):
    field, mask = ctx.saved_tensors
    with torch.enable_grad():  # the reference's gradients, recomputed (the kernel targets inference)
        leaves = [field.detach().requires_grad_(), mask.detach().requires_grad_()]
        grads = torch.autograd.grad(convex_upsample_reference(*leaves, ctx.factor), leaves, grad)
    return grads[0], grads[1], None


if triton is not None:  # the Triton custom op differentiates as the reference does
    _convex_upsample_triton.convex_upsample_triton.register_autograd(_backward_by_reference,
                                                                    setup_context=_setup_context)


def convex_upsample(field: torch.Tensor, mask: torch.Tensor, factor: int, impl: str = "auto") -> torch.Tensor:
    """Convex upsampling by ``factor`` (formula in the module docstring).

    Args:
        field: (B, h, w, D) coarse field, channels last.
        mask: (B, 9 * factor**2, h, w) logits, any memory layout (e.g. a conv's channels_last output).
        factor: the upsampling factor (>= 1; the Triton path takes powers of two).
        impl: "auto", "triton" or "reference".
    Returns:
        (B, factor*h, factor*w, D), contiguous, in the promoted dtype of field and mask.
    """
    op = "convex_upsample"
    factor = check_int(op, "factor", factor, 1)
    check_tensors(op, dict(field=field, mask=mask), same_dtype=False)
    if field.dim() != 4 or mask.dim() != 4 or mask.shape != (field.shape[0], 9 * factor * factor, *field.shape[1:3]):
        raise ValueError(f"convex_upsample expects field: (B, h, w, D) and mask: (B, 9*factor**2, h, w) = "
                         f"({field.shape[0] if field.dim() else '?'}, {9 * factor * factor}, h, w) for factor "
                         f"{factor}; got field {tuple(field.shape)}, mask {tuple(mask.shape)}")
    triton_ok = (can_run(field, mask) and factor & (factor - 1) == 0 and field.shape[-1] >= 1
                 and (impl == "triton" or not needs_grad(field, mask)))
    if pick(op, impl, {"triton": triton_ok, "reference": True}) == "triton":
        if launch_directly(field, mask):
            return _convex_upsample_triton.convex_upsample_launch(field, mask, factor)
        return torch.ops.visionattn.convex_upsample(field, mask, factor)
    return convex_upsample_reference(field, mask, factor)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 2, height: int = 544, width: int = 960,
                   channels: int = 2, factor: int = 4) -> dict:
    """MatchStereo's final x4 upsampling of a 4K pair (both views stacked): field at 1/4, logits from
    its mask head (channels_last, as the conv writes them)."""
    g = torch.Generator().manual_seed(0)
    field = (4 * torch.randn(batch, height, width, channels, generator=g)).to(device=device, dtype=dtype)
    mask = torch.randn(batch, 9 * factor * factor, height, width, generator=g).to(device=device, dtype=dtype)
    return dict(field=field, mask=mask.contiguous(memory_format=torch.channels_last), factor=factor)
