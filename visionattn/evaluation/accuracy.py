"""Top-k classification accuracy, reported under mmpretrain's keys.

The output keys are those of mmpretrain's ``Accuracy`` (``accuracy/top1``, ``accuracy/top5``; the
same prefix and names), so logs, ``save_best='accuracy/top1'`` and comparison scripts written for
mmpretrain work unchanged. Ours is kept because mmpretrain is not a dependency of this library and
its metric reads ``DataSample`` objects, while :class:`visionattn.engine.ImageClassifier` predicts
plain dicts.
"""
from typing import Dict, List, Sequence

import torch
from mmengine.evaluator import BaseMetric

from ..registry import METRICS


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy in percent, reported as ``accuracy/top1``, ``accuracy/top5``...

    Consumes the predictions of :class:`visionattn.engine.ImageClassifier`: one dict per image
    with ``pred_score`` (Tensor (num_classes,)) and ``gt_label`` (int). ``k`` larger than the
    number of classes counts every image as correct.
    """

    default_prefix = "accuracy"

    def __init__(self, topk: Sequence[int] = (1, 5), **kwargs):
        super().__init__(**kwargs)
        if not topk or any(int(k) < 1 for k in topk):
            raise ValueError(f"topk must be positive integers, got {topk!r}")
        self.topk = tuple(int(k) for k in topk)

    def process(self, data_batch, data_samples: Sequence[Dict]) -> None:
        for sample in data_samples:
            self.results.append((sample["pred_score"].detach().float().cpu(), int(sample["gt_label"])))

    def compute_metrics(self, results: List) -> Dict[str, float]:
        scores = torch.stack([s for s, _ in results])  # (N, num_classes)
        labels = torch.tensor([lbl for _, lbl in results])  # (N,)
        ranked = scores.topk(min(max(self.topk), scores.shape[1]), dim=1).indices  # (N, k_max)
        hits = ranked == labels[:, None]
        return {f"top{k}": hits[:, :k].any(dim=1).float().mean().item() * 100 for k in self.topk}
