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
"""
import torch

_PAIRS_PER_CHUNK = 1 << 16  # candidate pairs per vectorised step (~30 MiB of float64 temporaries)


def _check(name: str, boxes: torch.Tensor) -> None:
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


def boxes_overlap_bev(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """(N, 7), (M, 7) -> (N, M) areas of the intersections of the BEV footprints, in boxes_a's dtype."""
    _check("boxes_overlap_bev", boxes_a)
    _check("boxes_overlap_bev", boxes_b)
    a, b = boxes_a[:, :7].double(), boxes_b[:, :7].to(boxes_a.device).double()
    out = a.new_zeros(a.shape[0], b.shape[0])
    if out.numel():
        radius_a, radius_b = a[:, 3:5].norm(dim=1) / 2, b[:, 3:5].norm(dim=1) / 2
        near = torch.cdist(a[:, :2], b[:, :2]) < radius_a[:, None] + radius_b[None, :] + 1e-6  # may touch
        ia, ib = near.nonzero(as_tuple=True)
        for start in range(0, ia.shape[0], _PAIRS_PER_CHUNK):
            i, j = ia[start:start + _PAIRS_PER_CHUNK], ib[start:start + _PAIRS_PER_CHUNK]
            out[i, j] = _pair_overlap(a[i], b[j])
    return out.to(boxes_a.dtype)


def boxes_iou_bev(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """(N, 7), (M, 7) -> (N, M) IoU of the BEV footprints: overlap / max(area_a + area_b - overlap, 1e-8)."""
    overlap = boxes_overlap_bev(boxes_a, boxes_b).double()
    area_a = (boxes_a[:, 3] * boxes_a[:, 4]).double()[:, None]
    area_b = (boxes_b[:, 3] * boxes_b[:, 4]).double().to(overlap.device)[None, :]
    return (overlap / (area_a + area_b - overlap).clamp(min=1e-8)).to(boxes_a.dtype)


def boxes_iou_3d(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """(N, 7), (M, 7) -> (N, M) 3D IoU: BEV overlap x height overlap / max(vol_a + vol_b - that, 1e-6)."""
    overlap = boxes_overlap_bev(boxes_a, boxes_b).double()
    a, b = boxes_a.double(), boxes_b.double().to(overlap.device)
    top = torch.minimum(a[:, None, 2] + a[:, None, 5] / 2, b[None, :, 2] + b[None, :, 5] / 2)
    bottom = torch.maximum(a[:, None, 2] - a[:, None, 5] / 2, b[None, :, 2] - b[None, :, 5] / 2)
    inter = overlap * (top - bottom).clamp(min=0)
    vol_a, vol_b = a[:, 3] * a[:, 4] * a[:, 5], b[:, 3] * b[:, 4] * b[:, 5]
    return (inter / (vol_a[:, None] + vol_b[None, :] - inter).clamp(min=1e-6)).to(boxes_a.dtype)
