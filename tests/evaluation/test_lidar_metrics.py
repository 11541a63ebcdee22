"""KITTI AP_R40 and Waymo-style AP/APH on hand-built cases with known values, and the vectorised KITTI
matching against a scalar, loop-by-loop transcription of the devkit's ``compute_statistics``."""
import math

import numpy as np
import pytest
import torch

from visionattn.evaluation.lidar_metrics import (KittiMetric3D, WaymoStyleMetric, box_iou_2d, heading_accuracy,
                                                 kitti_counts, kitti_thresholds, waymo_average_precision)
from visionattn.datasets.lidar_formats import boxes_to_image_bbox
from visionattn.registry import METRICS


def project_boxes_to_image(boxes, calib, shape):
    return boxes_to_image_bbox(boxes, calib, shape)[0]

KITTI = ("Car", "Pedestrian", "Cyclist")
WAYMO = ("Vehicle", "Pedestrian", "Cyclist")
# a KITTI-like calibration: camera x = -lidar y, camera y = -lidar z, camera z = lidar x
CALIB = dict(P2=np.array([[700.0, 0, 620, 0], [0, 700, 190, 0], [0, 0, 1, 0]]), R0_rect=np.eye(3),
             Tr_velo_to_cam=np.array([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0]]))
SHAPE = (375, 1242)


def cars(n, start=0):
    """n well-separated car boxes in front of the sensor (10-30 m), varied headings."""
    i = np.arange(start, start + n)
    return np.stack([10 + 5 * (i % 4), 4 * (i % 4) - 6, np.full(n, -0.8), np.full(n, 4.0), np.full(n, 1.8),
                     np.full(n, 1.5), 0.3 * i], 1)


def frame(gt, pred=None, scores=None, labels=None, gt_labels=None, difficulty=None, **extra):
    gt = np.asarray(gt, np.float64).reshape(-1, 7)
    pred = gt.copy() if pred is None else np.asarray(pred, np.float64).reshape(-1, 7)
    s = dict(frame_id="f", gt_boxes=torch.tensor(gt, dtype=torch.float32),
             gt_labels=torch.as_tensor(np.zeros(len(gt), np.int64) if gt_labels is None else gt_labels),
             gt_difficulty=torch.as_tensor(np.zeros(len(gt), np.int64) if difficulty is None else difficulty),
             pred_instances_3d=dict(
                 bboxes_3d=torch.tensor(pred, dtype=torch.float32),
                 scores_3d=torch.as_tensor(np.linspace(0.9, 0.5, len(pred)) if scores is None else scores),
                 labels_3d=torch.as_tensor(np.zeros(len(pred), np.int64) if labels is None else labels)))
    s.update(extra)
    return s


def run(metric, frames):
    metric.process(None, frames)
    return metric.evaluate(len(frames))


def chunks(gt, scores, size=4, **kw):
    """Split n boxes over frames of ``size`` (no two boxes of a frame overlap)."""
    return [frame(gt[k:k + size], scores=scores[k:k + size], **kw) for k in range(0, len(gt), size)]


# --- KITTI ---------------------------------------------------------------------------------------------

def test_kitti_perfect_is_100_and_registered():
    assert METRICS.get("KittiMetric3D") is KittiMetric3D and METRICS.get("WaymoStyleMetric") is WaymoStyleMetric
    gt = cars(80)
    out = run(KittiMetric3D(class_names=KITTI, metrics=("3D", "BEV")), chunks(gt, np.linspace(0.99, 0.2, 80)))
    for kind in ("3D", "BEV"):
        for diff in ("easy", "moderate", "hard"):
            assert out[f"kitti/Car_{kind}_AP40_{diff}"] == pytest.approx(100.0)
        assert out[f"kitti/Pedestrian_{kind}_AP40_moderate"] == 0.0  # no ground truth: 0 as the devkit ...
        assert out[f"kitti/mAP40_{kind}_moderate"] == pytest.approx(100.0)  # ... left out of the mean


def test_kitti_few_objects_follow_the_devkit_sampling():
    """The devkit's thresholds are the TP scores: 40 perfect objects fill 40 of the 41 positions."""
    gt = cars(40)
    out = run(KittiMetric3D(class_names=KITTI, metrics=("3D",)), chunks(gt, np.linspace(0.99, 0.2, 40)))
    assert out["kitti/Car_3D_AP40_easy"] == pytest.approx(97.5)


def test_kitti_missed_objects_exact_values():
    gt = cars(80)
    scores = np.linspace(0.99, 0.2, 80)
    # half of them found: recall stops at 0.5 -> thresholds at TP 1, 2, 4, ..., 40 -> 21 positions, AP 20/40
    frames = [frame(gt[k:k + 4], pred=gt[k:k + 4][:2], scores=scores[k:k + 2]) for k in range(0, 80, 4)]
    out = run(KittiMetric3D(class_names=KITTI, metrics=("3D",)), frames)
    assert out["kitti/Car_3D_AP40_moderate"] == pytest.approx(50.0)
    # one of 80 missed: TP 1, 2, 4, ..., 78, 79 -> 41 thresholds at precision 1 (the devkit rounds it to 100)
    frames = chunks(gt, scores)
    frames[0]["pred_instances_3d"] = {k: v[1:] for k, v in frames[0]["pred_instances_3d"].items()}
    out = run(KittiMetric3D(class_names=KITTI, metrics=("3D",)), frames)
    assert out["kitti/Car_3D_AP40_moderate"] == pytest.approx(100.0)
    # one of 40 missed: 39 thresholds -> positions 1..38 at precision 1
    out = run(KittiMetric3D(class_names=KITTI, metrics=("3D",)),
              [frame(gt[:40], pred=gt[1:40], scores=np.linspace(0.99, 0.2, 39))])
    assert out["kitti/Car_3D_AP40_moderate"] == pytest.approx(38 / 40 * 100)


def test_kitti_duplicates_are_false_positives():
    """Each object found twice, the copy scored between it and the next object: at the k-th threshold
    (n TPs) precision is n / (2n - 1); with 80 objects the thresholds sit at n = 1, 2, 4, ..., 80."""
    gt = cars(80)
    scores = np.linspace(0.99, 0.2, 80)
    dup_scores = scores - 0.004  # below its own original, above the next one (step 0.01)
    frames = [frame(gt[k:k + 4], pred=np.concatenate([gt[k:k + 4], gt[k:k + 4] + [0.05, 0, 0, 0, 0, 0, 0]]),
                    scores=np.concatenate([scores[k:k + 4], dup_scores[k:k + 4]])) for k in range(0, 80, 4)]
    out = run(KittiMetric3D(class_names=KITTI, metrics=("3D", "BEV")), frames)
    expected = 100 * sum(2 * k / (4 * k - 1) for k in range(1, 41)) / 40
    assert out["kitti/Car_3D_AP40_easy"] == pytest.approx(expected)
    assert out["kitti/Car_BEV_AP40_hard"] == pytest.approx(expected)
    assert expected < 60


def test_kitti_ignored_objects_neither_help_nor_hurt():
    gt = cars(80)
    scores = np.linspace(0.99, 0.2, 80)
    base = run(KittiMetric3D(class_names=KITTI, metrics=("3D",)), chunks(gt, scores))
    hard = cars(20, start=80) + [0, 0, 3.0, 0, 0, 0, 0]  # moved up: no overlap with the others
    van = cars(20, start=100) + [0, 0, 6.0, 0, 0, 0, 0]
    frames = chunks(gt, scores)
    for k, f in enumerate(frames):
        all_gt = np.concatenate([f["gt_boxes"].numpy(), hard[k:k + 1]])
        found = k % 2 == 0  # the hard car and the van found in half of the frames, missed in the others
        pred = np.concatenate([f["pred_instances_3d"]["bboxes_3d"].numpy()] + ([hard[k:k + 1], van[k:k + 1]]
                                                                                if found else []))
        sc = np.concatenate([f["pred_instances_3d"]["scores_3d"].numpy(), [0.995, 0.995] if found else []])
        frames[k] = frame(all_gt, pred=pred, scores=sc, difficulty=[0, 0, 0, 0, 2],
                          other_names=["Van"], other_boxes=van[k:k + 1])
    out = run(KittiMetric3D(class_names=KITTI, metrics=("3D",)), frames)
    assert out["kitti/Car_3D_AP40_easy"] == pytest.approx(base["kitti/Car_3D_AP40_easy"])
    assert out["kitti/Car_3D_AP40_moderate"] == pytest.approx(base["kitti/Car_3D_AP40_moderate"])
    # at 'hard' the 20 hard cars count: 90 of 100 found
    assert out["kitti/Car_3D_AP40_hard"] < 99.0
    # without the Van rule the van detections would be false positives ranked first
    for f in frames:
        f.pop("other_names"), f.pop("other_boxes")
    worse = run(KittiMetric3D(class_names=KITTI, metrics=("3D",)), frames)
    assert worse["kitti/Car_3D_AP40_easy"] < 95.0


def test_kitti_min_height_filter_and_2d_with_dontcare():
    gt = cars(80)
    scores = np.linspace(0.99, 0.2, 80)
    far = np.array([[70.0, 0, -0.8, 4, 1.8, 1.5, 0]])  # 1.5 m at 70 m: ~15 px high, below every limit
    bbox = project_boxes_to_image(gt, CALIB, SHAPE)
    assert np.all(bbox[:, 3] - bbox[:, 1] > 40)
    assert (project_boxes_to_image(far, CALIB, SHAPE)[0, 3] - project_boxes_to_image(far, CALIB, SHAPE)[0, 1]) < 25
    frames = []
    for k in range(0, 80, 4):
        pred = np.concatenate([gt[k:k + 4], far])
        frames.append(frame(gt[k:k + 4], pred=pred, scores=np.concatenate([scores[k:k + 4], [0.999]]),
                            calib=CALIB, image_shape=SHAPE, gt_bbox_2d=bbox[k:k + 4],
                            dontcare_bbox_2d=np.zeros((0, 4))))
    out = run(KittiMetric3D(class_names=KITTI), frames)
    for kind in ("3D", "BEV", "2D"):
        assert out[f"kitti/Car_{kind}_AP40_moderate"] == pytest.approx(100.0)  # the far false positive is ignored
    # a false positive tall enough to count, inside a DontCare region: counted in 3D/BEV, not in 2D
    near = np.array([[30.0, 8, -0.8, 4, 1.8, 1.5, 0]])  # 35 px high: counted at moderate
    near_box = project_boxes_to_image(near, CALIB, SHAPE)
    for f in frames:
        p = f["pred_instances_3d"]
        p["bboxes_3d"] = torch.cat([p["bboxes_3d"], torch.tensor(near, dtype=torch.float32)])
        p["scores_3d"] = torch.cat([p["scores_3d"], torch.tensor([0.998], dtype=p["scores_3d"].dtype)])
        p["labels_3d"] = torch.cat([p["labels_3d"], torch.zeros(1, dtype=torch.long)])
        f["dontcare_bbox_2d"] = near_box + [-5, -5, 5, 5]
    out = run(KittiMetric3D(class_names=KITTI), frames)
    assert out["kitti/Car_2D_AP40_moderate"] == pytest.approx(100.0)
    # 3D/BEV: 20 false positives above every true positive; precision n / (n + 20) rises to 80 / 100, and
    # the envelope from the right makes it 0.8 at every recall position
    assert out["kitti/Car_3D_AP40_moderate"] == pytest.approx(80.0)
    assert out["kitti/Car_BEV_AP40_moderate"] == pytest.approx(80.0)


def devkit_statistics(overlaps, gt_ignore, det_ignore, scores, min_overlap, thresh, dc_overlaps=None):
    """Scalar transcription of the devkit's compute_statistics (compute_fp=True)."""
    det_size, gt_size = overlaps.shape
    assigned = [False] * det_size
    ignored_threshold = [scores[j] < thresh for j in range(det_size)]
    tp = fp = fn = 0
    for i in range(gt_size):
        if gt_ignore[i] == -1:
            continue
        det_idx, valid, max_overlap, assigned_ignored = -1, -1e7, 0.0, False
        for j in range(det_size):
            if det_ignore[j] == -1 or assigned[j] or ignored_threshold[j]:
                continue
            o = overlaps[j, i]
            if o > min_overlap and (o > max_overlap or assigned_ignored) and det_ignore[j] == 0:
                max_overlap, det_idx, valid, assigned_ignored = o, j, 1, False
            elif o > min_overlap and valid == -1e7 and det_ignore[j] == 1:
                det_idx, valid, assigned_ignored = j, 1, True
        if valid == -1e7 and gt_ignore[i] == 0:
            fn += 1
        elif valid != -1e7 and (gt_ignore[i] == 1 or det_ignore[det_idx] == 1):
            assigned[det_idx] = True
        elif valid != -1e7:
            tp += 1
            assigned[det_idx] = True
    for j in range(det_size):
        if not (assigned[j] or det_ignore[j] == -1 or det_ignore[j] == 1 or ignored_threshold[j]):
            fp += 1
    if dc_overlaps is not None:
        stuff = 0
        for k in range(dc_overlaps.shape[1]):
            for j in range(det_size):
                if assigned[j] or det_ignore[j] in (-1, 1) or ignored_threshold[j]:
                    continue
                if dc_overlaps[j, k] > min_overlap:
                    assigned[j] = True
                    stuff += 1
        fp -= stuff
    return tp, fp, fn


def test_kitti_vectorised_matching_equals_the_devkit_loops():
    rng = np.random.default_rng(0)
    for _ in range(40):
        d, g, k = rng.integers(0, 9), rng.integers(0, 7), rng.integers(0, 3)
        overlaps = rng.choice([0.0, 0.3, 0.55, 0.75, 0.9], size=(d, g))
        gt_ignore = rng.choice([-1, 0, 0, 1], size=g)
        det_ignore = rng.choice([-1, 0, 0, 1], size=d)
        scores = rng.choice(np.linspace(0.1, 0.9, 5), size=d)  # ties included
        dc = rng.choice([0.0, 0.8], size=(d, k))
        thresholds = np.array([0.0, 0.3, 0.5, 0.7, 0.95])
        got = kitti_counts(overlaps, gt_ignore, det_ignore, scores, thresholds, 0.5, dc)
        want = [devkit_statistics(overlaps, gt_ignore, det_ignore, scores, 0.5, t, dc) for t in thresholds]
        np.testing.assert_array_equal(got, np.array(want).reshape(-1, 3))


def test_kitti_thresholds_and_2d_iou():
    assert len(kitti_thresholds(np.linspace(1, 0, 80), 80)) == 41
    assert len(kitti_thresholds(np.linspace(1, 0, 40), 40)) == 40
    a = np.array([[0, 0, 10, 10.0]])
    b = np.array([[5, 0, 15, 10.0], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_iou_2d(a, b), [[50 / 150, 0]])
    np.testing.assert_allclose(box_iou_2d(a, b, over_first=True), [[0.5, 0]])


def test_kitti_errors_name_the_problem():
    with pytest.raises(ValueError, match="pred_instances_3d"):
        KittiMetric3D(class_names=KITTI).process(None, [dict(frame_id="x", gt_boxes=torch.zeros(0, 7))])
    with pytest.raises(ValueError, match="unknown metrics"):
        KittiMetric3D(metrics=("3d",))
    m = KittiMetric3D()
    m.process(None, [frame(cars(1))])
    with pytest.raises(ValueError, match="class_names"):
        m.evaluate(1)


def test_empty_frames_give_defined_values():
    empty = frame(np.zeros((0, 7)), pred=np.zeros((0, 7)))
    out = run(KittiMetric3D(class_names=KITTI, metrics=("3D",)), [empty])
    assert out["kitti/Car_3D_AP40_easy"] == 0.0
    out = run(WaymoStyleMetric(class_names=WAYMO), [empty])
    assert math.isnan(out["waymo/Vehicle_AP_L1"]) and math.isnan(out["waymo/mAP_L1"])
    # predictions without any ground truth of their class: that class is undefined, the others are not
    out = run(WaymoStyleMetric(class_names=WAYMO), [frame(cars(2), gt_labels=[0, 0], difficulty=[1, 1]),
                                                    frame(np.zeros((0, 7)), pred=cars(1), labels=[1])])
    assert out["waymo/Vehicle_AP_L1"] == pytest.approx(100.0) and math.isnan(out["waymo/Pedestrian_AP_L1"])


# --- Waymo-style -------------------------------------------------------------------------------------

def waymo(frames):
    return run(WaymoStyleMetric(class_names=WAYMO), frames)


def test_waymo_perfect_and_heading_weighting():
    gt = cars(8)
    ones = np.ones(4, np.int64)
    out = waymo([frame(gt[:4], difficulty=ones), frame(gt[4:], difficulty=ones)])
    for key in ("Vehicle_AP_L1", "Vehicle_APH_L1", "Vehicle_AP_L2", "Vehicle_APH_L2", "mAP_L1", "mAPH_L2"):
        assert out[f"waymo/{key}"] == pytest.approx(100.0)
    flipped = gt + [0, 0, 0, 0, 0, 0, math.pi]  # same box, heading reversed: IoU 1, heading accuracy 0
    out = waymo([frame(gt[:4], pred=flipped[:4], difficulty=ones), frame(gt[4:], pred=flipped[4:], difficulty=ones)])
    assert out["waymo/Vehicle_AP_L1"] == pytest.approx(100.0)
    assert out["waymo/Vehicle_APH_L1"] == pytest.approx(0.0, abs=1e-4)  # float32 boxes
    square = cars(4) * [1, 1, 1, 0, 0, 1, 1] + [0, 0, 0, 2, 2, 0, 0]  # square footprint: a quarter turn keeps IoU 1
    out = waymo([frame(square, pred=square + [0, 0, 0, 0, 0, 0, math.pi / 2], difficulty=np.ones(4, np.int64))])
    assert out["waymo/Vehicle_APH_L1"] == pytest.approx(50.0, abs=1e-4)
    np.testing.assert_allclose(heading_accuracy([3.0, -3.0], [-3.0, 3.0]), 1 - (2 * math.pi - 6) / math.pi)


def test_waymo_missed_and_duplicates():
    gt = cars(4)
    ones = np.ones(4, np.int64)
    # 3 of 4 found: precision 1 up to recall 0.75; Waymo's integration adds (1, 0), fills the recall gap
    # every 0.05 with precision 0 and takes trapezoids: 0.75 + the triangle 0.05 x 1 / 2
    assert waymo([frame(gt, pred=gt[:3], difficulty=ones)])["waymo/Vehicle_AP_L1"] == pytest.approx(77.5)
    # A (0.9, TP), copy of A (0.8, FP), B (0.7, TP): (recall, precision) = (1/2, 1), (1/2, 1/2), (1, 2/3)
    two = gt[:2]
    pred = np.stack([two[0], two[0] + [0.05, 0, 0, 0, 0, 0, 0], two[1]])
    out = waymo([frame(two, pred=pred, scores=[0.9, 0.8, 0.7], difficulty=[1, 1])])
    assert out["waymo/Vehicle_AP_L1"] == pytest.approx(100 * (0.45 * 2 / 3 + 0.05 * (2 / 3 + 1) / 2 + 0.5))
    # a copy below every true positive does not lower AP
    out = waymo([frame(two, pred=pred, scores=[0.9, 0.1, 0.7], difficulty=[1, 1])])
    assert out["waymo/Vehicle_AP_L1"] == pytest.approx(100.0)


def test_waymo_levels_and_empty_boxes():
    gt = cars(4)
    # two LEVEL_1 found, a LEVEL_2 found with the top score, a LEVEL_2 missed
    f = frame(gt, pred=gt[:3], scores=[0.8, 0.7, 0.9], difficulty=[1, 1, 2, 2])
    out = waymo([f])
    # as in the binary, a prediction on a LEVEL_2 box is a true positive at LEVEL_1 too; a missed LEVEL_2
    # box is a false negative at LEVEL_2 only
    assert out["waymo/Vehicle_AP_L1"] == pytest.approx(100.0)
    assert out["waymo/Vehicle_AP_L2"] == pytest.approx(77.5)
    # only the LEVEL_2 boxes found: true positives at LEVEL_1 too, with the two LEVEL_1 boxes missed: recall 1/2
    f = frame(gt, pred=gt[2:], scores=[0.8, 0.7], difficulty=[1, 1, 2, 2])
    assert waymo([f])["waymo/Vehicle_AP_L1"] == pytest.approx(100 * (0.5 + 0.05 / 2))
    # a box without points is not ground truth: the prediction on it is a false positive (top score)
    f = frame(gt[:2], scores=[0.9, 0.8], difficulty=[1, 1], gt_num_points=torch.tensor([0, 40]))
    out = waymo([f])
    assert out["waymo/Vehicle_AP_L1"] == pytest.approx(50.0)  # precision 0 then 1/2 at recall 1
    # boxes beyond 100.5 m take no part: a far prediction is no false positive, a far box no false negative
    far = np.array([[101.0, 0, 0, 4, 2, 1.5, 0], [0, -110, 0, 4, 2, 1.5, 0]])
    f = frame(np.concatenate([gt[:2], far[:1]]), pred=np.concatenate([gt[:2], far[1:]]), scores=[0.8, 0.7, 0.9],
              difficulty=[1, 1, 1])
    assert waymo([f])["waymo/Vehicle_AP_L1"] == pytest.approx(100.0)


def test_waymo_iou_threshold_per_class():
    gt = cars(1)
    shifted = gt + [0.6, 0, 0, 0, 0, 0, 0]  # IoU (4 - 0.6) / (4 + 0.6) = 0.739 after the cut: TP for a vehicle
    assert waymo([frame(gt, pred=shifted, difficulty=[1])])["waymo/Vehicle_AP_L1"] == pytest.approx(100.0)
    more = gt + [1.2, 0, 0, 0, 0, 0, 0]  # IoU 2.8 / 5.2 = 0.54: FP for a vehicle (0.7), TP for a cyclist (0.5)
    assert waymo([frame(gt, pred=more, difficulty=[1])])["waymo/Vehicle_AP_L1"] == pytest.approx(0.0)
    out = waymo([frame(gt, pred=more, difficulty=[1], gt_labels=[2], labels=[2])])
    assert out["waymo/Cyclist_AP_L1"] == pytest.approx(100.0)


# --- with the datasets -----------------------------------------------------------------------------------

def test_metrics_on_the_sample_datasets(tmp_path):
    """The readers' frames (calib, 2-D boxes, DontCare, Van...) flow into the metrics built from configs;
    the ground truth as predictions scores the maximum, and detecting the Vans as Cars changes no Car AP.
    (Other classes can change: as in the devkit, a detection of another class lower than the height limit
    is an ignored detection for every class, and the first pass takes the best-scored one.)"""
    from mmengine.evaluator import Evaluator

    from visionattn.datasets.lidar import KittiDetection3D, WaymoDetection3D
    from visionattn.datasets.sample_writers.lidar import write_kitti3d, write_waymo

    write_kitti3d(tmp_path / "kitti", train=1, val=6, ground_points=300)
    frames = [f["data_samples"] for f in KittiDetection3D(str(tmp_path / "kitti"), "val")]
    assert any(len(f["other_names"]) for f in frames) and all("calib" in f for f in frames)

    def perfect(f, vans_as_cars=False):
        boxes, labels = f["gt_boxes"], f["gt_labels"]
        if vans_as_cars and len(f["other_names"]):
            boxes = torch.cat([boxes, torch.as_tensor(f["other_boxes"], dtype=torch.float32)])
            labels = torch.cat([labels, torch.zeros(len(f["other_names"]), dtype=torch.long)])
        return dict(f, pred_instances_3d=dict(bboxes_3d=boxes, scores_3d=torch.linspace(0.9, 0.5, len(boxes)),
                                              labels_3d=labels))

    results = []
    for vans in (False, True):
        evaluator = Evaluator(dict(type="KittiMetric3D", _scope_="visionattn"))
        evaluator.process([perfect(f, vans) for f in frames])
        results.append(evaluator.evaluate(len(frames)))
    out = results[0]
    car_3d = [k for k in out if k.startswith(("kitti/Car_3D", "kitti/Car_BEV"))]  # (in 2D a Van can cover a Car)
    assert {k: out[k] for k in car_3d} == {k: results[1][k] for k in car_3d}
    n_cars = sum(int(((f["gt_labels"] == 0) & (f["gt_difficulty"] >= 0)).sum()) for f in frames)
    assert out["kitti/Car_3D_AP40_hard"] == pytest.approx(100 * (min(n_cars, 41) - 1) / 40)  # devkit sampling
    assert out["kitti/Car_BEV_AP40_hard"] == out["kitti/Car_3D_AP40_hard"]
    assert 0 < out["kitti/Car_2D_AP40_hard"] <= out["kitti/Car_3D_AP40_hard"]  # boxes leaving the image: 2-D misses

    write_waymo(tmp_path / "waymo", train_sequences=1, val_sequences=1, frames=3)
    frames = [f["data_samples"] for f in WaymoDetection3D(str(tmp_path / "waymo"), "val")]
    evaluator = Evaluator(dict(type="WaymoStyleMetric", _scope_="visionattn"))
    evaluator.process([perfect(f) for f in frames])
    out = evaluator.evaluate(len(frames))
    assert out["waymo/mAP_L1"] == pytest.approx(100.0) and out["waymo/mAPH_L2"] == pytest.approx(100.0)


def test_waymo_average_precision_interpolation():
    # a single point (recall 1, precision 1): the square
    assert waymo_average_precision([1.0], [1.0]) == pytest.approx(1.0)
    # nothing found: 0
    assert waymo_average_precision([1.0], [0.0]) == pytest.approx(0.0)
    # (0.5, 1): 0.5 + the triangle to (0.55, 0) = 0.525; with recall_delta 1 the trapezoid to (1, 0) = 0.75
    assert waymo_average_precision([1.0], [0.5]) == pytest.approx(0.525)
    assert waymo_average_precision([1.0], [0.5], recall_delta=1.0) == pytest.approx(0.75)
    # precision made non-increasing with recall: (0.5, 0.4) lifted to 0.8 by (1, 0.8)
    assert waymo_average_precision([0.4, 0.8], [0.5, 1.0]) == pytest.approx(0.8)


def test_waymo_matchers():
    from visionattn.evaluation.lidar_metrics import waymo_frame_match, waymo_frame_match_hungarian

    # prediction 0 (0.9) overlaps boxes 0 and 1, prediction 1 (0.8) only box 0
    iou = np.array([[0.8, 0.75], [0.75, 0.0]])
    scores = np.array([0.9, 0.8])
    np.testing.assert_array_equal(waymo_frame_match(iou, scores, 0.7), [0, -1])  # score first: one TP, one FP
    cutoffs = np.array([0.0, 0.85, 0.95])
    np.testing.assert_array_equal(waymo_frame_match_hungarian(iou, scores, cutoffs, 0.7),
                                  [[1, 0], [0, -1], [-1, -1]])  # the assignment: both true positives
    # below the threshold nothing is matched, even when the assignment pairs them
    np.testing.assert_array_equal(waymo_frame_match_hungarian(np.array([[0.6]]), scores[:1], cutoffs[:1], 0.7), [[-1]])
    with pytest.raises(ValueError, match="matcher"):
        WaymoStyleMetric(matcher="greedy")
    # both matchers agree where nothing competes
    gt = cars(4)
    f = [frame(gt, pred=gt[:3], difficulty=np.ones(4, np.int64))]
    a = run(WaymoStyleMetric(class_names=WAYMO, matcher="score_first"), f)
    b = run(WaymoStyleMetric(class_names=WAYMO, matcher="hungarian"), f)
    assert a["waymo/Vehicle_AP_L1"] == b["waymo/Vehicle_AP_L1"] == pytest.approx(77.5)
