"""LiDAR readers (KITTI 3D object, OpenPCDet Waymo) on the sample sets, their error messages, and
the restricted unpickling of info pickles."""
import os
import pickle

import numpy as np
import pytest
import torch

from visionattn.datasets.lidar import KittiDetection3D, WaymoDetection3D, lidar_collate
from visionattn.datasets.lidar_formats import (LidarFormatError, box_corners, kitti_difficulty,
                                               kitti_label_to_lidar_boxes, points_in_boxes, read_db_infos,
                                               read_kitti_calib, read_kitti_label, read_kitti_points,
                                               read_waymo_points, read_waymo_sequence_infos, write_kitti_label)
from visionattn.datasets.sample_writers.lidar import KITTI_CALIB


def test_kitti_label_round_trip_through_the_camera_frame(tmp_path):
    boxes = np.array([[10.0, 2.0, -0.95, 3.9, 1.6, 1.56, 0.3], [20.0, -3.0, -0.86, 0.8, 0.6, 1.73, -2.5]], np.float32)
    write_kitti_label(tmp_path / "l.txt", ["Car", "Pedestrian"], boxes, KITTI_CALIB)
    label = read_kitti_label(tmp_path / "l.txt")
    assert label["name"].tolist() == ["Car", "Pedestrian"]
    np.testing.assert_allclose(label["dimensions"], boxes[:, [5, 4, 3]], atol=0.006)  # the file holds h, w, l
    back = kitti_label_to_lidar_boxes(label, KITTI_CALIB)
    np.testing.assert_allclose(back[:, :6], boxes[:, :6], atol=0.02)  # 2 decimals in the file
    np.testing.assert_allclose(np.cos(back[:, 6] - boxes[:, 6]), 1, atol=1e-4)
    # camera y points down: the label's location is the bottom centre, below the LiDAR-frame centre
    assert (label["location"][:, 1] > 0).all()


def test_kitti_difficulty_levels():
    bbox = np.array([[0, 0, 10, 50], [0, 0, 10, 30], [0, 0, 10, 30], [0, 0, 10, 20], [0, 0, 10, 50]], float)
    truncated = np.array([0.1, 0.2, 0.45, 0.0, 0.6])
    occluded = np.array([0, 1, 2, 0, 0])
    assert kitti_difficulty(bbox, truncated, occluded).tolist() == [0, 1, 2, -1, -1]


def test_kitti_sample_set(samples_root):
    train = KittiDetection3D(samples_root / "kitti3d", "train")
    val = KittiDetection3D(samples_root / "kitti3d", "val")
    assert (len(train), len(val)) == (16, 6)
    frame = train[0]
    pts, sample = frame["points"], frame["data_samples"]
    assert pts.dtype == torch.float32 and pts.shape[1] == 4
    assert (pts[:, 0] > 0).all(), "field-of-view filtering keeps points in front of the camera only"
    assert sample["gt_boxes"].shape[1] == 7 and sample["gt_labels"].dtype == torch.int64
    assert set(sample["gt_labels"].tolist()) <= {0, 1, 2} and sample["other_names"] == ["Van"]
    counted = points_in_boxes(pts.numpy(), sample["gt_boxes"].numpy()).sum(0)
    assert sample["gt_num_points"].tolist() == counted.tolist() and counted.max() > 50
    assert set(sample["calib"]) >= {"P2", "R0_rect", "Tr_velo_to_cam"} and sample["image_shape"] == (375, 1242)
    assert len(sample["gt_bbox_2d"]) == len(sample["gt_alpha"]) == len(sample["gt_difficulty"]) == len(sample["gt_boxes"])
    assert train[1]["data_samples"]["gt_boxes"].shape == (0, 7)  # the frame without objects
    assert train[2]["data_samples"]["dontcare_bbox_2d"].shape == (1, 4)
    all_points = len(read_kitti_points(samples_root / "kitti3d/training/velodyne/000000.bin"))
    everything = KittiDetection3D(samples_root / "kitti3d", "train", fov_points_only=False)[0]["points"]
    assert len(everything) == all_points > len(pts)


def test_waymo_sample_set(samples_root):
    train = WaymoDetection3D(samples_root / "waymo", "train")
    assert len(train) == 8 and len(WaymoDetection3D(samples_root / "waymo", "train", sampled_interval=5)) == 2
    assert len(WaymoDetection3D(samples_root / "waymo", "val")) == 4
    frame = train[0]
    pts, sample = frame["points"], frame["data_samples"]
    raw = np.load(sample["metainfo"]["points_path"])
    assert pts.shape == ((raw[:, 5] == -1).sum(), 5), "no-label-zone points and the flag column are dropped"
    assert pts[:, 3:5].abs().max() < 1 and torch.allclose(pts[:, 3], torch.from_numpy(np.tanh(raw[raw[:, 5] == -1, 3])))
    assert "Sign" not in sample["metainfo"]["class_names"] and sample["gt_labels"].max() <= 2
    # Waymo levels: 2 where the label says so or the box holds <= 5 points
    assert set(sample["gt_difficulty"].tolist()) <= {1, 2}
    assert train[1]["data_samples"]["gt_boxes"].shape == (0, 7)
    assert len(WaymoDetection3D(samples_root / "waymo", "train", keep_nlz=True)[0]["points"]) == len(raw)


def test_collate_offsets_frames_and_keeps_empty_ones(samples_root):
    ds = WaymoDetection3D(samples_root / "waymo", "train")
    empty = dict(points=torch.zeros(0, 5), data_samples=dict(frame_id="empty"))
    batch = lidar_collate([ds[0], empty, ds[2]])
    pts = batch["inputs"]["points"]
    assert batch["inputs"]["batch_size"] == 3 and pts.shape[1] == 6
    assert sorted(pts[:, 0].unique().tolist()) == [0.0, 2.0]
    assert torch.equal(pts[pts[:, 0] == 2, 1:], ds[2]["points"])
    assert [s["frame_id"] for s in batch["data_samples"]][1] == "empty"
    with pytest.raises(ValueError, match="different point widths"):
        lidar_collate([ds[0], dict(points=torch.zeros(3, 4), data_samples={})])


# --- errors name the file and what is wrong ---------------------------------------------------

def test_reader_errors_name_the_file(tmp_path):
    bad = tmp_path / "000000.bin"
    np.zeros(7, np.float32).tofile(bad)
    with pytest.raises(LidarFormatError, match=r"000000\.bin.*whole number of 4-float32"):
        read_kitti_points(bad)
    calib = tmp_path / "calib.txt"
    calib.write_text("P2: 1 2 3\nR0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: " + "0 " * 12 + "\n")
    with pytest.raises(LidarFormatError, match=r"calib\.txt: P2 has 3 numbers, expected 12"):
        read_kitti_calib(calib)
    calib.write_text("R0_rect: 1 0 0 0 1 0 0 0 1\n")
    with pytest.raises(LidarFormatError, match=r"calib\.txt: no P2 line"):
        read_kitti_calib(calib)
    label = tmp_path / "label.txt"
    label.write_text("Car 0 0 0 1 2 3 4 1.5 1.6 3.9 1 2\n")
    with pytest.raises(LidarFormatError, match=r"label\.txt:1: a KITTI object line has 15 fields.*got 13"):
        read_kitti_label(label)
    label.write_text("Car 0 0 0 1 2 3 4 1.5 1.6 3.9 1 2 x 0\n")
    with pytest.raises(LidarFormatError, match=r"label\.txt:1: non-numeric"):
        read_kitti_label(label)
    npy = tmp_path / "0000.npy"
    np.save(npy, np.zeros((4, 5), np.float32))
    with pytest.raises(LidarFormatError, match=r"0000\.npy: expected \(N, 6\).*got shape \(4, 5\)"):
        read_waymo_points(npy)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        read_waymo_points(tmp_path / "missing.npy")
    infos = tmp_path / "seq.pkl"
    infos.write_bytes(pickle.dumps([dict(point_cloud=dict(sample_idx=0), annos=dict(
        name=np.array(["Vehicle"]), difficulty=np.zeros(1), num_points_in_gt=np.zeros(2), gt_boxes_lidar=np.zeros((1, 9))))]))
    with pytest.raises(LidarFormatError, match=r"seq\.pkl: frame 0's annos hold 1 names.*2 point counts"):
        read_waymo_sequence_infos(infos)
    infos.write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(LidarFormatError, match=r"seq\.pkl: expected a list"):
        read_waymo_sequence_infos(infos)
    with pytest.raises(FileNotFoundError, match=r"ImageSets.*val\.txt"):
        KittiDetection3D(tmp_path, "val")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_a_malicious_info_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "seq.pkl"
    path.write_bytes(pickle.dumps([dict(point_cloud=dict(sample_idx=0), payload=_Exploit())]))
    with pytest.raises(pickle.UnpicklingError, match=r"seq\.pkl refers to (posix|nt|os)\.system.*refused"):
        read_waymo_sequence_infos(path)
    db = tmp_path / "dbinfos.pkl"
    db.write_bytes(pickle.dumps({"Car": [_Exploit()]}))
    with pytest.raises(pickle.UnpicklingError, match=r"dbinfos\.pkl refers to"):
        read_db_infos(db)
    assert not (tmp_path / "pwned_by_pickle").exists()


def test_info_pickles_with_numpy_scalars_and_strings_load(tmp_path):
    info = [dict(point_cloud=dict(sample_idx=np.int64(3), lidar_sequence="s"), frame_id="s_003", pose=np.eye(4),
                 metadata=dict(timestamp_micros=np.int64(10)),
                 annos=dict(name=np.array(["Vehicle", "Sign"]), difficulty=np.array([0, 2], np.int32),
                            num_points_in_gt=np.array([10, 3]), gt_boxes_lidar=np.zeros((2, 9), np.float32),
                            obj_ids=np.array(["a", "b"], dtype=object), score=np.float32(0.5)))]
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(info, protocol=protocol))
        loaded = read_waymo_sequence_infos(path)
        assert loaded[0]["annos"]["name"].tolist() == ["Vehicle", "Sign"]
        assert loaded[0]["point_cloud"]["sample_idx"] == 3


def test_box_corners_and_points_in_boxes_agree():
    box = np.array([[1.0, 2.0, 0.5, 4.0, 2.0, 1.0, 0.7]])
    corners = box_corners(box)[0]
    assert points_in_boxes(corners, box).all()  # faces included
    outward = corners + 0.05 * (corners - box[0, :3]) / np.linalg.norm(corners - box[0, :3], axis=1, keepdims=True)
    assert not points_in_boxes(outward, box).any()
    np.testing.assert_allclose(corners.mean(0), box[0, :3], atol=1e-12)
