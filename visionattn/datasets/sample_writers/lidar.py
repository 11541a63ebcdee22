"""Tiny procedural LiDAR scenes in the two real layouts: KITTI 3D object (``kitti3d``) and Waymo as
OpenPCDet processes it (``waymo``), each with its GT database.

A scene: a flat ground whose returns thin out with range around the sensor, and boxes standing on
it (cars/vehicles, pedestrians, cyclists; KITTI frames also a van and a DontCare region, Waymo frames
a sign) with points on their four sides and top. Box sizes and point intensities differ per class
so that a detector can tell them apart. One training frame has no object (an empty label).
Everything is in the LiDAR frame and written through the readers' own conventions
(:mod:`visionattn.datasets.lidar_formats`), so reading a frame back gives the boxes generated.
"""
import math
import pickle
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from ..lidar_formats import (KITTI_IMAGE_SHAPE, boxes_to_image_bbox, kitti_fov_mask, points_in_boxes,
                             write_kitti_calib, write_kitti_label)
from . import register_sample_writer

# (name, (l, w, h), jitter, intensity): Car/Vehicle, Pedestrian, Cyclist, and types the detectors do not learn
SHAPES = {"car": ((3.9, 1.6, 1.56), 0.1, 0.8), "pedestrian": ((0.8, 0.6, 1.73), 0.08, 0.45),
          "cyclist": ((1.76, 0.6, 1.73), 0.08, 0.6), "van": ((5.1, 1.9, 2.2), 0.05, 0.7),
          "sign": ((0.2, 0.6, 0.6), 0.05, 0.95)}
SYMMETRIC = ("pedestrian", "sign")  # kinds without a front (make_scene)
HOOD, HOOD_HEIGHT = 0.3, 0.55  # fractions of a vehicle's length and height
# a KITTI frame's calibration (typical values of the KITTI object benchmark)
KITTI_CALIB = dict(
    P2=np.array([[721.5377, 0.0, 609.5593, 44.85728], [0.0, 721.5377, 172.854, 0.2163791], [0.0, 0.0, 1.0, 0.002745884]]),
    R0_rect=np.array([[0.9999239, 0.00983776, -0.0007445048], [-0.009869795, 0.9999421, -0.004278459],
                      [0.0008021421, 0.004283929, 0.9999905]]),
    Tr_velo_to_cam=np.array([[0.007533745, -0.9999714, -0.000616602, -0.004069766],
                             [0.01480249, 0.0007280733, -0.9998902, -0.07631618],
                             [0.9998621, 0.00752379, 0.01480755, -0.2717806]]))


def make_scene(rng: np.random.Generator, kinds: Sequence[str], ground_z: float, x_range: Tuple[float, float],
               y_range: Tuple[float, float], ground_points: int = 2500, density: float = 2500.0,
               max_bearing: float = math.pi) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Points (N, 5) x, y, z, intensity, elongation; boxes (M, 7); kinds (M,) of the placed boxes.

    Boxes are placed without BEV overlap, their centres within ``max_bearing`` of the +x axis (a kind
    that does not fit after 50 tries is left out);
    each box gets ``density / distance`` points (at least 12) on its sides and top. Vehicles (all but
    pedestrians and signs) have a front: over the front ``HOOD`` of their length the top is a hood at
    ``HOOD_HEIGHT`` of the box height, so the heading (not only its axis) can be read from the points,
    as on a real car; a plain box looks the same under heading + pi, which no detector can learn."""
    boxes, placed = [], []
    for kind in kinds:
        (l, w, h), jitter, _ = SHAPES[kind]
        for _ in range(50):
            x, y = rng.uniform(*x_range), rng.uniform(*y_range)
            size = np.array([l, w, h]) * (1 + jitter * rng.uniform(-1, 1, 3))
            box = np.array([x, y, ground_z + size[2] / 2, *size, rng.uniform(-math.pi, math.pi)])
            if all(math.hypot(x - b[0], y - b[1]) > 0.5 * (math.hypot(*size[:2]) + math.hypot(*b[3:5])) + 0.3
                   for b in boxes) and math.hypot(x, y) > 3 and abs(math.atan2(y, x)) < max_bearing:
                boxes.append(box)
                placed.append(kind)
                break
    boxes = np.array(boxes, np.float64).reshape(-1, 7)
    r = rng.uniform(2.0, max(abs(v) for v in (*x_range, *y_range)) * 1.3, ground_points)
    theta = rng.uniform(-math.pi, math.pi, ground_points)
    ground = np.stack([r * np.cos(theta), r * np.sin(theta), ground_z + rng.normal(0, 0.02, ground_points),
                       rng.uniform(0.05, 0.3, ground_points), rng.uniform(0, 0.1, ground_points)], 1)
    if len(boxes):  # the ground under a box is hidden by it
        ground = ground[~points_in_boxes(ground, boxes + np.array([0, 0, -0.1, 0, 0, 0.3, 0])).any(1)]
    parts = [ground]
    for box, kind in zip(boxes, placed):
        n = max(12, int(density / math.hypot(box[0], box[1])))
        local = rng.uniform(-0.5, 0.5, (n, 3))
        face = rng.integers(0, 5, n)  # 0-3: the four sides, 4: the top
        side = face < 4
        axis = np.where(face[side] < 2, 0, 1)
        local[np.nonzero(side)[0], axis] = np.where(face[side] % 2 == 0, 0.5, -0.5)
        local[~side, 2] = 0.5
        if kind not in SYMMETRIC:  # the hood: front part lower (top and front face cut at the hood's height)
            hood = local[:, 0] > 0.5 - HOOD
            hood_top = -0.5 + HOOD_HEIGHT
            local[hood & ~side, 2] = hood_top
            local[:, 2] = np.where(hood, np.minimum(local[:, 2], hood_top), local[:, 2])
        local *= box[3:6] * 0.92  # inside the faces (labels are rounded to 1 cm)
        c, s = math.cos(box[6]), math.sin(box[6])
        xyz = np.stack([local[:, 0] * c - local[:, 1] * s + box[0], local[:, 0] * s + local[:, 1] * c + box[1],
                        local[:, 2] + box[2]], 1)
        intensity = np.clip(SHAPES[kind][2] + rng.normal(0, 0.05, (n, 1)), 0, 1)
        parts.append(np.concatenate([xyz, intensity, rng.uniform(0, 0.2, (n, 1))], 1))
    return np.concatenate(parts).astype(np.float32), boxes.astype(np.float32), placed


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


# --- KITTI -----------------------------------------------------------------------------------------

KITTI_NAMES = {"car": "Car", "pedestrian": "Pedestrian", "cyclist": "Cyclist", "van": "Van"}


def write_kitti3d(root: Path, train: int = 16, val: int = 6, seed: int = 0,
                  x_range=(4.0, 24.0), y_range=(-10.0, 10.0), ground_points: int = 2500) -> None:
    """KITTI 3D object layout: ``training/{velodyne,label_2,calib,image_2}``, ``ImageSets/{train,val}.txt``,
    ``gt_database/`` + ``kitti_dbinfos_train.pkl`` (OpenPCDet's) over the training frames. Frame 1 has no object."""
    root = Path(root)
    base = root / "training"
    for sub in ("velodyne", "label_2", "calib", "image_2"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets").mkdir(exist_ok=True)
    (root / "gt_database").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"{i:06d}" for i in range(train + val)]
    db: Dict[str, list] = {}
    image = Image.new("L", KITTI_IMAGE_SHAPE[::-1], 0)
    for i, frame_id in enumerate(ids):
        kinds = [] if i == 1 else (["car"] * int(rng.integers(2, 5)) + ["pedestrian"] * int(rng.integers(1, 3))
                                   + ["cyclist"] * int(rng.integers(1, 3)) + (["van"] if i % 3 == 0 else []))
        # objects inside camera 2's view (bearing < 35 degrees), as KITTI annotates them
        points, boxes, placed = make_scene(rng, kinds, -1.73, x_range, y_range, ground_points, max_bearing=0.6)
        behind = rng.uniform(-20, -3, (200, 1))  # returns behind the camera, outside its field of view
        points = np.concatenate([points, np.concatenate([behind, rng.uniform(-10, 10, (200, 1)),
                                                         np.full((200, 1), -1.73), np.full((200, 2), 0.2)], 1)])
        points = points[:, :4].astype(np.float32)
        points.tofile(base / "velodyne" / f"{frame_id}.bin")
        write_kitti_calib(base / "calib" / f"{frame_id}.txt", KITTI_CALIB)
        image.save(base / "image_2" / f"{frame_id}.png")
        names = [KITTI_NAMES[k] for k in placed]
        bbox, truncated = boxes_to_image_bbox(boxes, KITTI_CALIB, KITTI_IMAGE_SHAPE)
        occluded = rng.integers(0, 2, len(boxes))
        write_kitti_label(base / "label_2" / f"{frame_id}.txt", names, boxes, KITTI_CALIB, bbox=bbox,
                          truncated=truncated, occluded=occluded)
        if i % 4 == 2:  # a DontCare region, as KITTI labels have
            with open(base / "label_2" / f"{frame_id}.txt", "a") as f:
                f.write("DontCare -1 -1 -10 700.00 170.00 740.00 200.00 -1 -1 -1 -1000 -1000 -1000 -10\n")
        if i < train:
            inside = points_in_boxes(points, boxes)
            fov = kitti_fov_mask(points, KITTI_CALIB, KITTI_IMAGE_SHAPE)
            from ..lidar_formats import kitti_difficulty

            difficulty = kitti_difficulty(bbox, truncated, occluded)
            for j, name in enumerate(names):
                rel = Path("gt_database") / f"{frame_id}_{name}_{j}.bin"
                obj = points[inside[:, j]].copy()
                obj[:, :3] -= boxes[j, :3]
                obj.tofile(root / rel)
                db.setdefault(name, []).append(dict(
                    name=name, path=str(rel), image_idx=frame_id, gt_idx=j, box3d_lidar=boxes[j].copy(),
                    num_points_in_gt=int((inside[:, j] & fov).sum()), difficulty=int(difficulty[j]),
                    bbox=bbox[j].astype(np.float32), score=-1.0))
    (root / "ImageSets" / "train.txt").write_text("".join(f"{i}\n" for i in ids[:train]))
    (root / "ImageSets" / "val.txt").write_text("".join(f"{i}\n" for i in ids[train:]))
    _pickle(root / "kitti_dbinfos_train.pkl", db)


# --- Waymo (OpenPCDet) ------------------------------------------------------------------------------

WAYMO_NAMES = {"car": "Vehicle", "pedestrian": "Pedestrian", "cyclist": "Cyclist", "sign": "Sign"}
PROCESSED = "waymo_processed_data_v0_5_0"


def write_waymo(root: Path, train_sequences: int = 2, val_sequences: int = 1, frames: int = 4, seed: int = 1,
                extent: float = 24.0, ground_points: int = 3000) -> None:
    """OpenPCDet's processed Waymo layout: ``ImageSets/{train,val}.txt`` (sequence tfrecord names),
    ``waymo_processed_data_v0_5_0/<seq>/<seq>.pkl`` + ``%04d.npy`` (x, y, z, intensity, elongation, NLZ
    flag; a few no-label-zone points marked 1), and the GT database of the training sequences."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "ImageSets").mkdir(parents=True, exist_ok=True)
    db_dir = f"{PROCESSED}_gt_database_train_sampled_1"
    (root / db_dir).mkdir(exist_ok=True)
    db: Dict[str, list] = {}
    names_by_split = {"train": [], "val": []}
    for s in range(train_sequences + val_sequences):
        split = "train" if s < train_sequences else "val"
        seq = f"segment-{1000 + s:04d}{s:012d}_0000_000_0000_000_with_camera_labels"
        names_by_split[split].append(seq + ".tfrecord")
        folder = root / PROCESSED / seq
        folder.mkdir(parents=True, exist_ok=True)
        infos = []
        for idx in range(frames):
            kinds = ([] if (split == "train" and s == 0 and idx == 1) else
                     ["car"] * int(rng.integers(3, 6)) + ["pedestrian"] * int(rng.integers(1, 4))
                     + ["cyclist"] * int(rng.integers(1, 3)) + ["sign"])
            points, boxes, placed = make_scene(rng, kinds, 0.0, (-extent, extent), (-extent, extent), ground_points)
            nlz = np.full((len(points), 1), -1.0, np.float32)
            junk = np.concatenate([rng.uniform(-extent, extent, (40, 2)), rng.uniform(0, 3, (40, 1)),
                                   np.full((40, 2), 0.5), np.ones((40, 1))], 1)  # inside a no-label zone
            raw = np.concatenate([np.concatenate([points, nlz], 1), junk]).astype(np.float32)
            np.save(folder / f"{idx:04d}.npy", raw)
            used = points.copy()  # what OpenPCDet's reader gives: NLZ dropped, tanh on intensity, elongation
            used[:, 3:5] = np.tanh(used[:, 3:5])
            inside = points_in_boxes(used, boxes)
            num = inside.sum(0).astype(np.int64)
            names = np.array([WAYMO_NAMES[k] for k in placed], dtype="<U10")
            difficulty = np.where(rng.random(len(boxes)) < 0.2, 2, 0).astype(np.int32)
            speed = rng.normal(0, 1, (len(boxes), 2)).astype(np.float32)
            annos = dict(name=names, difficulty=difficulty, dimensions=boxes[:, 3:6].copy(),
                         location=boxes[:, :3].copy(), heading_angles=boxes[:, 6].copy(),
                         obj_ids=np.array([f"obj{s}_{j}" for j in range(len(boxes))]),
                         tracking_difficulty=np.zeros(len(boxes), np.int32), num_points_in_gt=num,
                         speed_global=speed, accel_global=np.zeros_like(speed),
                         gt_boxes_lidar=np.concatenate([boxes, speed], 1).reshape(-1, 9))
            infos.append(dict(point_cloud=dict(num_points_of_each_lidar=[len(raw), 0, 0, 0, 0], lidar_sequence=seq,
                                               sample_idx=idx),
                              frame_id=f"{seq}_{idx:03d}", metadata=dict(context_name=seq,
                                                                         timestamp_micros=1_500_000_000_000_000 + idx * 100_000),
                              pose=np.eye(4), annos=annos))
            if split == "train":
                for j, name in enumerate(names):
                    if name == "Sign":
                        continue
                    rel = Path(db_dir) / f"{seq}_{idx:04d}_{name}_{j}.bin"
                    obj = used[inside[:, j]].copy()
                    obj[:, :3] -= boxes[j, :3]
                    obj.tofile(root / rel)
                    db.setdefault(name, []).append(dict(
                        name=name, path=str(rel), sequence_name=seq, sample_idx=idx, gt_idx=j,
                        box3d_lidar=annos["gt_boxes_lidar"][j].copy(), num_points_in_gt=int(num[j]),
                        difficulty=int(difficulty[j])))
        _pickle(folder / f"{seq}.pkl", infos)
    for split, names in names_by_split.items():
        (root / "ImageSets" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    _pickle(root / f"{PROCESSED}_waymo_dbinfos_train_sampled_1.pkl", db)


@register_sample_writer("kitti3d")
def _write_kitti3d_sample(root: Path) -> None:
    write_kitti3d(root)


@register_sample_writer("waymo")
def _write_waymo_sample(root: Path) -> None:
    write_waymo(root)
