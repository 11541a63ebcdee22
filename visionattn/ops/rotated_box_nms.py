"""Non-maximum suppression of rotated 3D boxes by BEV IoU, in PyTorch on any device.

Greedy NMS as OpenPCDet's ``nms_gpu``: boxes in descending score order (ties by index); a box is
dropped when its BEV IoU with an earlier kept box is above the threshold. The greedy pass is run
on the whole "above threshold" matrix at once: ``keep_j = no earlier kept i overlaps j``, iterated
from "keep all" until nothing changes. Its only fixed point is the greedy result (each ``keep_j``
is fixed once the earlier ones are), reached after as many rounds as the longest chain of boxes
suppressing one another; past 32 rounds the remaining pass runs box by box on the CPU.

One implementation, ``"reference"`` (this PyTorch code, CPU and GPU); :func:`rotated_box_nms` takes
``impl`` for the op-module contract shared with :mod:`tools.benchmark`.
"""
from numbers import Integral, Real
from typing import Optional, Sequence, Tuple, Union

import torch

from ._checks import check_int, check_number, check_tensors
from .dispatch import pick
from .rotated_box_iou import boxes_iou_bev, detections

IMPLS: Tuple[str, ...] = ("reference",)

_ROUNDS = 32


def _greedy(over: torch.Tensor) -> torch.Tensor:
    """over (K, K) bool, over[i, j] = i comes before j and overlaps it above the threshold -> (K,) keep."""
    keep = torch.ones(over.shape[0], dtype=torch.bool, device=over.device)
    for _ in range(_ROUNDS):
        new = ~(over & keep[:, None]).any(0)
        if torch.equal(new, keep):
            return keep
        keep = new
    over_cpu, keep = over.cpu(), torch.ones(over.shape[0], dtype=torch.bool)
    for i in range(over.shape[0]):  # sequential greedy
        if keep[i]:
            keep &= ~over_cpu[i]
    return keep.to(over.device)


def nms_bev(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, pre_max_size: Optional[int] = None,
            post_max_size: Optional[int] = None) -> torch.Tensor:
    """Greedy NMS by BEV IoU.

    Args:
        boxes: (N, 7) (x, y, z, dx, dy, dz, heading), extra columns ignored.
        scores: (N,).
        iou_threshold: boxes overlapping a kept, higher-scored box with BEV IoU above this are dropped.
        pre_max_size: only the ``pre_max_size`` highest-scored boxes take part (OpenPCDet ``NMS_PRE_MAXSIZE``).
        post_max_size: at most this many boxes are returned.

    Returns:
        (K,) int64 indices into ``boxes`` of the kept boxes, by descending score.
    """
    check_tensors("nms_bev", dict(boxes=boxes, scores=scores), same_dtype=False)
    _check_threshold(iou_threshold)
    _check_size("pre_max_size", pre_max_size)
    _check_size("post_max_size", post_max_size)
    if scores.dim() != 1 or boxes.dim() != 2 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"nms_bev: boxes must be (N, 7) and scores (N,); got {tuple(boxes.shape)} and "
                         f"{tuple(scores.shape)}")
    order = scores.argsort(descending=True, stable=True)[:pre_max_size]
    if order.numel() == 0:
        return order
    selected = boxes[order]
    over = (boxes_iou_bev(selected, selected) > iou_threshold).triu(1)
    return order[_greedy(over)][:post_max_size]


def _check_threshold(value) -> None:
    values = [value] if isinstance(value, Real) else value
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"rotated_box_nms: iou_threshold must be a number in [0, 1] or one per class, got {value!r}")
    for i, t in enumerate(values):
        check_number("rotated_box_nms", "iou_threshold" if isinstance(value, Real) else f"iou_threshold[{i}]", t,
                     0.0, 1.0)


def _check_size(name: str, value) -> None:
    if value is None:
        return
    values = [value] if isinstance(value, Integral) else value
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"rotated_box_nms: {name} must be None, an integer >= 1 or one per class, got {value!r}")
    for i, n in enumerate(values):
        if n is not None:
            check_int("rotated_box_nms", name if values is not value else f"{name}[{i}]", n, 1)


def _per_class(value, k: int, name: str):
    if value is None or isinstance(value, Real):
        return value
    if k >= len(value):
        raise ValueError(f"class_nms_bev: {name} has {len(value)} entries but there is a label {k}")
    return value[k]


def class_nms_bev(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                  iou_threshold: Union[float, Sequence[float]],
                  pre_max_size: Union[None, int, Sequence[int]] = None,
                  post_max_size: Union[None, int, Sequence[int]] = None) -> torch.Tensor:
    """NMS within each class (boxes of different labels never suppress each other).

    Args:
        boxes, scores: as :func:`nms_bev`; labels: (N,) integer class of each box.
        iou_threshold, pre_max_size, post_max_size: one value for every class, or one per class
            (indexed by label). With per-class thresholds, as OpenPCDet's ``class_specific_nms``,
            the classes are 0 .. len(iou_threshold) - 1 and boxes of other labels are dropped.
            (That OpenPCDet function passes its post_max_size to an NMS that ignores it: leave
            ``post_max_size`` None to match it.)

    Returns:
        (K,) int64 indices into ``boxes``: the kept boxes of class 0 by descending score, then class 1, ...
    """
    check_tensors("class_nms_bev", dict(boxes=boxes, scores=scores, labels=labels), floating=False,
                  same_dtype=False)
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"class_nms_bev: labels must be integer class indices, got {labels.dtype}; cast with "
                         f"labels.long()")
    _check_threshold(iou_threshold)
    if labels.shape != scores.shape:
        raise ValueError(f"class_nms_bev: labels must be (N,) like scores; got {tuple(labels.shape)} and "
                         f"{tuple(scores.shape)}")
    if isinstance(iou_threshold, Real):
        classes = labels.unique().tolist()
    else:
        classes = range(len(iou_threshold))
    keep = [labels.new_zeros(0, dtype=torch.int64)]
    for k in classes:
        members = torch.nonzero(labels == k).flatten()
        kept = nms_bev(boxes[members], scores[members], _per_class(iou_threshold, k, "iou_threshold"),
                       _per_class(pre_max_size, k, "pre_max_size"), _per_class(post_max_size, k, "post_max_size"))
        keep.append(members[kept])
    return torch.cat(keep)


def rotated_box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: Union[float, Sequence[float]],
                    labels: Optional[torch.Tensor] = None, pre_max_size: Union[None, int, Sequence[int]] = None,
                    post_max_size: Union[None, int, Sequence[int]] = None, impl: str = "auto") -> torch.Tensor:
    """:func:`class_nms_bev` when ``labels`` are given, else :func:`nms_bev` (class-agnostic)."""
    pick("rotated_box_nms", impl, {"reference": True})
    if labels is None:
        return nms_bev(boxes, scores, iou_threshold, pre_max_size, post_max_size)
    return class_nms_bev(boxes, scores, labels, iou_threshold, pre_max_size, post_max_size)


def example_inputs(device="cpu", dtype=torch.float32, n_boxes: int = 4096) -> dict:
    """ScatterFormer's Waymo CenterHead NMS: class-specific thresholds (0.75, 0.6, 0.55), the top 4096
    boxes of each class, on synthetic detections (:func:`visionattn.ops.rotated_box_iou.detections`)."""
    boxes, scores, labels = detections(n_boxes, device=device, dtype=dtype)
    return dict(boxes=boxes, scores=scores, labels=labels, iou_threshold=[0.75, 0.6, 0.55],
                pre_max_size=[4096, 4096, 4096])
