"""LiDAR training augmentation that moves points and boxes together (OpenPCDet's recipe).

A transform maps a frame dict to a frame dict (numpy): ``points`` float32 (N, C) and the per-box
arrays ``gt_boxes`` (M, 7) [x, y, z, dx, dy, dz, heading], ``gt_labels`` (M,) int64 and any other
``gt_*`` key of :data:`PER_BOX_KEYS` (kept aligned when boxes are dropped or added).

Randomness: ``seed=`` gives a transform its own generator (reproducible); without it every call
draws a fresh generator from numpy's global state (which mmengine seeds per worker and rank, and
``RandomStateHook`` restores on resume) mixed, in a data worker, with the worker's torch seed: mmengine
reseeds numpy identically each time workers restart (every epoch unless persistent), and the torch
seed is what differs from epoch to epoch.

Transforms (TRANSFORMS names): ``GTSampling`` (paste objects from OpenPCDet's GT database),
``RandomWorldFlip``, ``GlobalRotation``, ``GlobalScaling``, ``GlobalTranslation``, ``PointShuffle``,
``PointsRangeFilter``, ``BoxesRangeFilter``.
"""
import math
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from ..ops.rotated_box_iou import boxes_iou_bev
from ..registry import TRANSFORMS
from .lidar_formats import limit_period, points_in_boxes, read_db_infos, read_db_points, waymo_difficulty

# per-box arrays of a frame and the value a box pasted by GT sampling gets when its info lacks one
PER_BOX_KEYS = {"gt_boxes": None, "gt_labels": None, "gt_difficulty": 0, "gt_num_points": 0,
                "gt_bbox_2d": 0.0, "gt_alpha": 0.0}


def select_boxes(sample: Dict, keep: np.ndarray) -> Dict:
    """Keep the boxes where ``keep`` (bool (M,) or indices) in every per-box array."""
    for key in PER_BOX_KEYS:
        if key in sample:
            sample[key] = sample[key][keep]
    return sample


def _rng(seeded: Optional[np.random.Generator]) -> np.random.Generator:
    if seeded is not None:
        return seeded
    worker = torch.utils.data.get_worker_info()
    return np.random.default_rng([np.random.randint(0, 2 ** 31 - 1)] + ([worker.seed] if worker is not None else []))


class _Random:
    def __init__(self, seed: Optional[int] = None):
        self.rng = np.random.default_rng(seed) if seed is not None else None


@TRANSFORMS.register_module()
class RandomWorldFlip(_Random):
    """Mirror the scene with probability 1/2 per axis: ``'x'`` flips y (heading -> -heading), ``'y'``
    flips x (heading -> -(heading + pi)), OpenPCDet's ``random_world_flip``."""

    def __init__(self, axes: Sequence[str] = ("x", "y"), seed: Optional[int] = None):
        super().__init__(seed)
        if any(a not in ("x", "y") for a in axes):
            raise ValueError(f"RandomWorldFlip axes must be 'x' and/or 'y', got {list(axes)}")
        self.axes = tuple(axes)

    def __call__(self, sample: Dict) -> Dict:
        rng = _rng(self.rng)
        points, boxes = sample["points"].copy(), sample["gt_boxes"].copy()
        for axis in self.axes:
            if rng.random() < 0.5:
                col = 1 if axis == "x" else 0
                points[:, col] = -points[:, col]
                boxes[:, col] = -boxes[:, col]
                boxes[:, 6] = -boxes[:, 6] if axis == "x" else -(boxes[:, 6] + np.pi)
        boxes[:, 6] = limit_period(boxes[:, 6])
        sample["points"], sample["gt_boxes"] = points, boxes
        return sample


def rotate_z(xyz: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (N, 3) points counter-clockwise by ``angle`` about +z."""
    c, s = math.cos(angle), math.sin(angle)
    out = xyz.copy()
    out[:, 0] = xyz[:, 0] * c - xyz[:, 1] * s
    out[:, 1] = xyz[:, 0] * s + xyz[:, 1] * c
    return out


@TRANSFORMS.register_module()
class GlobalRotation(_Random):
    """Rotate the scene about the LiDAR's z axis by an angle uniform in ``rot_range`` (radians)."""

    def __init__(self, rot_range: Sequence[float] = (-math.pi / 4, math.pi / 4), seed: Optional[int] = None):
        super().__init__(seed)
        self.rot_range = tuple(float(r) for r in rot_range)

    def __call__(self, sample: Dict) -> Dict:
        angle = float(_rng(self.rng).uniform(*self.rot_range))
        points, boxes = sample["points"].copy(), sample["gt_boxes"].copy()
        points[:, :3] = rotate_z(points[:, :3].astype(np.float64), angle)
        boxes[:, :3] = rotate_z(boxes[:, :3].astype(np.float64), angle)
        boxes[:, 6] = limit_period(boxes[:, 6] + angle)
        sample["points"], sample["gt_boxes"] = points, boxes
        return sample


@TRANSFORMS.register_module()
class GlobalScaling(_Random):
    """Scale coordinates and box sizes by a factor uniform in ``scale_range``."""

    def __init__(self, scale_range: Sequence[float] = (0.95, 1.05), seed: Optional[int] = None):
        super().__init__(seed)
        self.scale_range = tuple(float(s) for s in scale_range)

    def __call__(self, sample: Dict) -> Dict:
        scale = float(_rng(self.rng).uniform(*self.scale_range))
        points, boxes = sample["points"].copy(), sample["gt_boxes"].copy()
        points[:, :3] *= scale
        boxes[:, :6] *= scale
        sample["points"], sample["gt_boxes"] = points, boxes
        return sample


@TRANSFORMS.register_module()
class GlobalTranslation(_Random):
    """Shift the scene by a normal offset with standard deviation ``std`` (x, y, z) metres."""

    def __init__(self, std: Sequence[float] = (0.5, 0.5, 0.5), seed: Optional[int] = None):
        super().__init__(seed)
        self.std = np.asarray(std, np.float64).reshape(3)

    def __call__(self, sample: Dict) -> Dict:
        shift = _rng(self.rng).normal(0.0, 1.0, 3) * self.std
        points, boxes = sample["points"].copy(), sample["gt_boxes"].copy()
        points[:, :3] += shift.astype(np.float32)
        boxes[:, :3] += shift.astype(np.float32)
        sample["points"], sample["gt_boxes"] = points, boxes
        return sample


@TRANSFORMS.register_module()
class PointShuffle(_Random):
    """Random permutation of the points."""

    def __call__(self, sample: Dict) -> Dict:
        sample["points"] = sample["points"][_rng(self.rng).permutation(len(sample["points"]))]
        return sample


@TRANSFORMS.register_module()
class PointsRangeFilter:
    """Keep points with x, y inside ``point_cloud_range`` (OpenPCDet's ``mask_points_by_range``: z is not
    filtered here; the network ignores points outside the voxel grid). ``xyz=True`` filters z too."""

    def __init__(self, point_cloud_range: Sequence[float], xyz: bool = False):
        self.range = np.asarray(point_cloud_range, np.float32).reshape(6)
        self.xyz = xyz

    def __call__(self, sample: Dict) -> Dict:
        p, r = sample["points"], self.range
        dims = 3 if self.xyz else 2
        keep = np.all((p[:, :dims] >= r[:dims]) & (p[:, :dims] <= r[3:3 + dims]), 1)
        sample["points"] = p[keep]
        return sample


@TRANSFORMS.register_module()
class BoxesRangeFilter:
    """Keep boxes whose centre lies inside ``point_cloud_range`` (x, y and z, OpenPCDet's
    ``mask_boxes_outside_range_numpy`` with ``use_center_to_filter``); ``min_num_points`` > 0 also drops
    boxes with fewer points in ``gt_num_points`` (OpenPCDet's ``FILTER_EMPTY_BOXES_FOR_TRAIN``: 1)."""

    def __init__(self, point_cloud_range: Sequence[float], min_num_points: int = 0):
        self.range = np.asarray(point_cloud_range, np.float32).reshape(6)
        self.min_num_points = int(min_num_points)

    def __call__(self, sample: Dict) -> Dict:
        centres = sample["gt_boxes"][:, :3]
        keep = np.all((centres >= self.range[:3]) & (centres <= self.range[3:]), 1)
        if self.min_num_points > 0 and "gt_num_points" in sample:
            keep &= sample["gt_num_points"] >= self.min_num_points
        return select_boxes(sample, keep)


@TRANSFORMS.register_module()
class GTSampling(_Random):
    """Paste objects from an OpenPCDet GT database into the frame (OpenPCDet's ``gt_sampling``).

    Per class, ``sample_groups[name]`` minus the boxes of that class already in the frame are drawn
    (without replacement, walking a shuffled list as OpenPCDet does) from the database objects with at
    least ``min_points[name]`` points and a difficulty not in ``filter_difficulty``. A candidate is
    kept only if its BEV footprint overlaps no box of the frame and no other candidate. The frame's
    points inside a kept box (enlarged by ``remove_extra_width``) are removed and the object's points
    added. Set ``enabled = False`` to switch it off (``GTSamplingOffHook`` does so for the last epochs).

    Args:
        root: the dataset root; the database info's ``path`` entries are relative to it.
        db_info: the info pickle, relative to ``root`` or absolute.
        class_names: the dataset's classes (labels index them); other database classes are ignored.
        num_point_features: floats per point in the ``.bin`` files (KITTI 4, Waymo 5).
        waymo_levels: difficulty of pasted boxes as Waymo levels (1/2 by label and point count)
            instead of the database's value (KITTI difficulty).
    """

    def __init__(self, root: str, db_info: str, sample_groups: Mapping[str, int], class_names: Sequence[str],
                 num_point_features: int, min_points: Optional[Mapping[str, int]] = None,
                 filter_difficulty: Sequence[int] = (-1,), remove_extra_width: Sequence[float] = (0.0, 0.0, 0.0),
                 waymo_levels: bool = False, enabled: bool = True, seed: Optional[int] = None):
        super().__init__(seed)
        self.root = Path(root)
        path = Path(db_info) if Path(db_info).is_absolute() else self.root / db_info
        infos = read_db_infos(path)
        self.class_names = tuple(class_names)
        unknown = [n for n in sample_groups if n not in self.class_names]
        if unknown:
            raise ValueError(f"GTSampling: sample_groups names {unknown} are not among class_names {self.class_names}")
        min_points = dict(min_points or {})
        self.pools = {}
        for name, count in sample_groups.items():
            pool = [i for i in infos.get(name, []) if int(i["num_points_in_gt"]) >= min_points.get(name, 0)
                    and int(i.get("difficulty", 0)) not in tuple(filter_difficulty)]
            if count > 0 and not pool:
                raise ValueError(f"GTSampling: the GT database {path} holds no {name!r} object with >= "
                                 f"{min_points.get(name, 0)} points (classes there: {sorted(infos)})")
            self.pools[name] = dict(items=pool, count=int(count), order=np.zeros(0, np.int64), pointer=0)
        self.num_point_features = int(num_point_features)
        self.extra = np.asarray(remove_extra_width, np.float32).reshape(3)
        self.waymo_levels = waymo_levels
        self.enabled = enabled
        self.db_path = path

    def _draw(self, pool: Dict, n: int, rng: np.random.Generator):
        out = []
        while len(out) < n:
            if pool["pointer"] >= len(pool["order"]):
                pool["order"], pool["pointer"] = rng.permutation(len(pool["items"])), 0
            take = pool["order"][pool["pointer"]:pool["pointer"] + n - len(out)]
            pool["pointer"] += len(take)
            out += [pool["items"][i] for i in take]
        return out

    def __call__(self, sample: Dict) -> Dict:
        if not self.enabled:
            return sample
        rng = _rng(self.rng)
        boxes = sample["gt_boxes"][:, :7].astype(np.float32)
        existing = torch.from_numpy(boxes.copy())
        picked = []
        for label, name in enumerate(self.class_names):
            pool = self.pools.get(name)
            if pool is None:
                continue
            n = pool["count"] - int((sample["gt_labels"] == label).sum())
            if n <= 0:
                continue
            drawn = self._draw(pool, n, rng)
            cand = torch.from_numpy(np.stack([np.asarray(d["box3d_lidar"], np.float32)[:7] for d in drawn]))
            iou_old = boxes_iou_bev(cand, existing).amax(1) if len(existing) else torch.zeros(len(cand))
            iou_new = boxes_iou_bev(cand, cand)
            iou_new.fill_diagonal_(0)
            keep = ((iou_old + iou_new.amax(1)) == 0).nonzero().flatten().tolist()
            existing = torch.cat([existing, cand[keep]])
            picked += [(label, drawn[i]) for i in keep]
        if not picked:
            return sample
        new_boxes = np.stack([np.asarray(d["box3d_lidar"], np.float32)[:7] for _, d in picked])
        enlarged = new_boxes.copy()
        enlarged[:, 3:6] += self.extra
        points = sample["points"]
        points = points[~points_in_boxes(points, enlarged).any(1)]
        pasted = []
        for (_, info), box in zip(picked, new_boxes):
            obj = read_db_points(self.root / info["path"], self.num_point_features).copy()
            obj[:, :3] += box[:3]
            pasted.append(obj[:, :points.shape[1]])
        sample["points"] = np.concatenate(pasted + [points]).astype(np.float32)
        num = np.array([int(d["num_points_in_gt"]) for _, d in picked], np.int64)
        diff = np.array([int(d.get("difficulty", 0)) for _, d in picked], np.int64)
        new = dict(gt_boxes=new_boxes, gt_labels=np.array([lab for lab, _ in picked], np.int64),
                   gt_difficulty=waymo_difficulty(diff, num) if self.waymo_levels else diff, gt_num_points=num)
        if "gt_bbox_2d" in sample:
            new["gt_bbox_2d"] = np.stack([np.asarray(d.get("bbox", np.zeros(4)), np.float32) for _, d in picked])
        for key, default in PER_BOX_KEYS.items():
            if key not in sample:
                continue
            value = new.get(key)
            if value is None:
                value = np.full((len(picked),) + sample[key].shape[1:], default, sample[key].dtype)
            sample[key] = np.concatenate([sample[key], value.astype(sample[key].dtype)])
        return sample
