"""LiDAR detection file formats: KITTI 3D object and Waymo as OpenPCDet processes it; box geometry.

Conventions (OpenPCDet's): LiDAR frame, metres. A box is ``[x, y, z, dx, dy, dz, heading]`` with
(x, y, z) its centre, dx along the heading and the heading counter-clockwise about +z from +x.

KITTI 3D object (``root`` = the folder holding ``training/`` and ``ImageSets/``):

* ``training/velodyne/<id>.bin``: float32 (N, 4) x, y, z, reflectance.
* ``training/label_2/<id>.txt``: one object a line, ``type truncated occluded alpha x1 y1 x2 y2 h w l
  x y z rotation_y [score]`` with (x, y, z) the *bottom* centre in the rectified camera frame.
* ``training/calib/<id>.txt``: ``P0..P3`` (3x4), ``R0_rect`` (3x3), ``Tr_velo_to_cam`` (3x4), ``Tr_imu_to_velo``.
* ``ImageSets/{train,val,test}.txt``: one frame id a line. ``gt_database/*.bin`` + ``kitti_dbinfos_train.pkl``:
  OpenPCDet's GT database (object points relative to the box centre).

Waymo (OpenPCDet ``waymo_processed_data_v0_5_0``): ``<seq>/<seq>.pkl`` is the list of the sequence's
frame info dicts (``point_cloud{lidar_sequence, sample_idx}``, ``frame_id``, ``pose``, ``annos{name,
difficulty, dimensions, location, heading_angles, obj_ids, num_points_in_gt, gt_boxes_lidar (N, 7|9), ...}``);
``<seq>/%04d.npy`` holds float32 (N, 6) x, y, z, intensity, elongation, NLZ flag (-1 = outside every
no-label zone); ``ImageSets/{train,val}.txt`` lists the sequences' ``.tfrecord`` names. The GT database:
``waymo_processed_data_v0_5_0_gt_database_train_sampled_<k>/*.bin`` and
``waymo_processed_data_v0_5_0_waymo_dbinfos_train_sampled_<k>.pkl``.

Pickles are read with :mod:`visionattn.safe_pickle` (numpy arrays/scalars and containers only: nothing
in a data file runs). Every reader error names the file and what is wrong with it.
"""
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..safe_pickle import load_arrays_only

PathLike = Union[str, Path]
KITTI_CLASSES = ("Car", "Pedestrian", "Cyclist")
WAYMO_CLASSES = ("Vehicle", "Pedestrian", "Cyclist")
# KITTI's default image size (most frames are 375 x 1242), used when image_2/<id>.png is absent
KITTI_IMAGE_SHAPE = (375, 1242)


class LidarFormatError(ValueError):
    """A data file that does not hold what its format says (the message names the file)."""


# --- box geometry --------------------------------------------------------------------------------

def limit_period(angle, offset: float = 0.5, period: float = 2 * math.pi):
    """Wrap angles into [-offset * period, (1 - offset) * period) (OpenPCDet's ``limit_period``)."""
    return angle - np.floor(angle / period + offset) * period


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(M, 7) boxes -> (M, 8, 3) corners (bottom face first, counter-clockwise from (+dx/2, +dy/2))."""
    boxes = np.asarray(boxes, dtype=np.float64)
    boxes = boxes.reshape(-1, boxes.shape[-1])
    signs = np.array([[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1],
                      [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]], np.float64) * 0.5
    local = signs[None] * boxes[:, None, 3:6]
    cos, sin = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin + boxes[:, 0:1]
    y = local[..., 0] * sin + local[..., 1] * cos + boxes[:, 1:2]
    return np.stack([x, y, local[..., 2] + boxes[:, 2:3]], -1)


def points_in_boxes(points: np.ndarray, boxes: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """(N, >=3) points, (M, >=7) boxes -> (N, M) bool: point n inside box m (faces included, ``eps`` margin)."""
    points, boxes = np.asarray(points), np.asarray(boxes, dtype=np.float64)
    out = np.zeros((points.shape[0], boxes.shape[0]), bool)
    if not out.size:
        return out
    xyz = points[:, :3].astype(np.float64)
    for m, (x, y, z, dx, dy, dz, heading) in enumerate(boxes[:, :7]):
        radius = 0.5 * math.hypot(dx, dy) + eps
        near = np.nonzero((np.abs(xyz[:, 0] - x) <= radius) & (np.abs(xyz[:, 1] - y) <= radius)
                          & (np.abs(xyz[:, 2] - z) <= dz / 2 + eps))[0]
        if near.size == 0:
            continue
        rx, ry = xyz[near, 0] - x, xyz[near, 1] - y
        c, s = math.cos(heading), math.sin(heading)
        inside = (np.abs(rx * c + ry * s) <= dx / 2 + eps) & (np.abs(-rx * s + ry * c) <= dy / 2 + eps)
        out[near[inside], m] = True
    return out


# --- KITTI -----------------------------------------------------------------------------------------

def _float32_points(path: PathLike, num_features: int, what: str, fault) -> np.ndarray:
    """A raw float32 file -> (N, num_features); ``fault(path, floats)`` words the error of a partial point."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % num_features:
        raise LidarFormatError(fault(path, raw.size))
    return raw.reshape(-1, num_features)


def read_kitti_points(path: PathLike, num_features: int = 4) -> np.ndarray:
    """``velodyne/<id>.bin`` -> float32 (N, num_features)."""
    return _float32_points(path, num_features, "KITTI point cloud", lambda p, n: (
        f"{p}: {n * 4} bytes is not a whole number of {num_features}-float32 points (x, y, z, reflectance); "
        f"truncated or not a KITTI velodyne file"))


def read_kitti_calib(path: PathLike) -> Dict[str, np.ndarray]:
    """``calib/<id>.txt`` -> dict(P2 (3, 4), R0_rect (3, 3), Tr_velo_to_cam (3, 4)) float64 (other keys kept too)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI calibration {str(path)!r} does not exist")
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            raise LidarFormatError(f"{path}:{number}: expected 'KEY: numbers', got {line[:60]!r}")
        try:
            values[key.strip()] = np.array([float(v) for v in rest.split()], np.float64)
        except ValueError:
            raise LidarFormatError(f"{path}:{number}: non-numeric value in {line[:60]!r}") from None
    shapes = {"P2": (3, 4), "R0_rect": (3, 3), "Tr_velo_to_cam": (3, 4)}
    out = {}
    for key, shape in shapes.items():
        if key not in values:
            raise LidarFormatError(f"{path}: no {key} line (found {sorted(values)}); not a KITTI object calib file")
        if values[key].size != shape[0] * shape[1]:
            raise LidarFormatError(f"{path}: {key} has {values[key].size} numbers, expected {shape[0] * shape[1]}")
        out[key] = values[key].reshape(shape)
    for key, value in values.items():
        if key not in out and value.size == 12:
            out[key] = value.reshape(3, 4)
    return out


def read_kitti_label(path: PathLike) -> Dict[str, np.ndarray]:
    """``label_2/<id>.txt`` -> dict of per-object arrays: ``name``, ``truncated``, ``occluded``, ``alpha``,
    ``bbox`` (M, 4) x1 y1 x2 y2, ``dimensions`` (M, 3) as in the file (h, w, l), ``location`` (M, 3)
    camera-frame bottom centre, ``rotation_y``, ``score`` (1 when absent). An empty file gives M = 0."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI label {str(path)!r} does not exist")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (15, 16):
            raise LidarFormatError(f"{path}:{number}: a KITTI object line has 15 fields (16 with a score), got "
                                   f"{len(parts)}: {line[:80]!r}")
        try:
            rows.append((parts[0], [float(v) for v in parts[1:]] + ([1.0] if len(parts) == 15 else [])))
        except ValueError:
            raise LidarFormatError(f"{path}:{number}: non-numeric field in {line[:80]!r}") from None
    values = np.array([r[1] for r in rows], np.float64).reshape(-1, 15)
    return dict(name=np.array([r[0] for r in rows], dtype="<U16"), truncated=values[:, 0],
                occluded=values[:, 1].astype(np.int64), alpha=values[:, 2], bbox=values[:, 3:7],
                dimensions=values[:, 7:10], location=values[:, 10:13], rotation_y=values[:, 13], score=values[:, 14])


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:matrix.shape[0], :matrix.shape[1]] = matrix
    return out


def lidar_to_rect(points: np.ndarray, calib: Dict[str, np.ndarray]) -> np.ndarray:
    """(N, 3) LiDAR -> rectified camera coordinates."""
    hom = np.concatenate([points[:, :3], np.ones((len(points), 1))], 1)
    return hom @ (_homogeneous(calib["R0_rect"]) @ _homogeneous(calib["Tr_velo_to_cam"])).T[:, :3]


def rect_to_lidar(points: np.ndarray, calib: Dict[str, np.ndarray]) -> np.ndarray:
    """(N, 3) rectified camera -> LiDAR coordinates."""
    hom = np.concatenate([points[:, :3], np.ones((len(points), 1))], 1)
    return hom @ np.linalg.inv(_homogeneous(calib["R0_rect"]) @ _homogeneous(calib["Tr_velo_to_cam"])).T[:, :3]


def rect_to_image(points: np.ndarray, calib: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(N, 3) rectified camera -> (N, 2) image pixels of camera 2 and (N,) depth."""
    hom = np.concatenate([points[:, :3], np.ones((len(points), 1))], 1) @ calib["P2"].T
    depth = hom[:, 2]
    return hom[:, :2] / np.where(np.abs(depth) < 1e-9, 1e-9, depth)[:, None], depth - calib["P2"][2, 3]


def kitti_label_to_lidar_boxes(label: Dict[str, np.ndarray], calib: Dict[str, np.ndarray]) -> np.ndarray:
    """Camera-frame labels -> (M, 7) LiDAR boxes: centre = bottom centre moved up by h/2, (dx, dy, dz) =
    (l, w, h), heading = -(pi/2 + rotation_y) (OpenPCDet's conversion) wrapped into [-pi, pi)."""
    h, w, l = (label["dimensions"][:, i:i + 1] for i in range(3))
    centre = rect_to_lidar(label["location"], calib)
    centre[:, 2:3] += h / 2
    heading = limit_period(-(np.pi / 2 + label["rotation_y"][:, None]))
    return np.concatenate([centre, l, w, h, heading], 1).astype(np.float32)


def lidar_boxes_to_kitti_camera(boxes: np.ndarray, calib: Dict[str, np.ndarray]
                                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, 7) LiDAR boxes -> (location (M, 3) bottom centre, dimensions (M, 3) h w l, rotation_y (M,))."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    bottom = boxes[:, :3].copy()
    bottom[:, 2] -= boxes[:, 5] / 2
    location = lidar_to_rect(bottom, calib)
    return location, boxes[:, [5, 4, 3]], limit_period(-boxes[:, 6] - np.pi / 2)


def boxes_to_image_bbox(boxes: np.ndarray, calib: Dict[str, np.ndarray], image_shape: Sequence[int]
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """(M, 7) LiDAR boxes -> 2-D boxes (M, 4) of their projected corners clipped to the image, and the
    truncation (M,): the share of the unclipped 2-D box area outside the image."""
    corners = box_corners(boxes).reshape(-1, 3)
    pixels, _ = rect_to_image(lidar_to_rect(corners, calib), calib)
    pixels = pixels.reshape(-1, 8, 2)
    lo, hi = pixels.min(1), pixels.max(1)
    h, w = image_shape
    clipped = np.stack([np.clip(lo[:, 0], 0, w - 1), np.clip(lo[:, 1], 0, h - 1),
                        np.clip(hi[:, 0], 0, w - 1), np.clip(hi[:, 1], 0, h - 1)], 1)
    full = np.maximum((hi - lo).prod(1), 1e-9)
    kept = np.maximum(clipped[:, 2] - clipped[:, 0], 0) * np.maximum(clipped[:, 3] - clipped[:, 1], 0)
    return clipped, np.clip(1 - kept / full, 0, 1)


def kitti_difficulty(bbox: np.ndarray, truncated: np.ndarray, occluded: np.ndarray) -> np.ndarray:
    """KITTI difficulty per object: 0 easy (2-D height >= 40 px, truncation <= 0.15, fully visible),
    1 moderate (>= 25 px, <= 0.3, occlusion <= 1), 2 hard (>= 25 px, <= 0.5, occlusion <= 2), -1 none
    (heights as OpenPCDet: y2 - y1 + 1)."""
    height = bbox[:, 3] - bbox[:, 1] + 1
    out = np.full(len(height), -1, np.int64)
    for level, (min_h, max_t, max_o) in reversed(list(enumerate(((40, 0.15, 0), (25, 0.3, 1), (25, 0.5, 2))))):
        out[(height >= min_h) & (truncated <= max_t) & (occluded <= max_o)] = level
    return out


def kitti_fov_mask(points: np.ndarray, calib: Dict[str, np.ndarray], image_shape: Sequence[int]) -> np.ndarray:
    """(N,) bool: points in front of camera 2 that project inside the image (OpenPCDet's FOV_POINTS_ONLY)."""
    rect = lidar_to_rect(points[:, :3].astype(np.float64), calib)
    pixels, depth = rect_to_image(rect, calib)
    h, w = image_shape
    return ((pixels[:, 0] >= 0) & (pixels[:, 0] < w) & (pixels[:, 1] >= 0) & (pixels[:, 1] < h) & (depth >= 0))


def kitti_image_shape(path: PathLike) -> Tuple[int, int]:
    """(H, W) of ``image_2/<id>.png`` (header only), or KITTI's usual 375 x 1242 if the image is absent."""
    path = Path(path)
    if not path.is_file():
        return KITTI_IMAGE_SHAPE
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as err:
        raise LidarFormatError(f"{path}: not a readable image ({err})") from None


def write_kitti_calib(path: PathLike, calib: Dict[str, np.ndarray]) -> None:
    """Write a KITTI object calib file (P0..P3 default to P2 when absent, Tr_imu_to_velo to identity)."""
    rows = []
    for key in ("P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo"):
        value = calib.get(key, calib["P2"] if key.startswith("P") else np.eye(3, 4))
        rows.append(f"{key}: " + " ".join(f"{v:.12e}" for v in np.asarray(value, np.float64).ravel()))
    Path(path).write_text("\n".join(rows) + "\n")


def write_kitti_label(path: PathLike, names: Sequence[str], boxes: np.ndarray, calib: Dict[str, np.ndarray],
                      bbox: Optional[np.ndarray] = None, truncated: Optional[np.ndarray] = None,
                      occluded: Optional[np.ndarray] = None, scores: Optional[np.ndarray] = None,
                      image_shape: Sequence[int] = KITTI_IMAGE_SHAPE) -> None:
    """Write LiDAR boxes (M, 7) as a KITTI ``label_2`` file (with a 16th ``score`` column when ``scores``
    is given: the KITTI results format). 2-D boxes and truncation default to the projected corners."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    location, dims, rot_y = lidar_boxes_to_kitti_camera(boxes, calib)
    projected, trunc = boxes_to_image_bbox(boxes, calib, image_shape)
    bbox = projected if bbox is None else np.asarray(bbox).reshape(-1, 4)
    truncated = trunc if truncated is None else np.asarray(truncated)
    occluded = np.zeros(len(boxes), np.int64) if occluded is None else np.asarray(occluded)
    alpha = limit_period(-np.arctan2(-boxes[:, 1], boxes[:, 0]) + rot_y)
    lines = []
    for i, name in enumerate(names):
        fields = [name, f"{truncated[i]:.2f}", str(int(occluded[i])), f"{alpha[i]:.2f}",
                  *(f"{v:.2f}" for v in bbox[i]), *(f"{v:.2f}" for v in dims[i]), *(f"{v:.2f}" for v in location[i]),
                  f"{rot_y[i]:.2f}"] + ([f"{scores[i]:.4f}"] if scores is not None else [])
        lines.append(" ".join(fields))
    Path(path).write_text("".join(line + "\n" for line in lines))


def read_image_set(path: PathLike) -> List[str]:
    """``ImageSets/<split>.txt`` -> its non-empty lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {str(path)!r} does not exist (ImageSets/<split>.txt lists the "
                                f"frames or sequences of a split)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# --- Waymo (OpenPCDet) -------------------------------------------------------------------------------

def read_waymo_points(path: PathLike, keep_nlz: bool = False, tanh_dims: Sequence[int] = (3, 4)) -> np.ndarray:
    """``<seq>/%04d.npy`` (N, 6) x, y, z, intensity, elongation, NLZ flag -> float32 (N', 5), as
    OpenPCDet's ``get_lidar``: points inside a no-label zone (flag != -1) dropped unless ``keep_nlz``,
    the flag column dropped, ``tanh`` applied to ``tanh_dims`` (intensity, elongation)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Waymo point cloud {str(path)!r} does not exist")
    try:
        raw = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise LidarFormatError(f"{path}: not a plain .npy array ({err})") from None
    if raw.ndim != 2 or raw.shape[1] != 6:
        raise LidarFormatError(f"{path}: expected (N, 6) points (x, y, z, intensity, elongation, NLZ flag) as "
                               f"OpenPCDet's waymo_processed_data_v0_5_0 writes them, got shape {raw.shape}")
    if not np.issubdtype(raw.dtype, np.floating):
        raise LidarFormatError(f"{path}: points must be floating point, got {raw.dtype}")
    points = raw[:, :5] if keep_nlz else raw[raw[:, 5] == -1, :5]
    points = points.astype(np.float32)
    for dim in tanh_dims:
        points[:, dim] = np.tanh(points[:, dim])
    return points


def read_pickle(path: PathLike, what: str) -> object:
    """A data pickle read with the restricted unpickler (numpy arrays/scalars and containers only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    with open(path, "rb") as f:
        return load_arrays_only(f, what=f"{what} {path}")


_WAYMO_ANNOS = ("name", "difficulty", "num_points_in_gt", "gt_boxes_lidar")


def read_waymo_sequence_infos(path: PathLike) -> List[dict]:
    """``<seq>/<seq>.pkl`` -> its list of frame info dicts, checked for the keys the reader uses."""
    infos = read_pickle(path, "Waymo sequence info pickle")
    if not isinstance(infos, list):
        raise LidarFormatError(f"{path}: expected a list of frame info dicts, got {type(infos).__name__}")
    for i, info in enumerate(infos):
        if not isinstance(info, dict) or not isinstance(info.get("point_cloud"), dict) \
                or "sample_idx" not in info["point_cloud"]:
            raise LidarFormatError(f"{path}: frame {i} has no point_cloud.sample_idx (not an OpenPCDet Waymo info)")
        annos = info.get("annos")
        if annos is not None:
            missing = [k for k in _WAYMO_ANNOS if k not in annos]
            if missing:
                raise LidarFormatError(f"{path}: frame {i}'s annos lack {missing}")
            n = len(annos["name"])
            boxes = np.asarray(annos["gt_boxes_lidar"])
            if n and (boxes.ndim != 2 or boxes.shape[0] != n or boxes.shape[1] < 7) \
                    or len(annos["num_points_in_gt"]) != n or len(annos["difficulty"]) != n:
                raise LidarFormatError(f"{path}: frame {i}'s annos hold {n} names but gt_boxes_lidar of shape "
                                       f"{boxes.shape} (expected ({n}, 7|9)), {len(annos['num_points_in_gt'])} point "
                                       f"counts and {len(annos['difficulty'])} difficulties")
    return infos


def waymo_difficulty(difficulty: np.ndarray, num_points: np.ndarray) -> np.ndarray:
    """Waymo level per box: 2 (LEVEL_2) if the label says so or the box holds <= 5 points, else 1."""
    difficulty, num_points = np.asarray(difficulty).astype(np.int64), np.asarray(num_points).astype(np.int64)
    return np.where((difficulty == 2) | (num_points <= 5), 2, 1).astype(np.int64)


def read_db_infos(path: PathLike) -> Dict[str, List[dict]]:
    """An OpenPCDet GT-database info pickle -> class name -> list of object infos (``path``, ``box3d_lidar``,
    ``num_points_in_gt``, ``difficulty``, ...)."""
    infos = read_pickle(path, "GT database info pickle")
    if not isinstance(infos, dict) or not all(isinstance(v, list) for v in infos.values()):
        raise LidarFormatError(f"{path}: expected a dict class name -> list of object infos, got "
                               f"{type(infos).__name__}")
    for name, items in infos.items():
        for item in items[:1]:
            missing = [k for k in ("path", "box3d_lidar", "num_points_in_gt") if k not in item]
            if missing:
                raise LidarFormatError(f"{path}: the {name!r} object infos lack {missing}")
    return infos


def read_db_points(path: PathLike, num_features: int) -> np.ndarray:
    """A GT-database ``.bin`` (float32 object points relative to the box centre) -> (K, num_features)."""
    return _float32_points(path, num_features, "GT database object file", lambda p, n: (
        f"{p}: {n} floats are not whole {num_features}-feature points (num_point_features of the GT "
        f"database: KITTI 4, Waymo 5)"))
