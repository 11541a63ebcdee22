"""Forward-backward consistency check of a stacked pair of dense fields (stereo disparity or flow).

For ``field: (2B, H, W, 2)`` holding the first views' fields (batch ``b < B``) then the second views'
(``b + B``), each an (x, y) displacement in pixels:

    other[b, i, j] = bilinear sample of field[(b + B) mod 2B] at (j + field[b, i, j, 0], i + field[b, i, j, 1])
    mask[b, i, j]  = |field[b, i, j, 0] + other[b, i, j, 0]| + |field[b, i, j, 1] + other[b, i, j, 1]| < threshold

(zeros outside the map, ``grid_sample(align_corners=True)``'s sampling), in float32 (float64 for a
float64 field). A pixel passes when following its field into the other view and back returns near
its start: the two views' fields point in opposite directions.

Why: MatchStereo checks every layer's field (27 checks per forward) and the full-resolution output.
The reference is a dozen passes (a float32 copy, the swapped views, the sampling positions,
``grid_sample``, the sum, the norm, the comparison, the cast); one kernel reads the field and its
four neighbours in the other view and writes the mask.

Implementations (``impl=``):
- ``"reference"``: the PyTorch ops above, any device. CPU default.
- ``"triton"``: one kernel (:mod:`._consistency_mask_triton`), float16/bfloat16/float32 fields, any
  strides; the positions and weights are computed in float32 in the reference's operation order
  (division rounded to nearest), so masks agree except for pixels within rounding of the threshold.
  CUDA default (CPU under ``TRITON_INTERPRET=1``); the custom op ``visionattn::consistency_mask`` with a
  fake kernel under ``torch.compile`` / ``torch.export``. The mask has no gradient on either path.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from . import _consistency_mask_triton
from ._checks import check_number, check_tensors
from ._triton import can_run, launch_directly
from .dispatch import pick

IMPLS = ("triton", "reference")


def pixel_grid(H: int, W: int, ref: torch.Tensor) -> torch.Tensor:
    """``(H, W, 2)`` pixel coordinates (x, y), float32 (at least) on ``ref``'s device.

    Never half precision: bf16 holds integers exactly only up to 256, fp16 up to 2048.
    """
    dtype = torch.promote_types(ref.dtype, torch.float32)
    ys, xs = torch.meshgrid(torch.arange(H, device=ref.device, dtype=dtype),
                            torch.arange(W, device=ref.device, dtype=dtype), indexing="ij")
    return torch.stack((xs, ys), dim=-1)


def consistency_mask_reference(field: torch.Tensor, threshold: float, grid: Optional[torch.Tensor] = None
                               ) -> torch.Tensor:
    """The check in PyTorch ops: (2B, H, W, 2) -> (2B, H, W, 1) {0, 1} in float32 (float64 for float64).

    ``grid``: ``pixel_grid(H, W, field)`` when the caller has it already (saves kernels in a loop).
    """
    field = field.to(torch.promote_types(field.dtype, torch.float32))
    first, second = field.chunk(2, dim=0)
    swapped = torch.cat((second, first), dim=0).permute(0, 3, 1, 2)
    grid = pixel_grid(*field.shape[1:3], field) if grid is None else grid
    # align_corners=True: normalised = 2 * pos / (size - 1) - 1 in this rounding order (the official
    # model's), so a pixel at the threshold flips the same way; grid[-1, -1] = (W-1, H-1)
    norm = 2 * (field + grid) / grid[-1, -1].clamp(min=1) - 1
    other = F.grid_sample(swapped, norm, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)
    return (torch.linalg.vector_norm(field + other, ord=1, dim=-1, keepdim=True) < threshold).to(field.dtype)


def _triton_supports(field: torch.Tensor) -> bool:
    return can_run(field) and field.numel() < 2 ** 31


def consistency_mask(field: torch.Tensor, threshold: float, dtype: Optional[torch.dtype] = None,
                     grid: Optional[torch.Tensor] = None, impl: str = "auto") -> torch.Tensor:
    """Forward-backward consistency of a stacked field pair (formula in the module docstring).

    Args:
        field: (2B, H, W, 2) displacements of the first views, then of the second views; any strides
            (e.g. a channels-first map permuted to channels-last).
        threshold: pixels (> 0): the largest L1 round-trip error that still passes.
        dtype: the mask's dtype; default float32 (float64 for a float64 field).
        grid: ``pixel_grid(H, W, field)``, if the caller has it (the reference's positions).
        impl: "auto", "triton" or "reference".
    Returns:
        (2B, H, W, 1) contiguous mask, 1 where the check passes and 0 elsewhere; no gradient.
    """
    op = "consistency_mask"
    check_tensors(op, dict(field=field))
    threshold = check_number(op, "threshold", threshold, positive=True)
    if field.dim() != 4 or field.shape[-1] != 2 or field.shape[0] % 2 or 0 in field.shape:
        raise ValueError(f"consistency_mask expects field: (2B, H, W, 2), B, H, W >= 1, both views' (x, y) fields "
                         f"stacked on the batch axis (first views first); got {tuple(field.shape)}")
    if grid is not None and tuple(grid.shape) != (*field.shape[1:3], 2):
        raise ValueError(f"consistency_mask: grid of shape {tuple(grid.shape)} must be pixel_grid(H, W) = "
                         f"{(*field.shape[1:3], 2)}")
    field = field.detach()
    base = torch.promote_types(field.dtype, torch.float32)
    if pick(op, impl, {"triton": _triton_supports(field), "reference": True}) == "triton":
        if launch_directly(field):
            return _consistency_mask_triton.consistency_mask_launch(field, threshold, dtype or base)
        return torch.ops.visionattn.consistency_mask(field, threshold, dtype or base)
    mask = consistency_mask_reference(field, threshold, grid)
    return mask if dtype is None else mask.to(dtype)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 1, height: int = 544, width: int = 960,
                   **_) -> dict:
    """A 4K pair's check at MatchStereo's 1/4 level, threshold 8 px: a smooth disparity of 5-55 px, the
    second views' field the first's read at the matched pixel with its sign flipped, plus noise
    (8 px horizontally, 1 px vertically) so that about half of the pixels pass."""
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    disparity = (30 + 25 * torch.sin(xs / 40 + ys / 60)).expand(batch, height, width)
    matched = (xs + disparity).round().long().clamp(max=width - 1)
    field = torch.zeros(2 * batch, height, width, 2)
    field[:batch, ..., 0] = -disparity
    field[batch:, ..., 0] = disparity.gather(-1, matched) + 8 * torch.randn(batch, height, width, generator=g)
    field[..., 1] = torch.randn(2 * batch, height, width, generator=g)
    return dict(field=field.to(device=device, dtype=dtype), threshold=8.0)
