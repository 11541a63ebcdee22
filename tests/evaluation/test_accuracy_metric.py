import pytest
import torch

from visionattn.evaluation import Accuracy


def _run(metric, scores, labels):
    metric.process(None, [dict(pred_score=s, gt_label=int(g)) for s, g in zip(scores, labels)])
    return metric.evaluate(len(labels))


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 1, 0, 2])  # top1 right: 1 of 4; top2 right: 1st, 2nd (0.3 is 2nd)
    out = _run(Accuracy(topk=(1, 2, 5)), scores, labels)
    assert out == pytest.approx({"accuracy/top1": 25.0, "accuracy/top2": 50.0, "accuracy/top5": 100.0})


def test_bad_topk():
    with pytest.raises(ValueError, match="topk"):
        Accuracy(topk=(0,))
