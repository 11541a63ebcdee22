"""Disparity metrics: EPE, KITTI D1 and bad-x, on the 'all' and 'noc' (non-occluded) masks.

Definitions (per dataset, pooled over all valid pixels of all images, in percent for rates):
* ``epe``: mean |pred - gt| in px;
* ``d1``: KITTI outlier rate, |err| > 3 px AND |err| > 5 % of gt;
* ``bad{x}``: rate of |err| > x px, x in ``thresholds`` (default 0.5, 1, 2, 3).

Ours because no OpenMMLab library ships a stereo-disparity metric (mmflow scores optical flow only);
the definitions follow the KITTI 2015 devkit and the MatchStereo evaluation code.
"""
from typing import Dict, List, Sequence

import torch
from mmengine.evaluator import BaseMetric

from ..registry import METRICS


def disparity_errors(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                     thresholds: Sequence[float] = (0.5, 1.0, 2.0, 3.0)) -> Dict[str, torch.Tensor]:
    """Error sums over ``valid`` pixels of (..., H, W) maps: {'count', 'epe', 'd1', 'bad{x}'} (sums, not means)."""
    if pred.shape != gt.shape or valid.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)}, gt {tuple(gt.shape)} and valid {tuple(valid.shape)} must match")
    valid = valid.bool() & torch.isfinite(gt)
    err = (pred.float() - gt.float()).abs()[valid]
    g = gt.float()[valid]
    out = {"count": torch.tensor(float(err.numel())), "epe": err.sum(),
           "d1": ((err > 3.0) & (err > 0.05 * g)).float().sum()}
    for t in thresholds:
        out[f"bad{t:g}"] = (err > t).float().sum()
    return out


@METRICS.register_module()
class StereoMetric(BaseMetric):
    """EPE / D1 / bad-x over a dataset, for every mask given with the samples.

    Consumes one dict per image with ``pred_disp`` (H, W), ``gt_disp`` (H, W) and masks
    ``valid`` (all valid ground truth) and optionally ``valid_noc`` (non-occluded), as produced
    by :class:`visionattn.engine.StereoMatcher`. Reports e.g. ``all/epe``, ``all/d1``,
    ``noc/bad1`` (rates in percent).
    """

    default_prefix = "stereo"

    def __init__(self, thresholds: Sequence[float] = (0.5, 1.0, 2.0, 3.0), **kwargs):
        super().__init__(**kwargs)
        self.thresholds = tuple(float(t) for t in thresholds)

    def process(self, data_batch, data_samples: Sequence[Dict]) -> None:
        for s in data_samples:
            row = {}
            for mask_name, key in (("all", "valid"), ("noc", "valid_noc")):
                if s.get(key) is not None:
                    sums = disparity_errors(s["pred_disp"].cpu(), s["gt_disp"].cpu(), s[key].cpu(), self.thresholds)
                    row[mask_name] = {k: float(v) for k, v in sums.items()}
            self.results.append(row)

    def compute_metrics(self, results: List[Dict]) -> Dict[str, float]:
        metrics = {}
        for mask_name in ("all", "noc"):
            rows = [r[mask_name] for r in results if mask_name in r]
            if not rows:
                continue
            total = {k: sum(r[k] for r in rows) for k in rows[0]}
            n = max(total.pop("count"), 1.0)
            metrics[f"{mask_name}/epe"] = total.pop("epe") / n
            for k, v in total.items():
                metrics[f"{mask_name}/{k}"] = 100.0 * v / n
        return metrics
