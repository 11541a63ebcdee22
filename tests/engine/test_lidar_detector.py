"""ScatterFormerDetector: batch formats, the three modes, a few optimisation steps lowering the loss on a
synthetic frame, and (slow) overfitting one frame until predict() finds its boxes."""
import math

import numpy as np
import pytest
import torch

pytest.importorskip("spconv")

from mmengine.optim import OptimWrapper  # noqa: E402

import visionattn.engine  # noqa: E402,F401  (declares the lazy task model)
from visionattn.models.detection3d.scatterformer import synthetic_point_cloud  # noqa: E402
from visionattn.ops.rotated_box_iou import boxes_iou_3d  # noqa: E402
from visionattn.registry import MODELS  # noqa: E402

RANGE = (-7.68, -7.68, -2.0, 7.68, 7.68, 4.0)  # grid 48 x 48 x 32, BEV 24 x 24 cells of 0.64 m
# the Waymo network made small: every kind of layer, fewer channels and layers (CPU seconds per step)
TINY = dict(name="scatterformer_waymo", point_cloud_range=RANGE, vfe_filters=(16, 16), dim=32, num_heads=2,
            num_layers=1, bev_layers=1, head_channels=16)
# a vehicle, a pedestrian and a cyclist (centres, LiDAR frame); the ground is at z = -0.2
BOXES = torch.tensor([[2.3, 1.1, 0.55, 3.9, 1.7, 1.5, 0.4],
                      [-3.1, -2.5, 0.65, 0.8, 0.8, 1.7, -1.0],
                      [-1.2, 4.0, 0.65, 1.8, 0.7, 1.7, 2.5]])
LABELS = torch.tensor([0, 1, 2])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the tiny sparse layers gain nothing from more, and lose a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frame(boxes=BOXES, n_box=500, seed=0):
    """Points (N, 5) x, y, z, intensity, elongation: the background of synthetic_point_cloud (ground and its
    own clutter) plus ``n_box`` points on the faces of each placed box."""
    g = torch.Generator().manual_seed(seed)
    background = synthetic_point_cloud(1000, RANGE, 5, 1, seed)[:700, 1:]  # its first 70 %: ground returns
    background[:, 2] = -0.2 + 0.03 * torch.randn(len(background), generator=g)
    parts = [background]
    for box in boxes:
        local = torch.rand(n_box, 3, generator=g) - 0.5
        face = torch.randint(0, 3, (n_box,), generator=g)
        rows = torch.arange(n_box)
        local[rows, face] = torch.sign(local[rows, face]) * 0.5
        xyz = local * box[3:6]
        c, s = math.cos(box[6]), math.sin(box[6])
        xyz = torch.stack([xyz[:, 0] * c - xyz[:, 1] * s, xyz[:, 0] * s + xyz[:, 1] * c, xyz[:, 2]], 1) + box[:3]
        parts.append(torch.cat([xyz, torch.rand(n_box, 2, generator=g) * 0.5 + 0.5], 1))
    points = torch.cat(parts)
    return points[(points[:, 0].abs() < 7.6) & (points[:, 1].abs() < 7.6)]


def collate(frames):
    """What lidar_collate makes of a list of dataset items (the interface's batch)."""
    points = torch.cat([torch.cat([torch.full((len(f["points"]), 1), float(i)), f["points"]], 1)
                        for i, f in enumerate(frames)])
    return dict(inputs=dict(points=points, batch_size=len(frames)), data_samples=[f["data_samples"] for f in frames])


def item(boxes=BOXES, labels=LABELS, seed=0):
    return dict(points=frame(boxes, seed=seed),
                data_samples=dict(frame_id=f"f{seed}", gt_boxes=boxes.clone(), gt_labels=labels.clone()))


def detector(**kw):
    torch.manual_seed(0)
    return MODELS.build(dict(type="ScatterFormerDetector", network=TINY, **kw))


def test_modes_and_batch_formats():
    model = detector()
    assert type(model.data_preprocessor).__name__ == "LidarDataPreprocessor"
    assert model.criterion.assigner.stride == 2 and model.criterion.assigner.class_groups == [
        ["Vehicle", "Pedestrian", "Cyclist"]]
    # a frame without points or boxes; its ground truth as numpy arrays (as the readers make it)
    empty = dict(points=torch.zeros(0, 5), data_samples=dict(frame_id="empty", gt_boxes=np.zeros((0, 7), np.float32),
                                                               gt_labels=np.zeros(0, np.int64)))
    items = [item(), empty]
    batch = collate(items)
    model.train()
    losses = model(**model.data_preprocessor(batch, True), mode="loss")
    assert set(losses) == {"hm_loss", "loc_loss", "iou_loss", "iou_reg_loss"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    # the same batch uncollated (a list of frames) goes through the data preprocessor
    losses_list = model(**model.data_preprocessor(items, True), mode="loss")
    torch.testing.assert_close(losses_list["hm_loss"], losses["hm_loss"], rtol=1e-4, atol=1e-5)
    model.eval()
    maps = model(batch["inputs"], mode="tensor")
    assert maps[0]["hm"].shape == (2, 3, 24, 24) and maps[0]["iou"].shape == (2, 1, 24, 24)
    with torch.no_grad():
        out = model.val_step(batch)
    assert [o["frame_id"] for o in out] == ["f0", "empty"]
    for o in out:
        pred = o["pred_instances_3d"]
        n = len(pred["bboxes_3d"])
        assert pred["bboxes_3d"].shape == (n, 7) and pred["bboxes_3d"].dtype == torch.float32
        assert pred["scores_3d"].shape == (n,) and pred["labels_3d"].dtype == torch.int64
        assert pred["bboxes_3d"].device.type == "cpu"
    assert "pred_instances_3d" not in batch["data_samples"][0]  # the input samples are not modified
    with pytest.raises(ValueError, match="gt_boxes"):
        model(batch["inputs"], [{}, {}], mode="loss")
    with pytest.raises(ValueError, match="mode must be"):
        model(batch["inputs"], mode="boxes")


def test_a_few_steps_lower_the_loss():
    model = detector().train()
    batch = collate([item()])
    wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01),
                           clip_grad=dict(max_norm=10))
    losses = [float(model.train_step(batch, wrapper)["loss"].detach()) for _ in range(8)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


@pytest.mark.slow
def test_overfitting_one_frame_recovers_its_boxes():
    """100 AdamW steps on one frame (about 2 minutes on one CPU thread); the three boxes come back with
    3D IoU > 0.7 and their classes, and nothing else scores above 0.5. The predictions use batch statistics
    (BatchNorm in training mode): after 100 steps the running averages (momentum 0.01 in the head, as
    OpenPCDet's) are still far from them, which a real training run's thousands of steps are not."""
    model = detector().train()
    batch = collate([item()])
    wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.0),
                           clip_grad=dict(max_norm=10))
    for _ in range(100):
        model.train_step(batch, wrapper)
    with torch.no_grad():
        pred = model(**model.data_preprocessor(batch), mode="predict")[0]["pred_instances_3d"]
    confident = pred["scores_3d"] > 0.5
    boxes, labels = pred["bboxes_3d"][confident], pred["labels_3d"][confident]
    assert len(boxes) == len(BOXES), (pred["scores_3d"], pred["labels_3d"])
    iou = boxes_iou_3d(boxes, BOXES)
    best = iou.argmax(0)
    assert (iou.max(0).values > 0.7).all(), iou
    assert labels[best].tolist() == LABELS.tolist()


@pytest.mark.cuda
def test_training_steps_on_the_gpu_with_the_full_network():
    """The official Waymo network (12.3M parameters) on a GPU: a batch of two 30 m frames, five AdamW steps
    with finite, falling losses, then predictions."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    torch.manual_seed(0)
    rng = (-30.72, -30.72, -2.0, 30.72, 30.72, 4.0)
    model = MODELS.build(dict(type="ScatterFormerDetector",
                              network=dict(name="scatterformer_waymo", point_cloud_range=rng))).cuda().train()
    frames = [item(seed=s) for s in (0, 1)]
    batch = collate(frames)
    wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99)),
                           clip_grad=dict(max_norm=10))
    losses = [float(model.train_step(batch, wrapper)["loss"].detach()) for _ in range(5)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    model.eval()
    with torch.no_grad():
        out = model.test_step(batch)
    assert len(out) == 2 and all(o["pred_instances_3d"]["bboxes_3d"].device.type == "cpu" for o in out)
