"""LiDAR 3-D detection datasets (KITTI 3D object, Waymo as OpenPCDet processes it) and their collate.

``dataset[i]`` returns ``dict(points=float32 (N, C), data_samples=dict(frame_id, metainfo, gt_boxes
(M, 7) float32, gt_labels (M,) int64, gt_difficulty (M,) int64, gt_num_points (M,) int64, ...))``
after the ``pipeline`` (a list of TRANSFORMS configs or callables applied to the numpy frame; see
:mod:`.lidar_transforms`). KITTI frames also carry ``calib`` (numpy P2, R0_rect, Tr_velo_to_cam),
``image_shape``, ``gt_bbox_2d``, ``gt_alpha``, ``dontcare_bbox_2d`` and the objects of other KITTI
types (``other_names``, ``other_boxes``, ``other_bbox_2d``: Van, Person_sitting, ... that the KITTI
protocol ignores rather than counts). Boxes are in the LiDAR frame, centred (file formats and
conventions: :mod:`.lidar_formats`). Voxelisation is the network's (it takes the raw points).

:func:`lidar_collate` (FUNCTIONS ``lidar_collate``) batches frames as ``dict(inputs=dict(points=(sum N,
1 + C) with column 0 the frame index, batch_size=B), data_samples=[B dicts])``.
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dataset import Compose
from torch.utils.data import Dataset

from ..registry import DATASETS, FUNCTIONS, TRANSFORMS
from .lidar_formats import (KITTI_CLASSES, WAYMO_CLASSES, LidarFormatError, kitti_difficulty, kitti_fov_mask,
                            kitti_image_shape, kitti_label_to_lidar_boxes, limit_period, points_in_boxes,
                            read_image_set, read_kitti_calib, read_kitti_label, read_kitti_points,
                            read_waymo_points, read_waymo_sequence_infos, waymo_difficulty)
from .lidar_transforms import PER_BOX_KEYS

Pipeline = Optional[Sequence[Union[dict, Callable]]]


def build_pipeline(pipeline: Pipeline) -> Compose:
    """A list of TRANSFORMS configs (scope visionattn) or callables -> mmengine ``Compose`` (``.transforms``)."""
    return Compose([TRANSFORMS.build(t) if isinstance(t, dict) else t for t in (pipeline or [])])


class LidarDetectionDataset(Dataset):
    """Base class: subclasses list frames in ``self.frames`` and read one with ``load_frame``."""

    name = "LiDAR"
    default_classes: Sequence[str] = ()

    def __init__(self, root: str, split: str, class_names: Optional[Sequence[str]], point_cloud_range: Sequence[float],
                 pipeline: Pipeline):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name} root {str(self.root)!r} does not exist (see datasets/README.md; "
                                    f"python tools/make_samples.py writes a tiny copy under datasets/samples/)")
        self.split = split
        self.class_names = tuple(class_names or self.default_classes)
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        if len(self.point_cloud_range) != 6:
            raise ValueError(f"point_cloud_range must be (x0, y0, z0, x1, y1, z1), got {point_cloud_range}")
        self.pipeline = build_pipeline(pipeline)
        self.frames: List[Dict] = []

    def load_frame(self, index: int) -> Dict:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Dict:
        frame = self.load_frame(index)
        frame = self.pipeline(frame)
        if frame is None:
            raise RuntimeError(f"a transform of {self.name} frame {index} returned None")
        return to_tensors(frame)


def to_tensors(frame: Dict) -> Dict:
    """The numpy frame -> ``dict(points=tensor, data_samples=dict(...))`` (per-box arrays as tensors)."""
    points = torch.from_numpy(np.ascontiguousarray(frame["points"], dtype=np.float32))
    sample = {}
    for key, value in frame.items():
        if key == "points":
            continue
        if key in PER_BOX_KEYS:
            dtype = np.float32 if key in ("gt_boxes", "gt_bbox_2d", "gt_alpha") else np.int64
            value = torch.from_numpy(np.ascontiguousarray(value, dtype=dtype))
        sample[key] = value
    return dict(points=points, data_samples=sample)


@FUNCTIONS.register_module()
def lidar_collate(batch: Sequence[dict]) -> dict:
    """Frames -> ``dict(inputs=dict(points=(sum N, 1 + C) [frame index, x, y, z, ...], batch_size=B),
    data_samples=[B per-frame dicts])``. Frames without points add no rows (batch_size still counts them)."""
    if not batch:
        raise ValueError("lidar_collate: empty batch")
    widths = {b["points"].shape[1] for b in batch}
    if len(widths) != 1:
        raise ValueError(f"lidar_collate: frames have different point widths {sorted(widths)}; one dataset "
                         f"configuration gives one width (KITTI 4, Waymo 5)")
    points = torch.cat([torch.cat([torch.full((len(b["points"]), 1), float(i)), b["points"].float()], 1)
                        for i, b in enumerate(batch)])
    return dict(inputs=dict(points=points, batch_size=len(batch)), data_samples=[b["data_samples"] for b in batch])


def _box_arrays(boxes: np.ndarray, labels: np.ndarray, difficulty: np.ndarray, num_points: np.ndarray) -> Dict:
    return dict(gt_boxes=np.asarray(boxes, np.float32).reshape(-1, 7), gt_labels=np.asarray(labels, np.int64),
                gt_difficulty=np.asarray(difficulty, np.int64), gt_num_points=np.asarray(num_points, np.int64))


@DATASETS.register_module()
class KittiDetection3D(LidarDetectionDataset):
    """KITTI 3D object detection: ``<root>/training/{velodyne,label_2,calib[,image_2]}`` and
    ``<root>/ImageSets/<split>.txt`` (``train``, ``val``, ``trainval``; ``test`` reads ``testing/`` without labels).

    Points are x, y, z, reflectance (C = 4); with ``fov_points_only`` (OpenPCDet's default for KITTI)
    only points projecting into camera 2's image are kept (image size from ``image_2/<id>.png`` when
    present, else 375 x 1242). Objects of ``class_names`` become the boxes (LiDAR-frame centres, see
    :func:`.lidar_formats.kitti_label_to_lidar_boxes`) with their KITTI difficulty (0 easy, 1
    moderate, 2 hard, -1 none) and their point count (over the kept points); ``DontCare`` regions and
    other types are kept apart for the evaluation.
    """

    name = "KITTI 3D object"
    default_classes = KITTI_CLASSES

    def __init__(self, root: str, split: str = "train", class_names: Optional[Sequence[str]] = None,
                 point_cloud_range: Sequence[float] = (0.0, -40.0, -3.0, 70.4, 40.0, 1.0), pipeline: Pipeline = None,
                 fov_points_only: bool = True):
        super().__init__(root, split, class_names, point_cloud_range, pipeline)
        self.fov_points_only = fov_points_only
        self.folder = self.root / ("testing" if split == "test" else "training")
        self.has_labels = split != "test"
        self.frames = [dict(frame_id=i) for i in read_image_set(self.root / "ImageSets" / f"{split}.txt")]
        if not self.frames:
            raise FileNotFoundError(f"{self.root / 'ImageSets' / f'{split}.txt'} lists no frame")

    def load_frame(self, index: int) -> Dict:
        frame_id = self.frames[index]["frame_id"]
        paths = {k: self.folder / k / f"{frame_id}.{ext}" for k, ext in
                 (("velodyne", "bin"), ("calib", "txt"), ("label_2", "txt"), ("image_2", "png"))}
        points = read_kitti_points(paths["velodyne"])
        calib = read_kitti_calib(paths["calib"])
        image_shape = kitti_image_shape(paths["image_2"])
        if self.fov_points_only:
            points = points[kitti_fov_mask(points, calib, image_shape)]
        out = dict(points=points, frame_id=frame_id, calib=calib, image_shape=image_shape,
                   metainfo=dict(class_names=self.class_names, point_cloud_range=self.point_cloud_range,
                                 dataset="kitti", **{f"{k}_path": str(v) for k, v in paths.items()}))
        if self.has_labels:
            label = read_kitti_label(paths["label_2"])
        else:  # the test split has no labels: no boxes
            label = dict(name=np.zeros(0, "<U16"), truncated=np.zeros(0), occluded=np.zeros(0, np.int64),
                         alpha=np.zeros(0), bbox=np.zeros((0, 4)), dimensions=np.zeros((0, 3)),
                         location=np.zeros((0, 3)), rotation_y=np.zeros(0))
        names = label["name"]
        boxes = kitti_label_to_lidar_boxes(label, calib)
        if not np.all(np.isfinite(boxes)):
            raise LidarFormatError(f"{paths['label_2']}: non-finite box values")
        ours = np.array([n in self.class_names for n in names], bool)
        dontcare = names == "DontCare"
        other = ~ours & ~dontcare
        counts = points_in_boxes(points, boxes).sum(0)
        difficulty = kitti_difficulty(label["bbox"], label["truncated"], label["occluded"])
        out.update(_box_arrays(boxes[ours], [self.class_names.index(n) for n in names[ours]], difficulty[ours],
                               counts[ours]))
        bbox = label["bbox"].astype(np.float32)
        out.update(gt_bbox_2d=bbox[ours], gt_alpha=label["alpha"][ours].astype(np.float32),
                   dontcare_bbox_2d=bbox[dontcare], other_names=[str(n) for n in names[other]],
                   other_boxes=boxes[other], other_bbox_2d=bbox[other], other_difficulty=difficulty[other])
        return out


@DATASETS.register_module()
class WaymoDetection3D(LidarDetectionDataset):
    """Waymo Open Dataset as OpenPCDet's ``waymo_processed_data_v0_5_0`` (see :mod:`.lidar_formats`).

    ``ImageSets/<split>.txt`` lists sequences (``segment-..._with_camera_labels.tfrecord``); each
    one's ``<processed_dir>/<seq>/<seq>.pkl`` lists its frames; every ``sampled_interval``-th frame is
    used (OpenPCDet's ``SAMPLED_INTERVAL``: 1 = 100 %, 5 = 20 %). Points: x, y, z, tanh(intensity),
    tanh(elongation) (C = 5) with no-label-zone points dropped. Boxes of ``class_names`` from
    ``gt_boxes_lidar`` (first 7 columns); ``gt_difficulty`` is the Waymo level (2 if the label says so
    or the box holds <= 5 points, else 1). Sequences listed but not on disk are skipped with a count
    in ``self.missing_sequences`` (as OpenPCDet does), unless none is found.
    """

    name = "Waymo (OpenPCDet)"
    default_classes = WAYMO_CLASSES

    def __init__(self, root: str, split: str = "train", class_names: Optional[Sequence[str]] = None,
                 point_cloud_range: Sequence[float] = (-76.8, -76.8, -2.0, 76.8, 76.8, 4.0), pipeline: Pipeline = None,
                 processed_dir: str = "waymo_processed_data_v0_5_0", sampled_interval: int = 1, keep_nlz: bool = False):
        super().__init__(root, split, class_names, point_cloud_range, pipeline)
        self.data_path = self.root / processed_dir
        self.keep_nlz = keep_nlz
        if int(sampled_interval) < 1:
            raise ValueError(f"sampled_interval must be >= 1, got {sampled_interval}")
        sequences = [Path(s).stem for s in read_image_set(self.root / "ImageSets" / f"{split}.txt")]
        infos, self.missing_sequences = [], 0
        for seq in sequences:
            path = self.data_path / seq / f"{seq}.pkl"
            if not path.is_file():
                self.missing_sequences += 1
                continue
            infos += read_waymo_sequence_infos(path)
        if not infos:
            raise FileNotFoundError(f"no frame of the {len(sequences)} sequences in ImageSets/{split}.txt under "
                                    f"{self.data_path} (expected <seq>/<seq>.pkl per sequence)")
        self.frames = infos[::int(sampled_interval)]

    def load_frame(self, index: int) -> Dict:
        info = self.frames[index]
        seq = info["point_cloud"]["lidar_sequence"]
        sample_idx = int(info["point_cloud"]["sample_idx"])
        path = self.data_path / seq / f"{sample_idx:04d}.npy"
        points = read_waymo_points(path, keep_nlz=self.keep_nlz)
        annos = info.get("annos") or dict(name=np.zeros(0, "<U10"), difficulty=np.zeros(0), num_points_in_gt=np.zeros(0),
                                          gt_boxes_lidar=np.zeros((0, 7)))
        names = np.asarray(annos["name"]).astype(str)
        ours = np.array([n in self.class_names for n in names], bool)
        boxes = np.asarray(annos["gt_boxes_lidar"], np.float32).reshape(len(names), -1)[:, :7] if len(names) \
            else np.zeros((0, 7), np.float32)
        if not np.all(np.isfinite(boxes)):
            raise LidarFormatError(f"{self.data_path / seq / (seq + '.pkl')}: frame {sample_idx} has non-finite boxes")
        boxes = boxes.copy()
        boxes[:, 6] = limit_period(boxes[:, 6])
        num = np.asarray(annos["num_points_in_gt"]).astype(np.int64)
        out = dict(points=points, frame_id=str(info.get("frame_id", f"{seq}_{sample_idx:03d}")),
                   metainfo=dict(class_names=self.class_names, point_cloud_range=self.point_cloud_range,
                                 dataset="waymo", points_path=str(path), sequence=seq, sample_idx=sample_idx))
        out.update(_box_arrays(boxes[ours], [self.class_names.index(n) for n in names[ours]],
                               waymo_difficulty(np.asarray(annos["difficulty"])[ours], num[ours]), num[ours]))
        return out
