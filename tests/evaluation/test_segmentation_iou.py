"""MeanIoU: hand-checked values, ignore label, agreement with mmsegmentation's IoUMetric."""
import numpy as np
import pytest
import torch

from visionattn.evaluation.segmentation_iou import MeanIoU


def _sample(pred, label):
    return {"pred_sem_seg": {"data": torch.as_tensor(pred)[None]}, "gt_sem_seg": {"data": torch.as_tensor(label)[None]}}


def test_hand_computed_values():
    metric = MeanIoU(num_classes=3)
    label = [[0, 0, 1, 1], [2, 2, 255, 255]]
    pred = [[0, 1, 1, 1], [2, 0, 0, 2]]
    metric.process(None, [_sample(pred, label)])
    out = metric.compute_metrics(metric.results)
    # class 0: inter 1, union 3; class 1: inter 2, union 3; class 2: inter 1, union 2 (ignored pixels dropped)
    assert out["mIoU"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert out["aAcc"] == pytest.approx(100 * 4 / 6)
    assert out["mAcc"] == pytest.approx(100 * (1 / 2 + 1 + 1 / 2) / 3)


def test_absent_classes_are_left_out_and_bad_labels_raise():
    metric = MeanIoU(num_classes=4)
    metric.process(None, [_sample([[1, 1]], [[1, 1]])])
    assert metric.compute_metrics(metric.results)["mIoU"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="label values"):
        metric.process(None, [_sample([[1]], [[7]])])
    with pytest.raises(ValueError, match="differ in size"):
        metric.process(None, [_sample([[1, 1]], [[1]])])
    with pytest.raises(ValueError, match="num_classes"):
        MeanIoU().process(None, [_sample([[1]], [[1]])])


def test_matches_mmseg_iou_metric():
    mmseg_metrics = pytest.importorskip("mmseg.evaluation.metrics")
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(3):
        label = rng.integers(0, 6, (20, 30))
        label[rng.random(label.shape) < 0.1] = 255
        pred = np.where(rng.random(label.shape) < 0.6, label % 255 % 6, rng.integers(0, 6, label.shape))
        samples.append(_sample(pred, label))
    ours = MeanIoU(num_classes=6)
    theirs = mmseg_metrics.IoUMetric(iou_metrics=["mIoU"])
    theirs.dataset_meta = dict(classes=[str(i) for i in range(6)])
    ours.process(None, samples)
    theirs.process(None, samples)
    a, b = ours.compute_metrics(ours.results), theirs.compute_metrics(theirs.results)
    for key in ("mIoU", "aAcc", "mAcc"):
        assert a[key] == pytest.approx(b[key], abs=0.01)  # mmseg rounds to 2 decimals
