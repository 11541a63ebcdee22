"""CenterHead training targets and losses (OpenPCDet's CenterHead as ScatterFormer trains it):
hand-built boxes, a per-box reference drawing of the heatmap, a round trip through CenterDecoder,
hand-computed loss values, zero loss for perfect maps, gradients."""
import math

import pytest
import torch

from visionattn.models.detection3d.center_head import CenterDecoder
from visionattn.models.detection3d.center_head_loss import (CenterHeadLoss, CenterTargetAssigner,
                                                            axis_aligned_diou_3d, focal_heatmap_loss,
                                                            gaussian_radius, regression_l1)
from visionattn.ops.rotated_box_iou import paired_boxes_iou_3d

PCR = (-76.8, -76.8, -2.0, 76.8, 76.8, 4.0)  # Waymo: BEV 240 x 240 cells of 0.64 m
VOXEL = (0.32, 0.32, 0.1875)
NAMES = ("Vehicle", "Pedestrian", "Cyclist")
SMALL_PCR = (-12.8, -12.8, -2.0, 12.8, 12.8, 4.0)  # 40 x 40 cells


def assigner(**kw):
    return CenterTargetAssigner(kw.pop("pcr", PCR), VOXEL, 2, NAMES, kw.pop("groups", [NAMES]), **kw)


def random_scene(n, seed, pcr=SMALL_PCR, labels=3):
    g = torch.Generator().manual_seed(seed)
    x0, y0, _, x1, y1, _ = pcr
    xy = torch.rand(n, 2, generator=g) * torch.tensor([x1 - x0, y1 - y0]) + torch.tensor([x0, y0])
    z = torch.rand(n, 1, generator=g) * 2 - 1
    dims = torch.rand(n, 3, generator=g) * torch.tensor([5.0, 2.5, 2.0]) + 0.4
    heading = (torch.rand(n, 1, generator=g) - 0.5) * 2 * math.pi
    return torch.cat([xy, z, dims, heading], 1), torch.randint(0, labels, (n,), generator=g)


def test_gaussian_radius_hand_values():
    # 10 x 10 cells, overlap 0.1: r1 = (20 + sqrt(400 - 360/1.1)) / 2 = 14.264, r2 = (40 + sqrt(160)) / 2
    # = 26.32, r3 = (-4 + sqrt(16 + 144)) / 2 = 4.3246 -> the smallest
    r = gaussian_radius(torch.tensor([10.0]), torch.tensor([10.0]), 0.1)
    torch.testing.assert_close(r, torch.tensor([(-4 + math.sqrt(160)) / 2]))
    # symmetric in its arguments, grows with the box
    a, b = torch.tensor([7.0, 3.0]), torch.tensor([3.0, 7.0])
    torch.testing.assert_close(gaussian_radius(a, b, 0.1), gaussian_radius(b, a, 0.1))
    assert gaussian_radius(torch.tensor([20.0]), torch.tensor([5.0]), 0.1) > gaussian_radius(
        torch.tensor([10.0]), torch.tensor([5.0]), 0.1)


def test_peak_at_the_centre_cell_with_the_official_radius_and_sigma():
    # a car at (10.3, -5.1): cell x = (10.3 + 76.8) / 0.64 = 136.09 -> 136, y = 71.72 / 0.64 = 112.06 -> 112
    box = torch.tensor([[10.3, -5.1, 0.5, 4.5, 2.0, 1.6, 0.3]])
    t = assigner()([box], [torch.tensor([0])], (240, 240))[0]
    hm = t["heatmap"][0]
    assert hm.shape == (3, 240, 240)
    assert hm[0, 112, 136] == 1 and (hm == 1).sum() == 1 and hm[1:].sum() == 0
    assert t["inds"][0, 0] == 112 * 240 + 136 and t["mask"][0].tolist() == [True] + [False] * 499
    # radius: int(gaussian_radius(4.5 / 0.64, 2 / 0.64, 0.1)) = int(1.97) = 1 -> min_radius 2; sigma = 5 / 6
    radius = int(gaussian_radius(torch.tensor([4.5 / 0.64]), torch.tensor([2 / 0.64]), 0.1))
    assert radius == 1
    sigma = 5 / 6
    nz = hm[0].nonzero()
    assert nz[:, 0].min() == 110 and nz[:, 0].max() == 114 and nz[:, 1].min() == 134 and nz[:, 1].max() == 138
    torch.testing.assert_close(hm[0, 113, 136], torch.tensor(math.exp(-1 / (2 * sigma ** 2))))
    torch.testing.assert_close(hm[0, 114, 134], torch.tensor(math.exp(-8 / (2 * sigma ** 2))))
    # the regression codes: offset in cells, z, log sizes, cos/sin of the heading
    cx, cy = (10.3 + 76.8) / 0.64, (-5.1 + 76.8) / 0.64
    expected = torch.tensor([cx - 136, cy - 112, 0.5, math.log(4.5), math.log(2.0), math.log(1.6),
                             math.cos(0.3), math.sin(0.3)])
    torch.testing.assert_close(t["target_boxes"][0, 0], expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(t["boxes"][0, 0], box[0])


def _reference_heatmap(a, boxes, labels, classes, H, W):
    """A per-box loop drawing each Gaussian into its window (the official procedure, written plainly)."""
    hm = torch.zeros(classes, H, W)
    cell = a.voxel_size[0] * a.stride
    for box, label in zip(boxes.tolist(), labels.tolist()):
        if box[3] <= 0 or box[4] <= 0 or box[5] <= 0:
            continue
        cx = min(max((box[0] - a.point_cloud_range[0]) / cell, 0), W - 0.5)
        cy = min(max((box[1] - a.point_cloud_range[1]) / cell, 0), H - 0.5)
        r = max(int(gaussian_radius(torch.tensor([box[3] / cell]), torch.tensor([box[4] / cell]),
                                    a.gaussian_overlap)), a.min_radius)
        sigma = (2 * r + 1) / 6
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                x, y = int(cx) + dx, int(cy) + dy
                if 0 <= x < W and 0 <= y < H:
                    hm[label, y, x] = max(hm[label, y, x], math.exp(-(dx * dx + dy * dy) / (2 * sigma ** 2)))
    return hm


def test_vectorised_heatmap_matches_a_per_box_loop():
    a = assigner(pcr=SMALL_PCR)
    frames = [random_scene(30, seed) for seed in (1, 2)]  # many overlapping peaks, some at the border
    t = a([f[0] for f in frames], [f[1] for f in frames], (40, 40))[0]
    for b, (boxes, labels) in enumerate(frames):
        torch.testing.assert_close(t["heatmap"][b], _reference_heatmap(a, boxes, labels, 3, 40, 40),
                                   atol=1e-6, rtol=0)
        assert t["mask"][b].sum() == 30


def test_groups_frames_limits_and_degenerate_boxes():
    groups = [["Vehicle"], ["Pedestrian", "Cyclist"]]
    a = assigner(pcr=SMALL_PCR, groups=groups, max_objects=3)
    b0 = torch.tensor([[0.0, 0, 0, 4, 2, 1.5, 0], [1, 1, 0, 1, 1, 1.7, 0], [-3, 2, 0, 1.8, 0.8, 1.7, 0],
                       [5, 5, 0, 4, 2, 1.5, 0], [6, -5, 0, 4, 2, 1.5, 0], [-6, -6, 0, 4, 2, 1.5, 0]])
    l0 = torch.tensor([0, 1, 2, 0, 0, 0])
    # frame 1: a box outside the map (clamped onto the border cell), a zero-width one (no target)
    b1 = torch.tensor([[50.0, 0, 0, 4, 2, 1.5, 0], [2, 2, 0, 0, 2, 1.5, 0]])
    l1 = torch.tensor([0, 0])
    b2, l2 = torch.zeros(0, 7), torch.zeros(0, dtype=torch.long)  # no boxes
    veh, other = a([b0, b1, b2], [l0, l1, l2], (40, 40))
    assert veh["heatmap"].shape == (3, 1, 40, 40) and other["heatmap"].shape == (3, 2, 40, 40)
    assert veh["mask"].tolist() == [[True] * 3, [True, False, False], [False] * 3]  # the 4th car: over max_objects
    assert (veh["heatmap"][0] == 1).sum() == 3 and veh["heatmap"][2].sum() == 0
    torch.testing.assert_close(veh["boxes"][0], b0[[0, 3, 4]])
    assert veh["inds"][1, 0] == 20 * 40 + 39  # x clamped to the last column
    assert (other["heatmap"][0, 0] == 1).sum() == 1 and (other["heatmap"][0, 1] == 1).sum() == 1  # local classes
    assert other["mask"][0].tolist() == [True, True, False]


def test_targets_round_trip_through_the_decoder():
    boxes, labels = random_scene(12, seed=3)
    # centres on a 6 m lattice (well apart: no decoded box suppresses another), jittered within a cell
    lattice = torch.stack(torch.meshgrid(torch.arange(-9.0, 10, 6), torch.arange(-9.0, 4, 6), indexing="ij"), -1)
    boxes[:, 0:2] = lattice.reshape(-1, 2) + torch.rand(12, 2, generator=torch.Generator().manual_seed(4)) * 0.64
    a = assigner(pcr=SMALL_PCR)
    t = a([boxes], [labels], (40, 40))[0]
    maps = {name: torch.zeros(1, c, 40, 40) for name, c in dict(center=2, center_z=1, dim=3, rot=2, iou=1).items()}
    flat = {k: v.view(1, v.shape[1], -1) for k, v in maps.items()}
    m, inds, codes = t["mask"][0], t["inds"][0][t["mask"][0]], t["target_boxes"][0][t["mask"][0]]
    for name, cols in dict(center=slice(0, 2), center_z=slice(2, 3), dim=slice(3, 6), rot=slice(6, 8)).items():
        flat[name][0][:, inds] = codes[:, cols].T
    flat["iou"][0][:, inds] = 1.0
    maps["hm"] = torch.where(t["heatmap"] == 1, 10.0, -10.0)
    decoder = CenterDecoder(SMALL_PCR, VOXEL, 2, NAMES, [NAMES], nms_thresholds=(0.5, 0.5, 0.5))
    det = decoder([maps])[0]
    assert len(det["boxes"]) == int(m.sum()) == len(boxes)
    order = torch.argsort(det["boxes"][:, 0])
    ref = torch.argsort(boxes[:, 0])
    got, want = det["boxes"][order], boxes[ref]
    torch.testing.assert_close(got[:, :6], want[:, :6], atol=1e-4, rtol=1e-5)
    dh = torch.remainder(got[:, 6] - want[:, 6] + math.pi, 2 * math.pi) - math.pi
    assert dh.abs().max() < 1e-5
    assert det["labels"][order].tolist() == labels[ref].tolist()


def test_focal_loss_by_hand():
    target = torch.tensor([[[[1.0, 0.5, 0.0]]]])
    prob = torch.tensor([[[[0.8, 0.3, 0.1]]]])
    pos = math.log(0.8) * 0.2 ** 2
    neg = math.log(0.7) * 0.3 ** 2 * 0.5 ** 4 + math.log(0.9) * 0.1 ** 2
    torch.testing.assert_close(focal_heatmap_loss(prob, target), torch.tensor(-(pos + neg)))
    # no peak: the plain negative sum
    torch.testing.assert_close(focal_heatmap_loss(prob[..., 1:], target[..., 1:]), torch.tensor(-neg))


def test_regression_l1_per_code_and_iou_measures():
    pred = torch.tensor([[[1.0, 2.0], [5.0, 5.0]], [[0.0, 0.0], [3.0, -1.0]]])
    target = torch.tensor([[[0.0, 2.5], [9.0, 9.0]], [[0.0, 1.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False], [True, True]])
    # slots (0,0), (1,0), (1,1): |1|+|0|+|2| = 3 and |0.5|+|1|+|2| = 3.5, over 3 slots
    torch.testing.assert_close(regression_l1(pred, target, mask), torch.tensor([1.0, 3.5 / 3]))
    gt = torch.tensor([[0.0, 0, 0, 4, 2, 2, 0.0]])
    shifted = torch.tensor([[2.0, 0, 0, 4, 2, 2, 0.0]])  # half the length: IoU = 8 / 24
    torch.testing.assert_close(paired_boxes_iou_3d(shifted, gt), torch.tensor([1 / 3]))
    # DIoU: IoU 1/3 - 2^2 / (6^2 + 2^2 + 2^2); axis-aligned: the heading changes nothing
    torch.testing.assert_close(axis_aligned_diou_3d(shifted, gt), torch.tensor([1 / 3 - 4 / 44]))
    turned = shifted.clone()
    turned[0, 6] = 1.0
    torch.testing.assert_close(axis_aligned_diou_3d(turned, gt), axis_aligned_diou_3d(shifted, gt))
    torch.testing.assert_close(axis_aligned_diou_3d(gt, gt), torch.tensor([1.0]))


def _loss():
    return CenterHeadLoss(SMALL_PCR, VOXEL, 2, NAMES, [NAMES])


def _perfect_maps(loss, boxes, labels):
    t = loss.assigner(boxes, labels, (40, 40))[0]
    B = len(boxes)
    maps = {name: torch.zeros(B, c, 40, 40) for name, c in dict(center=2, center_z=1, dim=3, rot=2, iou=1).items()}
    for b in range(B):
        m = t["mask"][b]
        for name, cols in dict(center=slice(0, 2), center_z=slice(2, 3), dim=slice(3, 6), rot=slice(6, 8)).items():
            maps[name][b].view(maps[name].shape[1], -1)[:, t["inds"][b][m]] = t["target_boxes"][b][m][:, cols].T
        maps["iou"][b].view(1, -1)[:, t["inds"][b][m]] = 1.0
    maps["hm"] = torch.where(t["heatmap"] == 1, 30.0, -30.0)
    return maps


def test_perfect_predictions_give_zero_losses():
    loss = _loss()
    frames = [random_scene(4, 7), random_scene(3, 8)]
    frames = [(b * torch.tensor([0.6, 0.6, 1, 1, 1, 1, 1]), lab) for b, lab in frames]
    boxes, labels = [f[0] for f in frames], [f[1] for f in frames]
    out = loss([_perfect_maps(loss, boxes, labels)], boxes, labels)
    assert set(out) == {"hm_loss", "loc_loss", "iou_loss", "iou_reg_loss"}
    assert out["hm_loss"] < 1e-5  # the sigmoid is clamped to [1e-4, 1 - 1e-4]: 1e-12 per cell
    assert out["loc_loss"] < 1e-5 and out["iou_loss"] < 1e-4 and out["iou_reg_loss"] < 1e-4


def test_loss_values_and_weights_by_hand():
    # one car; maps perfect except one code: x offset off by 0.25 cells, the iou map at 0 (target IoU 0.75 -> 0.5)
    loss = _loss()
    box = torch.tensor([[1.0, 1.0, 0.0, 3.2, 1.6, 1.5, 0.0]])
    maps = _perfect_maps(loss, [box], [torch.tensor([0])])
    t = loss.assigner([box], [torch.tensor([0])], (40, 40))[0]
    ind = int(t["inds"][0, 0])
    maps["center"][0, 0].view(-1)[ind] += 0.25  # 0.16 m along the 3.2 m length: IoU 3.04 / 3.36
    maps["iou"][0, 0].view(-1)[ind] = 0.0
    out = loss([maps], [box], [torch.tensor([0])])
    torch.testing.assert_close(out["loc_loss"], torch.tensor(2 * 0.25), atol=1e-5, rtol=0)
    iou = (3.2 - 0.16) / (3.2 + 0.16)
    torch.testing.assert_close(out["iou_loss"], torch.tensor(abs(0 - (2 * iou - 1))), atol=1e-5, rtol=0)
    diou = iou - 0.16 ** 2 / ((3.2 + 0.16) ** 2 + 1.6 ** 2 + 1.5 ** 2)
    torch.testing.assert_close(out["iou_reg_loss"], torch.tensor(2 * (1 - diou)), atol=1e-5, rtol=0)


def test_gradients_reach_every_map_and_empty_frames_are_finite():
    loss = _loss()
    torch.manual_seed(0)
    maps = {name: torch.randn(2, c, 40, 40, requires_grad=True)
            for name, c in dict(center=2, center_z=1, dim=3, rot=2, iou=1, hm=3).items()}
    boxes, labels = random_scene(5, 11)
    out = loss([maps], [boxes, torch.zeros(0, 7)], [labels, torch.zeros(0, dtype=torch.long)])
    sum(out.values()).backward()
    for name, m in maps.items():
        assert m.grad is not None and torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0, name
    # no box at all: the heatmap term only (the others zero but still in the graph)
    maps = {k: v.detach().requires_grad_() for k, v in maps.items()}
    out = loss([maps], [torch.zeros(0, 7)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert out["hm_loss"] > 0 and out["loc_loss"] == 0 and out["iou_loss"] == 0 and out["iou_reg_loss"] == 0
    sum(out.values()).backward()
    assert all(torch.isfinite(m.grad).all() for m in maps.values())


def test_bad_inputs_name_the_problem():
    loss = _loss()
    maps = {name: torch.zeros(1, c, 40, 40) for name, c in dict(center=2, center_z=1, dim=3, rot=2, iou=1, hm=3).items()}
    with pytest.raises(ValueError, match="index class_names"):
        loss([maps], [torch.zeros(1, 7)], [torch.tensor([5])])
    with pytest.raises(ValueError, match="2 frames of gt_boxes"):
        loss([maps], [torch.zeros(0, 7)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    with pytest.raises(ValueError, match="code_weights needs 8"):
        CenterHeadLoss(SMALL_PCR, VOXEL, 2, NAMES, code_weights=[1.0] * 7)
    with pytest.raises(ValueError, match="not in class_names"):
        CenterTargetAssigner(SMALL_PCR, VOXEL, 2, NAMES, [["Car"]])
