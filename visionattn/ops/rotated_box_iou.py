"""Overlap and IoU of rotated 3D boxes (bird's-eye view and 3D), in PyTorch on any device.

Boxes follow OpenPCDet: (N, 7) = (x, y, z, dx, dy, dz, heading), (x, y, z) the box centre, dx along
the heading, heading counter-clockwise from +x about +z. The BEV footprint of a box is the
rectangle of sides dx, dy rotated by heading about (x, y).

The intersection of two footprints (convex quadrilaterals) is a convex polygon whose vertices are
among 24 candidates: the corners of each box inside the other and the 16 edge-edge crossings.
All pairs are computed at once: candidates are masked, sorted by angle around their mean, and the
polygon's area taken with the shoelace formula (in float64). Pairs whose circumscribed circles do
not meet are skipped (overlap 0), so sparse scenes cost little.

Definitions as OpenPCDet's ``iou3d_nms`` CUDA ops: BEV IoU = overlap / max(area_a + area_b -
overlap, 1e-8); 3D IoU = overlap x height overlap / max(vol_a + vol_b - intersection, 1e-6).

One implementation, ``"reference"`` (this PyTorch code, CPU and GPU); :func:`rotated_box_iou` takes
``impl`` for the op-module contract shared with :mod:`tools.benchmark`.
"""
from typing import Tuple

import torch

from ._checks import check_tensors
from .dispatch import pick

IMPLS: Tuple[str, ...] = ("reference",)

_PAIRS_PER_CHUNK = 1 << 16  # candidate pairs per vectorised step (~30 MiB of float64 temporaries)


def _check(name: str, boxes: torch.Tensor) -> None:
    check_tensors(name, dict(boxes=boxes), floating=False)
    if boxes.dim() != 2 or boxes.shape[1] < 7 or not boxes.is_floating_point():
        raise ValueError(f"{name}: boxes must be (N, 7) floating tensors (x, y, z, dx, dy, dz, heading), "
                         f"extra columns ignored; got shape {tuple(boxes.shape)} and dtype {boxes.dtype}")


def box_corners_bev(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 7) boxes -> (..., 4, 2) footprint corners, counter-clockwise from the (+dx/2, +dy/2) corner."""
    signs = boxes.new_tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    local = signs * boxes[..., None, 3:5]  # (..., 4, 2)
    cos, sin = boxes[..., 6].cos()[..., None], boxes[..., 6].sin()[..., None]
    x = boxes[..., 0:1] + local[..., 0] * cos - local[..., 1] * sin
    y = boxes[..., 1:2] + local[..., 0] * sin + local[..., 1] * cos
    return torch.stack([x, y], -1)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(P, n, 2) points, (P, 7) boxes -> (P, n) whether each point lies in its box (boundary included)."""
    rel = points - boxes[:, None, 0:2]
    cos, sin = boxes[:, None, 6].cos(), boxes[:, None, 6].sin()
    along = rel[..., 0] * cos + rel[..., 1] * sin  # rotate by -heading: coordinates in the box frame
    across = -rel[..., 0] * sin + rel[..., 1] * cos
    tol = 1e-9 * (1 + boxes[:, 3:5].abs().amax(1, keepdim=True))
    return (along.abs() <= boxes[:, None, 3] / 2 + tol) & (across.abs() <= boxes[:, None, 4] / 2 + tol)


def _pair_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Footprint intersection areas of paired boxes a[i], b[i]: (P, 7), (P, 7) float64 -> (P,)."""
    ca, cb = box_corners_bev(a), box_corners_bev(b)  # (P, 4, 2)
    # edge i of A runs ca[i] -> ca[i+1]; crossing with edge j of B at ca[i] + t (da) = cb[j] + u (db)
    da = (ca.roll(-1, 1) - ca)[:, :, None, :]  # (P, 4, 1, 2)
    db = (cb.roll(-1, 1) - cb)[:, None, :, :]  # (P, 1, 4, 2)
    gap = cb[:, None, :, :] - ca[:, :, None, :]  # (P, 4, 4, 2)
    den = _cross(da, db)  # (P, 4, 4); 0 for parallel edges (their overlap ends are corners, found below)
    safe = torch.where(den.abs() > 1e-12, den, torch.ones_like(den))
    t, u = _cross(gap, db) / safe, _cross(gap, da) / safe
    crossing = (den.abs() > 1e-12) & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    points = torch.cat([ca, cb, (ca[:, :, None, :] + t[..., None] * da).flatten(1, 2)], 1)  # (P, 24, 2)
    valid = torch.cat([_inside(ca, b), _inside(cb, a), crossing.flatten(1)], 1)  # (P, 24)
    # order the valid vertices by angle around their mean (inside the convex intersection)
    count = valid.sum(1, keepdim=True)
    centre = (points * valid[..., None]).sum(1) / count.clamp(min=1)
    rel = points - centre[:, None, :]
    angle = torch.where(valid, torch.atan2(rel[..., 1], rel[..., 0]), torch.full_like(rel[..., 0], 10.0))
    order = angle.argsort(1)
    ring = rel.gather(1, order[..., None].expand(-1, -1, 2))
    # the invalid ones (sorted last) repeat the first vertex: zero-length edges closing the ring
    last_valid = torch.arange(points.shape[1], device=points.device)[None, :] < count
    ring = torch.where(last_valid[..., None], ring, ring[:, :1])
    area = 0.5 * _cross(ring, ring.roll(-1, 1)).sum(1).abs()
    return torch.where(count[:, 0] >= 3, area, torch.zeros_like(area))


def _near_pairs(a: torch.Tensor, b: torch.Tensor):
    """Pairs (i, j) whose circumscribed circles meet (the only ones that can overlap)."""
    radius_a, radius_b = a[:, 3:5].norm(dim=1) / 2, b[:, 3:5].norm(dim=1) / 2
    reach = radius_a[:, None] + radius_b[None, :]
    return (torch.cdist(a[:, :2].float(), b[:, :2].float()) < reach * 1.001 + 1e-3).nonzero(as_tuple=True)


def _pairwise(name: str, boxes_a: torch.Tensor, boxes_b: torch.Tensor, measure) -> torch.Tensor:
    """(N, M) matrix of ``measure(a, b, overlap)`` (float64 rows of paired boxes) over the near pairs, 0 elsewhere."""
    _check(name, boxes_a)
    _check(name, boxes_b)
    check_tensors(name, dict(boxes_a=boxes_a, boxes_b=boxes_b), same_dtype=False)
    out = boxes_a.new_zeros(boxes_a.shape[0], boxes_b.shape[0])
    if out.numel():
        ia, ib = _near_pairs(boxes_a, boxes_b)
        for start in range(0, ia.shape[0], _PAIRS_PER_CHUNK):
            i, j = ia[start:start + _PAIRS_PER_CHUNK], ib[start:start + _PAIRS_PER_CHUNK]
            a, b = boxes_a[i, :7].double(), boxes_b[j, :7].double()
            out[i, j] = measure(a, b, _pair_overlap(a, b)).to(out.dtype)
    return out


def boxes_overlap_bev(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """(N, 7), (M, 7) -> (N, M) areas of the intersections of the BEV footprints, in boxes_a's dtype."""
    return _pairwise("boxes_overlap_bev", boxes_a, boxes_b, lambda a, b, overlap: overlap)


def _iou_bev(a, b, overlap):
    return overlap / (a[:, 3] * a[:, 4] + b[:, 3] * b[:, 4] - overlap).clamp(min=1e-8)


def _iou_3d(a, b, overlap):
    top = torch.minimum(a[:, 2] + a[:, 5] / 2, b[:, 2] + b[:, 5] / 2)
    bottom = torch.maximum(a[:, 2] - a[:, 5] / 2, b[:, 2] - b[:, 5] / 2)
    inter = overlap * (top - bottom).clamp(min=0)
    return inter / (a[:, 3] * a[:, 4] * a[:, 5] + b[:, 3] * b[:, 4] * b[:, 5] - inter).clamp(min=1e-6)


def boxes_iou_bev(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """(N, 7), (M, 7) -> (N, M) IoU of the BEV footprints: overlap / max(area_a + area_b - overlap, 1e-8)."""
    return _pairwise("boxes_iou_bev", boxes_a, boxes_b, _iou_bev)


def boxes_iou_3d(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """(N, 7), (M, 7) -> (N, M) 3D IoU: BEV overlap x height overlap / max(vol_a + vol_b - that, 1e-6)."""
    return _pairwise("boxes_iou_3d", boxes_a, boxes_b, _iou_3d)


def paired_boxes_iou_3d(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """(N, 7), (N, 7) -> (N,) 3D IoU of boxes_a[i] with boxes_b[i] (OpenPCDet's ``paired_boxes_iou3d_gpu``),
    in boxes_a's dtype; computed in float64 without gradients (a training target, not a loss)."""
    _check("paired_boxes_iou_3d", boxes_a)
    _check("paired_boxes_iou_3d", boxes_b)
    if boxes_a.shape[0] != boxes_b.shape[0]:
        raise ValueError(f"paired_boxes_iou_3d: both sets must hold as many boxes, got {boxes_a.shape[0]} "
                         f"and {boxes_b.shape[0]}")
    with torch.no_grad():
        a, b = boxes_a[:, :7].double(), boxes_b[:, :7].to(boxes_a.device).double()
        out = boxes_a.new_zeros(a.shape[0])
        for start in range(0, a.shape[0], _PAIRS_PER_CHUNK):
            pa, pb = a[start:start + _PAIRS_PER_CHUNK], b[start:start + _PAIRS_PER_CHUNK]
            out[start:start + _PAIRS_PER_CHUNK] = _iou_3d(pa, pb, _pair_overlap(pa, pb)).to(out.dtype)
    return out


def rotated_box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor, mode: str = "bev", impl: str = "auto"
                    ) -> torch.Tensor:
    """(N, 7), (M, 7) -> (N, M) IoU of rotated boxes: ``mode="bev"`` (footprints) or ``"3d"``."""
    if mode not in ("bev", "3d"):
        raise ValueError(f"rotated_box_iou: mode must be 'bev' or '3d'; got {mode!r}")
    pick("rotated_box_iou", impl, {"reference": True})
    return boxes_iou_bev(boxes_a, boxes_b) if mode == "bev" else boxes_iou_3d(boxes_a, boxes_b)


def detections(n_boxes: int = 4096, n_objects: int = 200, seed: int = 0, device="cpu", dtype=torch.float32):
    """(boxes (n_boxes, 7), scores (n_boxes,), labels (n_boxes,)): what a CenterHead hands to NMS on a Waymo
    frame: ``n_objects`` cars, pedestrians and cyclists over +-75 m, each predicted by ~n_boxes/n_objects
    boxes jittered around it (position 0.3 m, size 10 %, heading 0.1 rad), random scores."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([[4.5, 2.0, 1.7], [0.9, 0.9, 1.8], [1.8, 0.8, 1.7]])  # vehicle, pedestrian, cyclist
    kind = torch.randint(0, 3, (n_objects,), generator=g)
    centre = torch.cat([(torch.rand(n_objects, 2, generator=g) - 0.5) * 150, torch.zeros(n_objects, 1)], 1)
    heading = (torch.rand(n_objects, generator=g) - 0.5) * 2 * torch.pi
    owner = torch.randint(0, n_objects, (n_boxes,), generator=g)
    xyz = centre[owner] + torch.randn(n_boxes, 3, generator=g) * 0.3
    dims = sizes[kind[owner]] * (1 + 0.1 * torch.randn(n_boxes, 3, generator=g)).clamp(min=0.5)
    yaw = heading[owner] + 0.1 * torch.randn(n_boxes, generator=g)
    boxes = torch.cat([xyz, dims, yaw[:, None]], 1).to(device, dtype)
    return boxes, torch.rand(n_boxes, generator=g).to(device, dtype), kind[owner].to(device)


def example_inputs(device="cpu", dtype=torch.float32, n_boxes: int = 4096, mode: str = "bev") -> dict:
    """The IoU matrix of NMS on a Waymo frame: the top 4096 CenterHead boxes against themselves."""
    boxes, _, _ = detections(n_boxes, device=device, dtype=dtype)
    return dict(boxes_a=boxes, boxes_b=boxes, mode=mode)
