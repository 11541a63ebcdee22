"""LiDAR 3-D detection metrics: KITTI 3D / BEV / 2D AP at 40 recall positions, Waymo-style mAP / mAPH.

Both consume what ``ScatterFormerDetector(mode='predict')`` returns (one dict per frame, LiDAR-frame
boxes ``[x, y, z, dx, dy, dz, heading]`` with the centre in (x, y, z)): ``pred_instances_3d`` =
dict(bboxes_3d (n, 7), scores_3d (n,), labels_3d (n,)) next to the ground truth ``gt_boxes``,
``gt_labels``, ``gt_difficulty`` (and ``gt_num_points``; KITTI: ``calib``, ``image_shape``,
``gt_bbox_2d``, ``dontcare_bbox_2d``, ``other_names`` / ``other_boxes`` / ``other_bbox_2d``).

**KITTI** (:class:`KittiMetric3D`, keys ``kitti/<class>_<3D|BEV|2D>_AP40_<easy|moderate|hard>`` and
``kitti/mAP40_<3D|BEV|2D>_<difficulty>``): our implementation of the official devkit protocol
(``evaluate_object_3d_offline`` / the ``kitti_object_eval_python`` port that OpenPCDet and mmdet3d
ship; ``clean_data``, ``compute_statistics_jit``, ``get_thresholds`` and ``get_mAP_R40`` were read). mmdet3d 1.4.0's evaluator was not used: with this repository's pins it does not install
(its ``numba`` needs numpy < 2.4 while the pinned opencv 5 needs numpy 2.x; pip backtracks without
end) and its ``__init__`` refuses mmdet 3.3.0. What is reproduced, per class and difficulty:

* ground truth of the class counts when its difficulty (``gt_difficulty``: 0 easy, 1 moderate, 2 hard,
  -1 none; the easiest level an object qualifies for) is at most the evaluated level, otherwise it is
  *ignored*: a detection matched to it is neither a true nor a false positive. Objects of the
  neighbouring class (Van for Car, Person_sitting for Pedestrian, from ``other_names``) are always
  ignored. Other classes do not take part.
* a detection of the class is ignored when its 2-D box (the projected 3-D box, clipped to the image)
  is lower than the level's minimum height (40 / 25 / 25 px); as in the devkit this applies to
  detections of *any* class (an ignored detection of another class can absorb a ground truth).
  Without ``calib`` / ``image_shape`` there is no height filter (and no 2D AP).
* matching per ground truth, in order: among unassigned detections with overlap > threshold (Car 0.7,
  Pedestrian 0.5, Cyclist 0.5; 3-D IoU, BEV IoU or 2-D IoU) a non-ignored one with the largest overlap,
  else the first ignored one. Duplicates are false positives. DontCare regions take detections that
  overlap them by more than the threshold (intersection over the detection's area) out of the false
  positives -- in the 2D metric only, as in the devkit (3D and BEV do not use DontCare).
* score thresholds: the scores of the true positives of a first matching pass, thinned to about 41
  recall steps (``get_thresholds``); precision at each, made non-increasing from the right; AP_R40 =
  the mean over recall positions 1/40 .. 40/40 (the 0 position excluded), in percent. A class with
  no counted ground truth gives 0, as the devkit does; the ``mAP40`` means leave such classes out.
  As in the devkit, the thresholds are the true-positive scores themselves, so with fewer than about
  80 counted objects per class AP_R40 falls short of 100 even for perfect detections (40 perfect
  objects give 97.5).

Difference to the devkit: the difficulty comes from the reader (``y2 - y1 + 1 >= 40`` px, as OpenPCDet
assigns it) where the devkit tests ``y2 - y1 > 40``; objects within one pixel of a height limit can
change level. IoUs are computed in float64 (the devkit's GPU rotated IoU is float32).

**Waymo-style** (:class:`WaymoStyleMetric`, keys ``waymo/<class>_AP_L1``, ``..._APH_L2``,
``waymo/mAP_L1``, ``waymo/mAPH_L2``): our implementation of what Waymo's metrics binary computes
(``detection_metrics.cc``, ``metrics_utils.cc`` of waymo-open-dataset), with 3-D IoU thresholds Vehicle
0.7, Pedestrian 0.5, Cyclist 0.5. As there, the difficulty level only decides false negatives: every
prediction matched to a box of its class is a true positive (also a LEVEL_2 box at LEVEL_1), a box
missed counts at its level and above. Ground truth without points (``gt_num_points == 0``) and boxes
farther than 100.5 m are dropped, as OpenPCDet's Waymo evaluation does. The precision / recall curve has
one point per score cutoff (default 0, 0.01, ..., 0.99, 1, OpenPCDet's configuration of the binary;
recall 0 gives precision 1),
and AP is the binary's integration (best precision at the same or a higher recall, recall gaps wider
than 0.05 filled conservatively, trapezoids). APH weights each true positive by its heading accuracy
``1 - |dtheta| / pi`` (dtheta wrapped into [0, pi]) in the precision; a match of heading accuracy 0 is
neither true nor false positive, as in the binary. Matching per frame, class and score cutoff: the
assignment maximising the summed IoU over pairs with IoU >= threshold (the binary's default Hungarian
matcher, here scipy's ``linear_sum_assignment``), or ``matcher='score_first'`` (the binary's
``TYPE_SCORE_FIRST``: by descending score, each prediction takes the free box of highest IoU).
Differences: the binary quantises IoUs before its assignment (exact ties can resolve differently), it
does not count predictions overlapping a no-label zone as false positives (not handled here), and the
IoU is ours (float64, :mod:`visionattn.ops.rotated_box_iou`). docs/scatterformer.md lists them.
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from ..datasets.lidar_formats import boxes_to_image_bbox
from ..ops.rotated_box_iou import boxes_iou_3d, boxes_iou_bev
from ..registry import METRICS

KITTI_DIFFICULTIES = ("easy", "moderate", "hard")
KITTI_MIN_HEIGHT = (40.0, 25.0, 25.0)  # px, per difficulty: detections lower than this are ignored
KITTI_MIN_OVERLAP = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
KITTI_NEIGHBOURS = {"Car": ("Van",), "Pedestrian": ("Person_sitting",)}
KITTI_METRICS = ("3D", "BEV", "2D")
WAYMO_MIN_OVERLAP = {"Vehicle": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5, "Car": 0.7}


# --- geometry ----------------------------------------------------------------------------------------

def box_iou_2d(a: np.ndarray, b: np.ndarray, over_first: bool = False) -> np.ndarray:
    """(N, 4), (M, 4) ``x1 y1 x2 y2`` -> (N, M) IoU (the devkit's areas, no +1), or with ``over_first``
    intersection over the area of the box of ``a`` (how DontCare regions are tested)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    union = area_a if over_first else area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _iou(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fn = boxes_iou_3d if kind == "3D" else boxes_iou_bev
    return fn(torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))).numpy()


def heading_accuracy(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Waymo's heading accuracy ``1 - |dtheta| / pi`` with dtheta wrapped into [-pi, pi]."""
    diff = np.abs((np.asarray(pred) - np.asarray(gt) + math.pi) % (2 * math.pi) - math.pi)
    return 1.0 - diff / math.pi


# --- KITTI matching ----------------------------------------------------------------------------------

def kitti_tp_scores(overlap: np.ndarray, gt_ignore: np.ndarray, det_ignore: np.ndarray, scores: np.ndarray,
                    min_overlap: float) -> Tuple[np.ndarray, int]:
    """First devkit pass on one frame (no score threshold): scores of the true positives and the number of
    counted ground truths. ``overlap`` (D, G); ``gt_ignore`` (G,) / ``det_ignore`` (D,): 0 counted,
    1 ignored, -1 not taking part. Each ground truth takes the highest-scoring free detection above
    ``min_overlap``."""
    assigned = np.zeros(len(scores), bool)
    usable = det_ignore != -1
    out = []
    for i in np.flatnonzero(gt_ignore != -1):
        cand = usable & ~assigned & (overlap[:, i] > min_overlap)
        if not cand.any():
            continue
        j = int(np.argmax(np.where(cand, scores, -np.inf)))
        assigned[j] = True
        if gt_ignore[i] == 0 and det_ignore[j] == 0:
            out.append(scores[j])
    return np.asarray(out, np.float64), int((gt_ignore == 0).sum())


def kitti_counts(overlap: np.ndarray, gt_ignore: np.ndarray, det_ignore: np.ndarray, scores: np.ndarray,
                 thresholds: np.ndarray, min_overlap: float, dontcare_overlap: Optional[np.ndarray] = None
                 ) -> np.ndarray:
    """Devkit matching of one frame at every score threshold at once: (T, 3) true positives, false
    positives, false negatives. ``dontcare_overlap`` (D, K): intersection over the detection's area with
    each DontCare region (2D metric only)."""
    thresholds = np.asarray(thresholds, np.float64)
    n_t = len(thresholds)
    if len(scores) == 0:
        return np.tile([0, 0, int((gt_ignore == 0).sum())], (n_t, 1)).astype(np.int64)
    active = (scores[None, :] >= thresholds[:, None]) & (det_ignore != -1)[None, :]  # (T, D)
    assigned = np.zeros_like(active)
    tp, fn = np.zeros(n_t, np.int64), np.zeros(n_t, np.int64)
    rows = np.arange(n_t)
    counted_det, ignored_det = (det_ignore == 0)[None, :], (det_ignore == 1)[None, :]
    for i in np.flatnonzero(gt_ignore != -1):
        cand = active & ~assigned & (overlap[:, i] > min_overlap)[None, :]
        cand0, cand1 = cand & counted_det, cand & ignored_det
        has0, has1 = cand0.any(1), cand1.any(1)
        best0 = np.where(cand0, overlap[None, :, i], -1.0).argmax(1)  # counted: the largest overlap (first on ties)
        first1 = cand1.argmax(1)  # else the first ignored one
        pick = np.where(has0, best0, first1)
        found = has0 | has1
        assigned[rows[found], pick[found]] = True
        if gt_ignore[i] == 0:
            fn += ~found
            tp += has0
    fp = (active & ~assigned & counted_det).sum(1)
    if dontcare_overlap is not None and dontcare_overlap.size:
        for k in range(dontcare_overlap.shape[1]):
            taken = active & ~assigned & counted_det & (dontcare_overlap[:, k] > min_overlap)[None, :]
            fp -= taken.sum(1)
            assigned |= taken
    return np.stack([tp, fp, fn], 1)


def kitti_thresholds(tp_scores: np.ndarray, num_gt: int, num_points: int = 41) -> np.ndarray:
    """The devkit's ``get_thresholds``: true-positive scores (descending) kept where the recall reaches the
    next of ``num_points - 1`` equal steps."""
    scores = np.sort(np.asarray(tp_scores, np.float64))[::-1]
    kept, current = [], 0.0
    for i, s in enumerate(scores):
        left = (i + 1) / num_gt
        right = (i + 2) / num_gt if i < len(scores) - 1 else left
        if right - current < current - left and i < len(scores) - 1:
            continue
        kept.append(s)
        current += 1.0 / (num_points - 1)
    return np.asarray(kept, np.float64)


def ap_r40(counts: np.ndarray) -> float:
    """(T, 3) tp/fp/fn per threshold (descending thresholds) -> AP over recall positions 1/40..40/40, in %."""
    precision = np.zeros(41)
    if len(counts):
        tp, fp = counts[:, 0].astype(np.float64), counts[:, 1].astype(np.float64)
        p = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        precision[:len(p)] = np.maximum.accumulate(p[::-1])[::-1]
    return float(precision[1:].sum() / 40 * 100)


# --- sample handling ---------------------------------------------------------------------------------

def _np(x, dtype=None, shape_tail=None) -> np.ndarray:
    if x is None:
        out = np.zeros((0,) + tuple(shape_tail or ()), dtype or np.float64)
    elif isinstance(x, torch.Tensor):
        out = x.detach().cpu().numpy()
    else:
        out = np.asarray(x)
    if dtype is not None:
        out = out.astype(dtype)
    if shape_tail is not None:
        out = out.reshape((-1,) + tuple(shape_tail))
    return out


def _predictions(sample: Mapping) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = sample.get("pred_instances_3d")
    if pred is None:
        raise ValueError(f"frame {sample.get('frame_id', '?')!r} has no 'pred_instances_3d': the metric reads the "
                         "output of the detector's forward(..., mode='predict')")
    return (_np(pred["bboxes_3d"], np.float64, (7,)), _np(pred["scores_3d"], np.float64).reshape(-1),
            _np(pred["labels_3d"], np.int64).reshape(-1))


def _frame_row(sample: Mapping) -> Dict:
    """One frame's predictions and ground truth as arrays (what both metrics keep per frame)."""
    boxes, scores, labels = _predictions(sample)
    gt_boxes = _np(sample.get("gt_boxes"), np.float64, (7,))
    row = dict(frame_id=sample.get("frame_id"), class_names=(sample.get("metainfo") or {}).get("class_names"),
               boxes=boxes, scores=scores, labels=labels, gt_boxes=gt_boxes,
               gt_labels=_np(sample.get("gt_labels"), np.int64).reshape(-1),
               gt_difficulty=_np(sample.get("gt_difficulty"), np.int64).reshape(-1))
    if len(row["gt_labels"]) != len(gt_boxes) or len(row["gt_difficulty"]) != len(gt_boxes):
        raise ValueError(f"frame {row['frame_id']!r}: {len(gt_boxes)} gt_boxes but "
                         f"{len(row['gt_labels'])} gt_labels and {len(row['gt_difficulty'])} gt_difficulty")
    return row


def _class_names(given: Optional[Sequence[str]], results: List[Dict], metric: str) -> Tuple[str, ...]:
    names = given or next((r["class_names"] for r in results if r.get("class_names")), None)
    if not names:
        raise ValueError(f"{metric}: no class names: pass class_names=(...) or give the frames "
                         "metainfo['class_names']")
    return tuple(names)


@METRICS.register_module()
class KittiMetric3D(BaseMetric):
    """KITTI 3D / BEV (and 2D, when every frame has ``calib`` and ``gt_bbox_2d``) AP_R40 for easy,
    moderate and hard (module docstring for the protocol).

    Args:
        class_names: the classes the labels index (default: ``metainfo['class_names']`` of the frames).
        min_overlap: IoU threshold per class name (default Car 0.7, Pedestrian 0.5, Cyclist 0.5).
        metrics: any of ``'3D'``, ``'BEV'``, ``'2D'``.
    """

    default_prefix = "kitti"

    def __init__(self, class_names: Optional[Sequence[str]] = None, min_overlap: Optional[Mapping[str, float]] = None,
                 metrics: Sequence[str] = KITTI_METRICS, **kwargs):
        super().__init__(**kwargs)
        bad = [m for m in metrics if m not in KITTI_METRICS]
        if bad:
            raise ValueError(f"KittiMetric3D: unknown metrics {bad}; choose from {KITTI_METRICS}")
        self.class_names = tuple(class_names) if class_names else None
        self.min_overlap = dict(KITTI_MIN_OVERLAP, **(min_overlap or {}))
        self.metrics = tuple(metrics)

    def process(self, data_batch, data_samples: Sequence[Mapping]) -> None:
        for s in data_samples:
            row = _frame_row(s)
            row.update(other_names=[str(n) for n in (s.get("other_names") or [])],
                       other_boxes=_np(s.get("other_boxes"), np.float64, (7,)),
                       other_difficulty=_np(s.get("other_difficulty"), np.int64).reshape(-1))
            calib, shape = s.get("calib"), s.get("image_shape")
            if calib is not None and shape is not None:
                row["pred_bbox_2d"] = boxes_to_image_bbox(row["boxes"], calib, shape)[0]
                if s.get("gt_bbox_2d") is not None:
                    row["gt_bbox_2d"] = _np(s["gt_bbox_2d"], np.float64, (4,))
                    row["other_bbox_2d"] = _np(s.get("other_bbox_2d"), np.float64, (4,))
                    row["dontcare_bbox_2d"] = _np(s.get("dontcare_bbox_2d"), np.float64, (4,))
            self.results.append(row)

    def compute_metrics(self, results: List[Dict]) -> Dict[str, float]:
        names = _class_names(self.class_names, results, "KittiMetric3D")
        metrics = [m for m in self.metrics if m != "2D" or all("gt_bbox_2d" in r for r in results)]
        if not all("pred_bbox_2d" in r for r in results):
            MMLogger.get_current_instance().warning(
                "KittiMetric3D: some frames have no calib/image_shape: no minimum-height filter on their detections")
        out: Dict[str, float] = {}
        for kind in metrics:
            overlaps = [self._overlaps(kind, r) for r in results]
            present = {level: [] for level in range(3)}
            for c, name in enumerate(names):
                for level in range(3):
                    frames = [self._ignores(r, ov, c, name, level) for r, ov in zip(results, overlaps)]
                    ap, num_gt = self._ap(frames, name)
                    out[f"{name}_{kind}_AP40_{KITTI_DIFFICULTIES[level]}"] = ap
                    if num_gt:
                        present[level].append(ap)
            for level, diff in enumerate(KITTI_DIFFICULTIES):
                out[f"mAP40_{kind}_{diff}"] = float(np.mean(present[level])) if present[level] else 0.0
        return out

    @staticmethod
    def _overlaps(kind: str, r: Dict) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(D, G + O) overlaps of all detections with the frame's ground truth then its other objects,
        and (2D) the DontCare overlaps."""
        if kind == "2D":
            gts = np.concatenate([r["gt_bbox_2d"], r["other_bbox_2d"]])
            return box_iou_2d(r["pred_bbox_2d"], gts), box_iou_2d(r["pred_bbox_2d"], r["dontcare_bbox_2d"], True)
        return _iou(kind, r["boxes"], np.concatenate([r["gt_boxes"], r["other_boxes"]])), None

    @staticmethod
    def _ignores(r: Dict, overlaps, c: int, name: str, level: int):
        gt_ignore = np.where(r["gt_labels"] == c, np.where((r["gt_difficulty"] >= 0) & (r["gt_difficulty"] <= level),
                                                           0, 1), -1)
        neighbour = np.isin(np.asarray(r["other_names"], dtype=object), KITTI_NEIGHBOURS.get(name, ()))
        gt_ignore = np.concatenate([gt_ignore, np.where(neighbour, 1, -1)]).astype(np.int64)
        det_ignore = np.where(r["labels"] == c, 0, -1)
        if "pred_bbox_2d" in r:
            height = np.abs(r["pred_bbox_2d"][:, 3] - r["pred_bbox_2d"][:, 1])
            det_ignore = np.where(height < KITTI_MIN_HEIGHT[level], 1, det_ignore)
        return overlaps[0], gt_ignore, det_ignore.astype(np.int64), r["scores"], overlaps[1]

    def _ap(self, frames, name: str) -> Tuple[float, int]:
        """(AP_R40 in %, number of counted ground truths) of one class, level and overlap kind."""
        if name not in self.min_overlap:
            raise ValueError(f"KittiMetric3D: no IoU threshold for class {name!r}; pass min_overlap={{{name!r}: ...}}")
        thr = self.min_overlap[name]
        scores, num_gt = [], 0
        for overlap, gt_ignore, det_ignore, det_scores, _ in frames:
            s, n = kitti_tp_scores(overlap, gt_ignore, det_ignore, det_scores, thr)
            scores.append(s)
            num_gt += n
        if num_gt == 0:
            return 0.0, 0
        thresholds = kitti_thresholds(np.concatenate(scores), num_gt)
        counts = sum(kitti_counts(o, gi, di, sc, thresholds, thr, dc) for o, gi, di, sc, dc in frames)
        return ap_r40(counts), num_gt


# --- Waymo-style ---------------------------------------------------------------------------------------

WAYMO_SCORE_CUTOFFS = tuple(np.append(np.arange(100) * 0.01, 1.0))  # OpenPCDet's configuration of the binary


def waymo_frame_match(iou: np.ndarray, scores: np.ndarray, min_overlap: float) -> np.ndarray:
    """Score-first matching of one frame and class (the binary's ``TYPE_SCORE_FIRST``): (P,) index of the
    matched ground truth, -1 for none. Predictions in descending score take the free ground truth of
    highest IoU >= ``min_overlap``. It is nested: the matches of the predictions above a score cutoff are
    the matching of that cutoff. Predictions overlapping nothing skip the loop."""
    match = np.full(len(scores), -1, np.int64)
    if iou.size == 0:
        return match
    hit = iou >= min_overlap
    taken = np.zeros(iou.shape[1], bool)
    for j in np.argsort(-scores, kind="stable"):
        free = hit[j] & ~taken
        if free.any():
            i = int(np.argmax(np.where(free, iou[j], -1.0)))
            taken[i] = True
            match[j] = i
    return match


def waymo_frame_match_hungarian(iou: np.ndarray, scores: np.ndarray, cutoffs: np.ndarray, min_overlap: float
                                ) -> np.ndarray:
    """The binary's default ``TYPE_HUNGARIAN`` matching, once per score cutoff: (K, P) index of the ground
    truth matched to each prediction at each cutoff, -1 for none or below the cutoff. The assignment
    maximises the summed IoU over pairs with IoU >= ``min_overlap`` (scipy's ``linear_sum_assignment``;
    the binary quantises the IoU first, so exact ties may resolve differently)."""
    from scipy.optimize import linear_sum_assignment

    out = np.full((len(cutoffs), len(scores)), -1, np.int64)
    if iou.size == 0:
        return out
    weight = np.where(iou >= min_overlap, iou, 0.0)
    useful = weight.max(1) > 0  # predictions that can match something
    above = scores[None, :] >= cutoffs[:, None]
    solved = {}
    for k in range(len(cutoffs)):
        rows = np.flatnonzero(above[k] & useful)
        key = rows.tobytes()
        if key not in solved:
            match = np.full(len(scores), -1, np.int64)
            if len(rows):
                r, c = linear_sum_assignment(weight[rows], maximize=True)
                ok = weight[rows[r], c] > 0
                match[rows[r[ok]]] = c[ok]
            solved[key] = match
        out[k] = solved[key]
    return out


def waymo_average_precision(precision: np.ndarray, recall: np.ndarray, recall_delta: float = 0.05) -> float:
    """Area under a precision / recall curve as Waymo's ``ComputeMeanAveragePrecision`` takes it: points
    (0, 1) and (1, 0) added, precision made non-increasing with recall (the best at the same or a higher
    recall), gaps in recall wider than ``recall_delta`` filled with conservative points, the precision at
    recall 0 set to that of the next point, trapezoid integration."""
    best = {0.0: 1.0, 1.0: 0.0}
    for p, r in zip(np.asarray(precision, np.float64), np.asarray(recall, np.float64)):
        best[float(r)] = max(best.get(float(r), 0.0), float(p))
    points = []  # (recall, precision), recall descending
    last, top = 1.0, 0.0
    for r in sorted(best, reverse=True):
        while last - r > recall_delta + 1e-6:
            last -= recall_delta
            points.append((last, top))
        top = max(top, best[r])
        points.append((r, top))
        last = r
    points[-1] = (points[-1][0], points[-2][1])
    r_, p_ = np.array(points).T
    return float((0.5 * (r_[:-1] - r_[1:]) * (p_[:-1] + p_[1:])).sum())


@METRICS.register_module()
class WaymoStyleMetric(BaseMetric):
    """Waymo-style 3-D AP / APH at LEVEL_1 and LEVEL_2, per class and their mean (module docstring).

    Args:
        class_names: the classes the labels index (default: ``metainfo['class_names']`` of the frames).
        min_overlap: 3-D IoU threshold per class name (default Vehicle 0.7, Pedestrian 0.5, Cyclist 0.5).
        score_cutoffs: the points of the precision / recall curve (default 0, 0.01, ..., 0.99, 1).
        recall_delta: widest recall gap left unfilled in the AP integration (Waymo's default 0.05).
        matcher: ``'hungarian'`` (the binary's default, OpenPCDet's configuration; an assignment per score
            cutoff) or ``'score_first'`` (the binary's ``TYPE_SCORE_FIRST``: greedy by score, one pass).
        distance_thresh: predictions and ground truth whose centre is farther than this + 0.5 m from the
            sensor (in x, y) are left out, as OpenPCDet's Waymo evaluation does (default 100).

    Values are in percent; a class without ground truth at a level reports NaN and is left out of the mean.
    """

    default_prefix = "waymo"

    def __init__(self, class_names: Optional[Sequence[str]] = None, min_overlap: Optional[Mapping[str, float]] = None,
                 score_cutoffs: Sequence[float] = WAYMO_SCORE_CUTOFFS, recall_delta: float = 0.05,
                 matcher: str = "hungarian", distance_thresh: float = 100.0, **kwargs):
        super().__init__(**kwargs)
        if matcher not in ("hungarian", "score_first"):
            raise ValueError(f"WaymoStyleMetric: matcher must be 'hungarian' or 'score_first', got {matcher!r}")
        self.matcher = matcher
        self.distance_thresh = float(distance_thresh)
        self.class_names = tuple(class_names) if class_names else None
        self.min_overlap = dict(WAYMO_MIN_OVERLAP, **(min_overlap or {}))
        self.score_cutoffs = np.sort(np.asarray(score_cutoffs, np.float64))
        if not 0 < recall_delta <= 1:
            raise ValueError(f"WaymoStyleMetric: recall_delta must be in (0, 1], got {recall_delta}")
        self.recall_delta = float(recall_delta)

    def process(self, data_batch, data_samples: Sequence[Mapping]) -> None:
        for s in data_samples:
            row = _frame_row(s)
            keep = np.linalg.norm(row["gt_boxes"][:, :2], axis=1) < self.distance_thresh + 0.5
            if s.get("gt_num_points") is not None:
                keep &= _np(s["gt_num_points"], np.int64).reshape(-1) > 0
            for key in ("gt_boxes", "gt_labels", "gt_difficulty"):
                row[key] = row[key][keep]
            near = np.linalg.norm(row["boxes"][:, :2], axis=1) < self.distance_thresh + 0.5
            for key in ("boxes", "scores", "labels"):
                row[key] = row[key][near]
            self.results.append(row)

    def _class_counts(self, results: List[Dict], c: int, name: str) -> Dict[str, np.ndarray]:
        """Per score cutoff, summed over frames: tp, fp, heading-accuracy sum, and per level the false negatives."""
        cutoffs = self.score_cutoffs
        total = dict(tp=np.zeros(len(cutoffs)), fp=np.zeros(len(cutoffs)), ha=np.zeros(len(cutoffs)),
                     fn1=np.zeros(len(cutoffs)), fn2=np.zeros(len(cutoffs)))
        for r in results:
            pm, gm = r["labels"] == c, r["gt_labels"] == c
            boxes, scores, gts, level = r["boxes"][pm], r["scores"][pm], r["gt_boxes"][gm], r["gt_difficulty"][gm]
            iou = _iou("3D", boxes, gts)
            above = scores[None, :] >= cutoffs[:, None]  # (K, P)
            if self.matcher == "hungarian":
                match = waymo_frame_match_hungarian(iou, scores, cutoffs, self.min_overlap[name])
            else:
                match = np.where(above, waymo_frame_match(iou, scores, self.min_overlap[name])[None, :], -1)
            matched = match >= 0  # (K, P), only predictions above the cutoff
            accuracy = np.zeros(match.shape)
            if matched.any():
                k, j = np.nonzero(matched)
                accuracy[k, j] = heading_accuracy(boxes[j, 6], gts[match[k, j], 6])
            # the binary skips true positives of heading accuracy <= 0 (neither TP nor FP)
            tp = matched & (accuracy > 0)
            total["tp"] += tp.sum(1)
            total["ha"] += (tp * accuracy).sum(1)
            total["fp"] += (above & ~matched).sum(1)
            found = np.zeros((len(cutoffs), len(gts)), bool)  # ground truth matched at each cutoff
            k, j = np.nonzero(matched)
            found[k, match[k, j]] = True
            for lv in (1, 2):  # a missed box counts at its level and above
                total[f"fn{lv}"] += (~found & (level <= lv)[None, :]).sum(1)
        return total

    def compute_metrics(self, results: List[Dict]) -> Dict[str, float]:
        names = _class_names(self.class_names, results, "WaymoStyleMetric")
        out: Dict[str, float] = {}
        for c, name in enumerate(names):
            if name not in self.min_overlap:
                raise ValueError(f"WaymoStyleMetric: no IoU threshold for class {name!r}; "
                                 f"pass min_overlap={{{name!r}: ...}}")
            t = self._class_counts(results, c, name)
            has_gt = {lv: sum(int(((r["gt_labels"] == c) & (r["gt_difficulty"] <= lv)).sum()) for r in results) > 0
                      for lv in (1, 2)}
            for lv in (1, 2):
                if not has_gt[lv]:
                    out[f"{name}_AP_L{lv}"] = out[f"{name}_APH_L{lv}"] = float("nan")
                    continue
                tp, fp, fn, ha = t["tp"], t["fp"], t[f"fn{lv}"], t["ha"]
                recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
                precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
                precision_h = np.where(tp + fp > 0, ha / np.maximum(tp + fp, 1), 0.0)
                precision, precision_h = np.where(recall == 0, 1.0, precision), np.where(recall == 0, 1.0, precision_h)
                out[f"{name}_AP_L{lv}"] = 100 * waymo_average_precision(precision, recall, self.recall_delta)
                out[f"{name}_APH_L{lv}"] = 100 * waymo_average_precision(precision_h, recall, self.recall_delta)
        for lv in (1, 2):
            for kind in ("AP", "APH"):
                values = [out[f"{n}_{kind}_L{lv}"] for n in names if not math.isnan(out[f"{n}_{kind}_L{lv}"])]
                out[f"m{kind}_L{lv}"] = float(np.mean(values)) if values else float("nan")
        return out
