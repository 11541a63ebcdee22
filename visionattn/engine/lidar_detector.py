"""LiDAR 3-D detection as an mmengine task model: a ScatterFormer network + OpenPCDet's CenterHead loss.

Declared lazy (needs the ``3d`` extra, spconv): mmengine builds it by name (``type='ScatterFormerDetector'``)
and the registry imports this module then.

Batches (``lidar_collate``): ``inputs`` = ``dict(points=(sum N, 1 + C) float32 with column 0 the frame
index, batch_size=B)``; ``data_samples`` = a list of B per-frame dicts with ``gt_boxes`` (M, 7)
``[x, y, z, dx, dy, dz, heading]`` (box centres, LiDAR frame, metres) and ``gt_labels`` (M,) int64
indexing the network's ``class_names``. :class:`LidarDataPreprocessor` (the default) also accepts a
list of uncollated frames ``{'points': (N, C), 'data_samples': {...}}`` and collates it.
"""
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor

from ..inference import predict_boxes_3d
from ..models.detection3d import sparse_backend  # noqa: F401  (raises the 3d-extra message without a sparse library)
from ..models.detection3d.center_head_loss import CenterHeadLoss
from ..registry import MODELS
from .task_model import MODES, TaskModel


def collate_frames(frames: Sequence[Mapping]) -> Dict:
    """Frames ``{'points': (N_i, C), 'data_samples': {...}}`` -> ``{'inputs': {'points': (sum N_i, 1 + C)
    with the frame index in column 0, 'batch_size': B}, 'data_samples': [...]}``."""
    points = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, Mapping) or "points" not in frame:
            raise ValueError(f"frame {i} of the batch must be a dict with 'points' (N, C) and 'data_samples', "
                             f"got {type(frame).__name__} {sorted(frame) if isinstance(frame, Mapping) else ''}")
        p = torch.as_tensor(frame["points"], dtype=torch.float32)
        points.append(torch.cat([p.new_full((len(p), 1), float(i)), p], 1))
    return dict(inputs=dict(points=torch.cat(points), batch_size=len(frames)),
                data_samples=[dict(f.get("data_samples") or {}) for f in frames])


@MODELS.register_module()
class LidarDataPreprocessor(BaseDataPreprocessor):
    """Moves a LiDAR batch to the model's device; a list of uncollated frames is collated first
    (:func:`collate_frames`). Point clouds keep their own sizes: nothing is padded or stacked."""

    def forward(self, data: Union[Mapping, Sequence], training: bool = False) -> Dict:
        if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
            data = collate_frames(data)
        if not isinstance(data, Mapping) or "inputs" not in data:
            raise ValueError(f"a LiDAR batch must be {{'inputs': {{'points', 'batch_size'}}, 'data_samples': [...]}} "
                             f"(lidar_collate) or a list of frames; got {type(data).__name__}")
        return self.cast_data(dict(data))


@MODELS.register_module()
class ScatterFormerDetector(TaskModel):
    """A LiDAR detector network (``scatterformer_waymo``, ``scatterformer_kitti``) for mmengine's Runner.

    Args:
        network: ``dict(name='scatterformer_waymo', **overrides)`` (any constructor argument, e.g.
            ``point_cloud_range``), a name with ``network_kwargs``, or an nn.Module.
        max_objects, gaussian_overlap, min_radius: the CenterHead's target assignment (Waymo config:
            500, 0.1, 2); the BEV stride comes from the network.
        cls_weight, loc_weight, code_weights, iou_reg_loss: loss weights (Waymo config: 1, 2, eight 1s,
            DIoU regression on); see :class:`visionattn.models.detection3d.center_head_loss.CenterHeadLoss`.

    Modes: ``'loss'`` -> ``{'hm_loss', 'loc_loss', 'iou_loss', 'iou_reg_loss'}`` (mmengine sums them);
    ``'predict'`` -> the data_samples (one dict per frame) with ``pred_instances_3d`` = ``dict(bboxes_3d
    (n, 7) float32, scores_3d (n,), labels_3d (n,) int64)`` on the CPU; ``'tensor'`` -> the head maps
    (one dict of (B, c, H, W) maps per class group).
    """

    default_data_preprocessor = dict(type="LidarDataPreprocessor")

    def __init__(self, network: Union[str, Mapping, nn.Module] = "scatterformer_waymo",
                 network_kwargs: Optional[Mapping] = None, *, pretrained: bool = False,
                 checkpoint: Optional[str] = None, max_objects: int = 500, gaussian_overlap: float = 0.1,
                 min_radius: int = 2, cls_weight: float = 1.0, loc_weight: float = 2.0,
                 code_weights: Optional[Sequence[float]] = None, iou_reg_loss: bool = True,
                 data_preprocessor: Union[None, Dict, nn.Module] = None, init_cfg: Optional[Dict] = None):
        super().__init__(network, network_kwargs, pretrained=pretrained, checkpoint=checkpoint,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        net = self.network
        missing = [a for a in ("point_cloud_range", "voxel_size", "class_names", "dense_head", "decoder")
                   if not hasattr(net, a)]
        if missing:
            raise ValueError(f"ScatterFormerDetector needs a CenterHead LiDAR network (scatterformer_*); "
                             f"{type(net).__name__} has no {missing}")
        self.criterion = CenterHeadLoss(net.point_cloud_range, net.voxel_size, net.decoder.stride, net.class_names,
                                        net.dense_head.class_groups, max_objects=max_objects,
                                        gaussian_overlap=gaussian_overlap, min_radius=min_radius,
                                        cls_weight=cls_weight, loc_weight=loc_weight, code_weights=code_weights,
                                        iou_reg_loss=iou_reg_loss)

    # --- batch -----------------------------------------------------------------------------------

    def _points(self, inputs: Union[Mapping, torch.Tensor, Sequence[torch.Tensor]],
                data_samples: Optional[Sequence]) -> tuple:
        """(points (N, 1 + C) float32, batch size) from the collated inputs dict, a points tensor with
        the frame-index column, or a list of per-frame (N_i, C) tensors."""
        if isinstance(inputs, Mapping):
            if "points" not in inputs:
                raise ValueError(f"inputs must hold 'points' (N, 1 + C) and 'batch_size', got keys {sorted(inputs)}")
            points, batch_size = inputs["points"], inputs.get("batch_size")
        elif isinstance(inputs, torch.Tensor):
            points, batch_size = inputs, None
        elif isinstance(inputs, Sequence):
            collated = collate_frames([dict(points=p) for p in inputs])["inputs"]
            points, batch_size = collated["points"], collated["batch_size"]
        else:
            raise ValueError(f"inputs must be dict(points=..., batch_size=...), a (N, 1 + C) tensor or a list of "
                             f"(N_i, C) tensors; got {type(inputs).__name__}")
        if batch_size is None:
            batch_size = len(data_samples) if data_samples is not None else None
        return points.float(), (None if batch_size is None else int(batch_size))

    @staticmethod
    def _samples(data_samples: Union[None, Mapping, Sequence[Mapping]], batch_size: int) -> List[Dict]:
        if data_samples is None:
            return [{} for _ in range(batch_size)]
        if isinstance(data_samples, Mapping):  # one dict of per-frame lists (pseudo_collate)
            sizes = {len(v) for v in data_samples.values() if isinstance(v, (list, tuple))}
            if sizes != {batch_size}:
                raise ValueError(f"batched data_samples must hold {batch_size} values per field, got sizes {sizes}")
            return [{k: v[i] for k, v in data_samples.items()} for i in range(batch_size)]
        samples = list(data_samples)
        if len(samples) != batch_size:
            raise ValueError(f"{len(samples)} data_samples for a batch of {batch_size} point clouds")
        return [dict(s) for s in samples]

    # --- modes -----------------------------------------------------------------------------------

    def forward(self, inputs, data_samples=None, mode: str = "tensor"):
        """``inputs``: ``dict(points, batch_size)``, a (N, 1 + C) points tensor with the frame-index column or a
        list of per-frame (N_i, C) tensors; ``data_samples``: a list of per-frame dicts (or None)."""
        if mode not in MODES:
            raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")
        points, batch_size = self._points(inputs, data_samples)
        if batch_size is None:
            batch_size = int(points[:, 0].max().item()) + 1 if len(points) else 1
        batch = dict(points=points, batch_size=batch_size)
        if mode == "tensor":
            return self._forward(batch)
        samples = self._samples(data_samples, batch_size)
        return self.loss(batch, samples) if mode == "loss" else self.predict(batch, samples)

    def _forward(self, batch: Dict) -> List[Dict[str, torch.Tensor]]:
        return self.network(batch["points"], batch["batch_size"])

    def loss(self, batch: Dict, samples: List[Dict]) -> Dict[str, torch.Tensor]:
        for i, s in enumerate(samples):
            if "gt_boxes" not in s or "gt_labels" not in s:
                raise ValueError(f"data_samples[{i}] needs 'gt_boxes' (M, 7) and 'gt_labels' (M,) for mode='loss'; "
                                 f"it has {sorted(s)}")
        maps = self.train_network()(batch["points"], batch["batch_size"])
        device = maps[0]["hm"].device
        boxes = [torch.as_tensor(s["gt_boxes"], dtype=torch.float32, device=device) for s in samples]
        boxes = [b.reshape(-1, 7) if b.dim() < 2 else b[:, :7] for b in boxes]  # (M, 7+): extra columns unused
        labels = [torch.as_tensor(s["gt_labels"], dtype=torch.long, device=device).reshape(-1) for s in samples]
        return self.criterion(maps, boxes, labels)

    def predict(self, batch: Dict, samples: List[Dict]) -> List[Dict]:
        dets = predict_boxes_3d(self.network, batch["points"], batch_size=batch["batch_size"])
        for sample, det in zip(samples, dets):
            sample["pred_instances_3d"] = dict(bboxes_3d=det["boxes"].detach().float().cpu(),
                                               scores_3d=det["scores"].detach().float().cpu(),
                                               labels_3d=det["labels"].detach().long().cpu())
        return samples
