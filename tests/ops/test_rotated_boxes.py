"""Rotated BEV/3D IoU against hand-computed cases and shapely; greedy NMS against a box-by-box loop."""
import math

import pytest
import torch

from visionattn.ops import rotated_box_nms
from visionattn.ops.rotated_box_iou import box_corners_bev, boxes_iou_3d, boxes_iou_bev, boxes_overlap_bev
from visionattn.ops.rotated_box_nms import class_nms_bev, nms_bev


def box(x=0.0, y=0.0, dx=2.0, dy=2.0, heading=0.0, z=0.0, dz=2.0):
    return [x, y, z, dx, dy, dz, heading]


def iou_bev(a, b):
    return boxes_iou_bev(torch.tensor([a]), torch.tensor([b])).item()


# (box a, box b, BEV overlap area, BEV IoU), worked out by hand
HAND_CASES = [
    (box(), box(), 4.0, 1.0),                                          # identical
    (box(), box(x=1.0), 2.0, 2.0 / 6.0),                               # axis-aligned, half overlap
    (box(), box(x=1.0, y=1.0), 1.0, 1.0 / 7.0),                        # corner overlap
    (box(), box(heading=math.pi / 4), 8 * (2 ** 0.5 - 1), 2 ** -0.5),  # 45 deg: a regular octagon
    (box(), box(x=5.0), 0.0, 0.0),                                     # disjoint
    (box(), box(x=2.0), 0.0, 0.0),                                     # touching along an edge
    (box(), box(x=2.0, y=2.0), 0.0, 0.0),                              # touching at a corner
    (box(), box(dx=1.0, dy=1.0, heading=0.3), 1.0, 0.25),              # contained
    (box(dx=4.0), box(dx=4.0, heading=math.pi / 2), 4.0, 4.0 / 12.0),  # 4x2 and its 90 deg turn: 2x2
    (box(dx=4.0), box(dx=4.0, heading=math.pi), 8.0, 1.0),             # heading pi: the same footprint
    (box(heading=0.7), box(heading=0.7 + math.pi / 2), 4.0, 1.0),      # square turned 90 deg: itself
    (box(x=10, y=-3, heading=1.0), box(x=11, y=-3, heading=1.0),       # rotated, shifted along x:
     None, None),                                                      # checked by translation below
]


@pytest.mark.parametrize("a,b,overlap,iou", [c for c in HAND_CASES if c[2] is not None])
def test_hand_computed_overlaps(a, b, overlap, iou):
    got = boxes_overlap_bev(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))
    assert got.item() == pytest.approx(overlap, abs=1e-9)
    assert iou_bev(a, b) == pytest.approx(iou, abs=1e-6)
    assert iou_bev(b, a) == pytest.approx(iou, abs=1e-6)  # symmetric


def test_rigid_motion_invariance():
    """Rotating and translating both boxes together changes nothing."""
    g = torch.Generator().manual_seed(0)
    a, b = _random_boxes(40, g), _random_boxes(40, g)
    ref = boxes_overlap_bev(a, b)
    angle, shift = 0.9, torch.tensor([3.0, -7.0])
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=a.dtype)
    moved = []
    for t in (a, b):
        t = t.clone()
        t[:, :2] = t[:, :2] @ rot.T + shift
        t[:, 6] += angle
        moved.append(t)
    torch.testing.assert_close(boxes_overlap_bev(*moved), ref, atol=1e-9, rtol=1e-9)


def test_corners_are_counter_clockwise_openpcdet_convention():
    corners = box_corners_bev(torch.tensor(box(x=1.0, dx=4.0, dy=2.0, heading=math.pi / 2)))
    # dx along +y after a quarter turn counter-clockwise: first corner (+dx/2, +dy/2) -> (1 - 1, 0 + 2)
    torch.testing.assert_close(corners[0], torch.tensor([0.0, 2.0]), atol=1e-6, rtol=0)
    area = 0.5 * sum(float(corners[i, 0] * corners[(i + 1) % 4, 1] - corners[(i + 1) % 4, 0] * corners[i, 1])
                     for i in range(4))
    assert area == pytest.approx(8.0)  # positive: counter-clockwise


def test_iou_3d_hand_computed():
    a = torch.tensor([box(dz=2.0)])
    b = torch.tensor([box(z=1.0, dz=2.0), box(z=5.0), box(x=1.0, dz=4.0), box()])
    # half height: 4 / (8 + 8 - 4); no height overlap; 2 x 2 / (8 + 16 - 4); identical
    torch.testing.assert_close(boxes_iou_3d(a, b)[0], torch.tensor([1 / 3, 0.0, 4 / 20, 1.0]), atol=1e-6, rtol=0)


def test_shapes_dtypes_and_errors():
    assert boxes_iou_bev(torch.zeros(0, 7), torch.zeros(3, 7)).shape == (0, 3)
    assert boxes_iou_3d(torch.zeros(2, 7), torch.zeros(0, 7)).shape == (2, 0)
    assert boxes_iou_bev(torch.tensor([box()]), torch.tensor([box()])).dtype == torch.float32
    wide = torch.tensor([box() + [5.0, 6.0]])  # velocity columns are ignored
    assert boxes_iou_bev(wide, wide).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\(N, 7\) floating"):
        boxes_iou_bev(torch.zeros(2, 5), torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"\(N, 7\) floating"):
        boxes_iou_bev(torch.zeros(2, 7, dtype=torch.int64), torch.zeros(2, 7))


def _random_boxes(n, g, spread=4.0, dtype=torch.float64):
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * spread
    size = 0.5 + torch.rand(n, 3, generator=g, dtype=dtype) * 3
    z = torch.rand(n, 1, generator=g, dtype=dtype)
    heading = (torch.rand(n, 1, generator=g, dtype=dtype) - 0.5) * 4 * math.pi
    return torch.cat([xy, z, size, heading], 1)


def test_overlap_equals_shapely():
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import Polygon

    g = torch.Generator().manual_seed(1)
    a, b = _random_boxes(30, g), _random_boxes(25, g)
    got = boxes_overlap_bev(a, b)
    ca, cb = box_corners_bev(a).tolist(), box_corners_bev(b).tolist()
    want = torch.tensor([[Polygon(p).intersection(Polygon(q)).area for q in cb] for p in ca], dtype=torch.float64)
    assert shapely.__version__ and (want > 0).float().mean() > 0.3  # many overlapping pairs
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def _sequential_nms(boxes, scores, threshold):
    order = scores.argsort(descending=True, stable=True).tolist()
    iou = boxes_iou_bev(boxes, boxes)
    keep = []
    for i in order:
        if all(iou[i, j] <= threshold for j in keep):
            keep.append(i)
    return keep


def test_nms_chain_hand_case():
    """A suppresses B; B would suppress C, but B is gone, so C stays."""
    boxes = torch.tensor([box(), box(x=1.0), box(x=2.0)])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms_bev(boxes, scores, 0.3).tolist() == [0, 2]
    assert nms_bev(boxes, scores, 0.4).tolist() == [0, 1, 2]  # IoU 1/3 is not above 0.4
    assert nms_bev(boxes, scores, 0.3, pre_max_size=2).tolist() == [0]
    assert nms_bev(boxes, scores, 0.5, post_max_size=2).tolist() == [0, 1]
    assert nms_bev(boxes[:0], scores[:0], 0.5).tolist() == []


@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.8])
def test_nms_equals_box_by_box_greedy(threshold):
    g = torch.Generator().manual_seed(2)
    boxes = _random_boxes(150, g, spread=12.0, dtype=torch.float32)
    scores = torch.rand(150, generator=g)
    assert nms_bev(boxes, scores, threshold).tolist() == _sequential_nms(boxes, scores, threshold)


def test_nms_long_chain_falls_back_to_the_box_by_box_pass(monkeypatch):
    """A row of boxes each overlapping the next: the chain is longer than the rounds allowed."""
    monkeypatch.setattr(rotated_box_nms, "_ROUNDS", 3)
    boxes = torch.tensor([box(x=1.0 * i) for i in range(12)])
    scores = torch.linspace(1, 0, 12)
    assert nms_bev(boxes, scores, 0.3).tolist() == list(range(0, 12, 2))


def test_class_nms():
    boxes = torch.tensor([box(), box(x=0.2), box(x=0.4), box(x=10.0), box(x=10.3)])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = torch.tensor([0, 1, 0, 2, 2])
    # one threshold: overlapping boxes of different classes both stay
    assert class_nms_bev(boxes, scores, labels, 0.5).tolist() == [0, 1, 3]
    # per class (OpenPCDet class_specific_nms): class 2's looser threshold keeps box 4 (IoU ~0.74)
    assert class_nms_bev(boxes, scores, labels, [0.5, 0.5, 0.8]).tolist() == [0, 1, 3, 4]
    # classes beyond the per-class lists are dropped, as OpenPCDet does
    assert class_nms_bev(boxes, scores, labels, [0.5, 0.5]).tolist() == [0, 1]
    assert class_nms_bev(boxes, scores, labels, 0.5, post_max_size=[1, 1, 1]).tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="pre_max_size has 2 entries but there is a label 2"):
        class_nms_bev(boxes, scores, labels, 0.5, pre_max_size=[10, 10])


@pytest.mark.cuda
def test_cuda_equals_cpu():
    g = torch.Generator().manual_seed(3)
    boxes = _random_boxes(3000, g, spread=80.0, dtype=torch.float32)
    scores = torch.rand(3000, generator=g)
    labels = torch.randint(0, 3, (3000,), generator=g)
    torch.testing.assert_close(boxes_iou_bev(boxes.cuda(), boxes[:500].cuda()).cpu(), boxes_iou_bev(boxes, boxes[:500]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(boxes_iou_3d(boxes.cuda(), boxes[:500].cuda()).cpu(), boxes_iou_3d(boxes, boxes[:500]),
                               atol=1e-6, rtol=0)
    for args in ((0.1,), ([0.75, 0.6, 0.55], [4096, 4096, 4096])):
        assert torch.equal(class_nms_bev(boxes.cuda(), scores.cuda(), labels.cuda(), *args).cpu(),
                           class_nms_bev(boxes, scores, labels, *args))


def test_paired_iou_3d_is_the_diagonal_of_the_iou_matrix():
    from visionattn.ops.rotated_box_iou import boxes_iou_3d, detections, paired_boxes_iou_3d

    boxes, _, _ = detections(64, n_objects=8, seed=3)
    shuffled = boxes[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    torch.testing.assert_close(paired_boxes_iou_3d(boxes, shuffled), boxes_iou_3d(boxes, shuffled).diagonal())
    with pytest.raises(ValueError, match="as many boxes"):
        paired_boxes_iou_3d(boxes, boxes[:3])
