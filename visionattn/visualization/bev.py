"""Bird's-eye-view pictures of LiDAR frames: points coloured by height, 3-D boxes as footprints.

Boxes are OpenPCDet's ``[x, y, z, dx, dy, dz, heading]`` (centre, LiDAR frame, metres). The picture
looks down with +x (forward) up and +y (left) to the left, ``resolution`` metres per pixel. Each box is
its footprint rectangle plus a heading tick from its centre to the middle of its front edge.
Predictions are coloured by class (with the score next to them when given), ground truth is drawn
in white, thinner. Images are BGR uint8 (OpenCV's order).
"""
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

# BGR per class index (vehicles orange, pedestrians magenta, cyclists cyan, then others)
CLASS_COLOURS = ((0, 140, 255), (255, 0, 255), (255, 255, 0), (0, 255, 0), (0, 0, 255), (255, 128, 0))
GT_COLOUR = (255, 255, 255)


def box_footprints(boxes: np.ndarray) -> np.ndarray:
    """(M, 7) boxes -> (M, 4, 2) BEV corners (x, y), counter-clockwise from the front-left corner."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    boxes = np.where(np.isfinite(boxes), boxes, 0.0)  # an untrained network's inf/nan: callers skip those boxes
    signs = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    local = signs[None] * boxes[:, None, 3:5]
    cos, sin = np.cos(boxes[:, 6:7]), np.sin(boxes[:, 6:7])
    return np.stack([boxes[:, 0:1] + local[..., 0] * cos - local[..., 1] * sin,
                     boxes[:, 1:2] + local[..., 0] * sin + local[..., 1] * cos], -1)


def bev_extent(points: np.ndarray, boxes: Sequence[np.ndarray] = (), margin: float = 2.0, limit: float = 100.0
               ) -> Tuple[float, float, float, float]:
    """(x_min, x_max, y_min, y_max) covering the points' 1st-99th percentiles and every box, within
    +-``limit`` m."""
    xy = [np.asarray(points, np.float64)[:, :2]] if len(points) else []
    boxes = [b[np.isfinite(b).all(1)] for b in boxes]
    xy += [box_footprints(b).reshape(-1, 2) for b in boxes if len(b)]
    xy = np.concatenate(xy) if xy else np.zeros((1, 2))
    xy = np.clip(xy, -limit, limit)
    lo = np.percentile(xy, 1, axis=0) if len(xy) > 100 else xy.min(0)
    hi = np.percentile(xy, 99, axis=0) if len(xy) > 100 else xy.max(0)
    for b in boxes:  # boxes always inside
        if len(b):
            corners = np.clip(box_footprints(b).reshape(-1, 2), -limit, limit)
            lo, hi = np.minimum(lo, corners.min(0)), np.maximum(hi, corners.max(0))
    lo, hi = np.clip(lo - margin, -limit, limit), np.clip(hi + margin, -limit, limit)
    return float(lo[0]), float(max(hi[0], lo[0] + 1)), float(lo[1]), float(max(hi[1], lo[1] + 1))


def draw_bev(points: np.ndarray, boxes: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None,
             scores: Optional[np.ndarray] = None, gt_boxes: Optional[np.ndarray] = None,
             class_names: Sequence[str] = (), extent: Optional[Sequence[float]] = None, resolution: float = 0.1,
             z_range: Optional[Tuple[float, float]] = None, max_size: int = 2000) -> np.ndarray:
    """BEV picture (H, W, 3) BGR uint8 of ``points`` (N, >= 3), predicted ``boxes`` (M, 7) with
    ``labels`` / ``scores`` (M,) and ground-truth ``gt_boxes`` (K, 7).

    Args:
        extent: (x_min, x_max, y_min, y_max) in metres (default: :func:`bev_extent` of points and boxes).
        resolution: metres per pixel (raised when the picture would exceed ``max_size`` pixels a side).
        z_range: heights mapped onto the colour map (default: the points' 2nd-98th percentiles).
        class_names: labels' names for the legend.
    """
    points = np.asarray(points, np.float32)
    points = points.reshape(-1, points.shape[-1]) if points.size else np.zeros((0, 3), np.float32)
    boxes = np.zeros((0, 7)) if boxes is None else np.asarray(boxes, np.float64).reshape(-1, 7)
    gt_boxes = np.zeros((0, 7)) if gt_boxes is None else np.asarray(gt_boxes, np.float64).reshape(-1, 7)
    labels = np.zeros(len(boxes), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(f"draw_bev: {len(boxes)} boxes but {len(labels)} labels"
                         + ("" if scores is None else f" and {len(scores)} scores"))
    if resolution <= 0:
        raise ValueError(f"draw_bev: resolution must be > 0 metres per pixel, got {resolution}")
    x0, x1, y0, y1 = extent if extent is not None else bev_extent(points, (boxes, gt_boxes))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"draw_bev: extent must be (x_min, x_max, y_min, y_max) with min < max, got {extent}")
    resolution = max(resolution, (x1 - x0) / max_size, (y1 - y0) / max_size)
    h, w = int(np.ceil((x1 - x0) / resolution)), int(np.ceil((y1 - y0) / resolution))
    image = np.zeros((h, w, 3), np.uint8)

    def to_pixels(xy: np.ndarray) -> np.ndarray:  # (..., 2) metres -> (..., 2) (col, row)
        return np.stack([(y1 - xy[..., 1]) / resolution, (x1 - xy[..., 0]) / resolution], -1)

    if len(points):
        px = np.floor(to_pixels(points[:, :2])).astype(np.int64)
        inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        z = points[inside, 2]
        lo, hi = z_range if z_range is not None else (
            (float(np.percentile(z, 2)), float(np.percentile(z, 98))) if len(z) else (0.0, 1.0))
        level = np.clip((z - lo) / max(hi - lo, 1e-6), 0, 1)
        turbo = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0]  # (256, 3)
        colours = turbo[np.round((0.15 + 0.85 * level) * 255).astype(np.int64)]  # turbo's darkest end skipped
        order = np.argsort(z, kind="stable")  # higher points drawn last (on top)
        image[px[inside, 1][order], px[inside, 0][order]] = colours[order]

    def fixed(px: np.ndarray) -> np.ndarray:  # pixels -> OpenCV fixed point (4 fractional bits), clipped far outside
        bound = 4.0 * max(h, w)
        return np.round(np.clip(px, -bound, bound) * 16).astype(np.int32)

    def draw(bxs, colours, thickness):
        finite = np.isfinite(bxs).all(1)  # an untrained network can give inf/nan sizes: not drawn
        bxs, colours = bxs[finite], [c for c, f in zip(colours, finite) if f]
        if not len(bxs):
            return
        footprints = box_footprints(bxs)
        corners = fixed(to_pixels(footprints))
        centre, front = fixed(to_pixels(bxs[:, :2])), fixed(to_pixels(footprints[:, [0, 3]].mean(1)))
        for k in range(len(bxs)):
            cv2.polylines(image, [corners[k]], True, colours[k], thickness, cv2.LINE_AA, shift=4)
            cv2.line(image, (int(centre[k, 0]), int(centre[k, 1])), (int(front[k, 0]), int(front[k, 1])),
                     colours[k], thickness, cv2.LINE_AA, shift=4)

    draw(gt_boxes, [GT_COLOUR] * len(gt_boxes), 1)
    pred_colours = [CLASS_COLOURS[int(c) % len(CLASS_COLOURS)] for c in labels]
    draw(boxes, pred_colours, 2)
    if scores is not None:
        anchor = to_pixels(box_footprints(boxes).max(1)) if len(boxes) else np.zeros((0, 2))
        for k in range(len(boxes)):
            if not (np.isfinite(anchor[k]).all() and 0 <= anchor[k, 0] < w and 0 <= anchor[k, 1] < h):
                continue
            cv2.putText(image, f"{float(scores[k]):.2f}", (int(anchor[k, 0]) + 2, int(anchor[k, 1])),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.35, pred_colours[k], 1, cv2.LINE_AA)
    legend = [(n, CLASS_COLOURS[i % len(CLASS_COLOURS)]) for i, n in enumerate(class_names)]
    legend += [("ground truth", GT_COLOUR)] if len(gt_boxes) else []
    legend += [(f"{resolution:.2f} m/px, x up, y left", (200, 200, 200))]
    for i, (text, colour) in enumerate(legend):
        cv2.putText(image, text, (6, 16 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return image
