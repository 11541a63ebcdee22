"""LiDAR augmentation keeps points and boxes consistent (checked on box corners and on the points
inside each box), GT sampling, range filtering, and the defined behaviour of the edge cases:
an empty point cloud, points outside the range, a frame without boxes, a single voxel."""
import copy
import importlib.util

import numpy as np
import pytest
import torch

from visionattn.datasets.lidar import KittiDetection3D, WaymoDetection3D, build_pipeline, lidar_collate, to_tensors
from visionattn.datasets.lidar_formats import box_corners, points_in_boxes, read_db_infos
from visionattn.datasets.lidar_transforms import (BoxesRangeFilter, GlobalRotation, GlobalScaling, GlobalTranslation,
                                                  GTSampling, PointShuffle, PointsRangeFilter, RandomWorldFlip)
from visionattn.ops.rotated_box_iou import boxes_iou_bev

KITTI_RANGE = (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)
GEOMETRIC = [lambda s: RandomWorldFlip(seed=s), lambda s: RandomWorldFlip(("x",), seed=s),
             lambda s: GlobalRotation(seed=s), lambda s: GlobalScaling(seed=s), lambda s: GlobalTranslation(seed=s)]


@pytest.fixture(scope="module")
def kitti(samples_root):
    return KittiDetection3D(samples_root / "kitti3d", "train")


def _frame(kitti, index=0):
    return copy.deepcopy(kitti.load_frame(index))


def _gt_sampling(root, **kw):
    kw = dict(dict(min_points=dict(Car=5, Pedestrian=5, Cyclist=5)), **kw)
    return GTSampling(root=str(root / "kitti3d"), db_info="kitti_dbinfos_train.pkl",
                      sample_groups=dict(Car=8, Pedestrian=4, Cyclist=4), class_names=("Car", "Pedestrian", "Cyclist"),
                      num_point_features=4, **kw)


@pytest.mark.parametrize("make", GEOMETRIC, ids=["flip_xy", "flip_x", "rotation", "scaling", "translation"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometric_transforms_move_corners_with_the_points(kitti, make, seed):
    frame = _frame(kitti)
    corners = box_corners(frame["gt_boxes"]).reshape(-1, 3).astype(np.float32)
    n = len(frame["points"])
    frame["points"] = np.concatenate([frame["points"], np.concatenate([corners, np.zeros((len(corners), 1), np.float32)], 1)])
    before = points_in_boxes(frame["points"][:n], frame["gt_boxes"])
    out = make(seed)(frame)
    moved = out["points"][n:, :3].reshape(-1, 8, 3)
    expected = box_corners(out["gt_boxes"])
    # the same 8 corners per box (a mirror changes their order)
    dist = np.linalg.norm(moved[:, :, None] - expected[:, None], axis=-1).min(2)
    assert dist.max() < 1e-4, dist.max()
    assert np.array_equal(points_in_boxes(out["points"][:n], out["gt_boxes"]), before)
    assert (np.abs(out["gt_boxes"][:, 6]) <= np.pi + 1e-6).all()


def test_random_transforms_are_seeded_and_do_change_the_scene(kitti):
    results = [GlobalRotation(seed=s)(_frame(kitti))["gt_boxes"] for s in (5, 5, 6)]
    assert np.array_equal(results[0], results[1]) and not np.allclose(results[0], results[2])
    flips = {RandomWorldFlip(seed=s)(_frame(kitti))["points"][0, :2].tobytes() for s in range(16)}
    assert len(flips) == 4  # (x, y) mirrored or not, each with probability 1/2


def test_point_shuffle_and_range_filters(kitti):
    frame = _frame(kitti)
    counts = points_in_boxes(frame["points"], frame["gt_boxes"]).sum(0)
    out = PointShuffle(seed=0)(copy.deepcopy(frame))
    assert not np.array_equal(out["points"], frame["points"])
    assert np.array_equal(points_in_boxes(out["points"], out["gt_boxes"]).sum(0), counts)
    assert sorted(map(tuple, out["points"])) == sorted(map(tuple, frame["points"]))

    rng = (5.0, -5.0, -3.0, 15.0, 5.0, 1.0)
    out = BoxesRangeFilter(rng)(PointsRangeFilter(rng)(copy.deepcopy(frame)))
    p, c = out["points"], out["gt_boxes"][:, :3]
    assert ((p[:, 0] >= 5) & (p[:, 0] <= 15) & (np.abs(p[:, 1]) <= 5)).all() and len(p) < len(frame["points"])
    assert ((c >= rng[:3]) & (c <= rng[3:])).all() and len(c) < len(frame["gt_boxes"])
    kept = [i for i, b in enumerate(frame["gt_boxes"]) if any(np.array_equal(b, k) for k in out["gt_boxes"])]
    for key in ("gt_labels", "gt_difficulty", "gt_num_points", "gt_bbox_2d", "gt_alpha"):
        assert np.array_equal(out[key], frame[key][kept]), key
    assert len(PointsRangeFilter(rng, xyz=True)(copy.deepcopy(frame))["points"]) <= len(p)
    assert len(BoxesRangeFilter(KITTI_RANGE, min_num_points=1)(copy.deepcopy(frame))["gt_boxes"]) \
        == (frame["gt_num_points"] >= 1).sum()


def test_gt_sampling_pastes_objects_without_collisions(kitti, samples_root):
    frame = _frame(kitti)
    n_before = len(frame["gt_boxes"])
    orig_counts = points_in_boxes(frame["points"], frame["gt_boxes"]).sum(0)
    out = _gt_sampling(samples_root, seed=0)(copy.deepcopy(frame))
    boxes = out["gt_boxes"]
    assert len(boxes) > n_before and all(len(out[k]) == len(boxes) for k in
                                         ("gt_labels", "gt_difficulty", "gt_num_points", "gt_bbox_2d", "gt_alpha"))
    per_class = np.bincount(out["gt_labels"], minlength=3)
    assert (per_class <= [8, 4, 4]).all() and per_class.sum() > n_before
    iou = boxes_iou_bev(torch.from_numpy(boxes), torch.from_numpy(boxes))
    iou.fill_diagonal_(0)
    assert iou.max() == 0, "pasted boxes overlap each other or the frame's boxes"
    inside = points_in_boxes(out["points"], boxes).sum(0)
    assert np.array_equal(inside[:n_before], orig_counts), "the frame's own objects are untouched"
    # a pasted box holds exactly its database points: the frame's points inside it were removed
    infos = {tuple(np.round(i["box3d_lidar"][:7], 4)): i for items in read_db_infos(
        samples_root / "kitti3d/kitti_dbinfos_train.pkl").values() for i in items}
    for box, count in zip(boxes[n_before:], inside[n_before:]):
        info = infos[tuple(np.round(box, 4))]
        assert count == (samples_root / "kitti3d" / info["path"]).stat().st_size // 16
    again = _gt_sampling(samples_root, seed=0)(copy.deepcopy(frame))
    assert np.array_equal(again["points"], out["points"]) and np.array_equal(again["gt_boxes"], boxes)
    sampler = _gt_sampling(samples_root, seed=0)
    sampler.enabled = False
    off = sampler(copy.deepcopy(frame))
    assert np.array_equal(off["points"], frame["points"]) and np.array_equal(off["gt_boxes"], frame["gt_boxes"])


def test_gt_sampling_errors_and_waymo_database(samples_root):
    with pytest.raises(ValueError, match=r"sample_groups names \['Truck'\]"):
        GTSampling(root=str(samples_root / "kitti3d"), db_info="kitti_dbinfos_train.pkl", sample_groups=dict(Truck=3),
                   class_names=("Car",), num_point_features=4)
    with pytest.raises(ValueError, match="holds no 'Car' object with >= 100000 points"):
        _gt_sampling(samples_root, min_points=dict(Car=100000))
    waymo = WaymoDetection3D(samples_root / "waymo", "train")
    frame = copy.deepcopy(waymo.load_frame(1))  # the frame without objects
    sampler = GTSampling(root=str(samples_root / "waymo"),
                         db_info="waymo_processed_data_v0_5_0_waymo_dbinfos_train_sampled_1.pkl",
                         sample_groups=dict(Vehicle=15, Pedestrian=10, Cyclist=10), class_names=waymo.class_names,
                         num_point_features=5, min_points=dict(Vehicle=5, Pedestrian=5, Cyclist=5), waymo_levels=True,
                         seed=3)
    out = sampler(frame)
    assert len(out["gt_boxes"]) > 5 and out["points"].shape[1] == 5
    assert set(out["gt_difficulty"].tolist()) <= {1, 2}
    assert (points_in_boxes(out["points"], out["gt_boxes"]).sum(0) == out["gt_num_points"]).all()


# --- edge cases: defined behaviour, never a crash --------------------------------------------------

def _train_pipeline(samples_root, rng=KITTI_RANGE):
    # KITTI flips along x only (mirroring x would move the front view out of the range)
    return build_pipeline([_gt_sampling(samples_root, seed=0), RandomWorldFlip(("x",), seed=0), GlobalRotation(seed=0),
                           GlobalScaling(seed=0), GlobalTranslation(seed=0), PointsRangeFilter(rng),
                           BoxesRangeFilter(rng), PointShuffle(seed=0)])


def _without_sampling(pipeline):
    return build_pipeline(pipeline.transforms[1:])


def test_empty_point_cloud(kitti, samples_root):
    frame = _frame(kitti)
    frame["points"] = np.zeros((0, 4), np.float32)
    out = _without_sampling(_train_pipeline(samples_root))(copy.deepcopy(frame))
    assert out["points"].shape == (0, 4) and out["gt_boxes"].shape[1] == 7  # boxes kept: a label, not a point count
    with_sampling = _train_pipeline(samples_root)(copy.deepcopy(frame))
    assert len(with_sampling["points"]) > 0  # only the pasted objects' points
    batch = lidar_collate([to_tensors(out), to_tensors(copy.deepcopy(out))])
    assert batch["inputs"]["points"].shape == (0, 5) and batch["inputs"]["batch_size"] == 2


def test_points_outside_the_range(kitti, samples_root):
    frame = _frame(kitti)
    frame["points"] = frame["points"].copy()
    frame["points"][:, 0] += 200.0  # every point beyond x1
    frame["gt_boxes"] = frame["gt_boxes"].copy()
    out = _without_sampling(_train_pipeline(samples_root))(frame)
    assert out["points"].shape == (0, 4)  # all filtered
    assert len(out["gt_boxes"]) == len(frame["gt_boxes"])  # boxes filter by their own centres


def test_frame_without_boxes(kitti, samples_root):
    frame = _frame(kitti, 1)
    assert frame["gt_boxes"].shape == (0, 7)
    out = _without_sampling(_train_pipeline(samples_root))(copy.deepcopy(frame))
    assert out["gt_boxes"].shape == (0, 7) and out["gt_labels"].shape == (0,) and len(out["points"]) > 0
    sampled = _train_pipeline(samples_root)(copy.deepcopy(frame))
    assert len(sampled["gt_boxes"]) > 0
    sample = to_tensors(out)["data_samples"]
    assert sample["gt_boxes"].dtype == torch.float32 and sample["gt_boxes"].shape == (0, 7)


@pytest.mark.skipif(importlib.util.find_spec("spconv") is None, reason="needs the 3d extra (spconv)")
def test_single_voxel_frame_runs_through_pipeline_and_network(kitti, samples_root):
    import visionattn

    rng = (0.0, -4.8, -3.0, 9.6, 4.8, 1.0)  # scatterformer_kitti's small smoke-test grid
    frame = _frame(kitti)
    frame["points"] = np.array([[3.01, 0.01, -1.0, 0.5], [3.05, 0.05, -0.95, 0.2], [3.1, 0.1, -0.9, 0.1]], np.float32)
    out = build_pipeline([PointsRangeFilter(rng), BoxesRangeFilter(rng)])(frame)
    batch = lidar_collate([to_tensors(out)])
    assert batch["inputs"]["points"].shape == (3, 5)
    torch.manual_seed(0)
    model = visionattn.create_model("scatterformer_kitti", point_cloud_range=rng).eval()
    voxel = ((batch["inputs"]["points"][:, 1:4] - torch.tensor(rng[:3])) / torch.tensor(model.voxel_size)).floor()
    assert len(voxel.unique(dim=0)) == 1
    with torch.no_grad():
        maps = model(batch["inputs"]["points"], batch_size=1)
        dets = model(batch["inputs"]["points"], batch_size=1, mode="predict")
    assert all(torch.isfinite(v).all() for v in maps[0].values()) and maps[0]["hm"].shape[-2:] == model.bev_shape
    assert len(dets) == 1 and dets[0]["boxes"].shape[1] == 7


class _Rotated(torch.utils.data.Dataset):
    def __init__(self):
        self.rotation = GlobalRotation()

    def __len__(self):
        return 4

    def __getitem__(self, i):
        frame = dict(points=np.zeros((1, 4), np.float32), gt_boxes=np.array([[10, 0, 0, 4, 2, 1.5, 0]], np.float32))
        return torch.from_numpy(self.rotation(frame)["gt_boxes"][:, 6])


def test_unseeded_transforms_differ_between_epochs_of_restarted_workers():
    """mmengine seeds numpy in each worker with the same value every epoch; the draws must still change."""
    from functools import partial

    from mmengine.dataset.utils import worker_init_fn

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(_Rotated(), batch_size=4, num_workers=1, persistent_workers=False,
                                         worker_init_fn=partial(worker_init_fn, num_workers=1, rank=0, seed=0))
    epochs = [torch.cat(list(loader)) for _ in range(2)]
    assert not torch.equal(epochs[0], epochs[1]) and len(epochs[0].unique()) == 4
    torch.manual_seed(0)
    assert torch.equal(torch.cat(list(loader)), epochs[0])  # reproducible from the main process's seed
