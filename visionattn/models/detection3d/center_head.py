"""CenterPoint-style detection head with an IoU branch (OpenPCDet's ``CenterHead``), and its decoding.

The head maps a BEV feature map (B, C, H, W) to dense per-cell predictions: a class heatmap and,
at every cell, the box that would be centred there. Decoding keeps the top-scoring cells, turns
them into boxes ``[x, y, z, dx, dy, dz, heading]`` (OpenPCDet's LiDAR convention), rectifies each
score with the predicted IoU (``score^(1-a) * iou^a`` per class) and removes duplicates with
class-specific rotated NMS.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ...ops.rotated_box_nms import rotated_box_nms
from .norms import bn2d as _bn2d

# regression maps in the order they form a box (+ the iou map, which only rescores)
HEAD_CHANNELS = {"center": 2, "center_z": 1, "dim": 3, "rot": 2, "iou": 1}


class SeparateHead(nn.Module):
    """One small conv branch per output map: (num_conv - 1) x (3x3 conv-BN-ReLU), then a 3x3 conv
    with bias. The heatmap's last bias starts at -2.19 (sigmoid ~ 0.1); the others use Kaiming init."""

    def __init__(self, channels: int, outputs: Dict[str, int], num_conv: int = 2, init_bias: float = -2.19):
        super().__init__()
        self.names = list(outputs)
        for name, out_channels in outputs.items():
            layers = [nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), _bn2d(channels, relu=True))
                      for _ in range(num_conv - 1)]
            layers.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=True))
            branch = nn.Sequential(*layers)
            if name == "hm":
                nn.init.constant_(branch[-1].bias, init_bias)
            else:
                for m in branch.modules():
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight)
                        if m.bias is not None:
                            nn.init.zeros_(m.bias)
            self.add_module(name, branch)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {name: getattr(self, name)(x) for name in self.names}


class CenterHead(nn.Module):
    """Shared 3x3 conv-BN-ReLU (in -> ``shared_channels``), then one :class:`SeparateHead` per class
    group (Waymo: one group of 3 classes).

    ``forward`` returns, per group, the raw maps (B, c, H, W): ``center`` (2, offset of the centre in
    cells), ``center_z`` (1, metres), ``dim`` (3, log size), ``rot`` (2, cos/sin of the heading),
    ``iou`` (1, in [-1, 1] after training) and ``hm`` (classes of the group, logits).
    """

    def __init__(self, in_channels: int, class_names: Sequence[str], class_groups: Optional[Sequence[Sequence[str]]] = None,
                 shared_channels: int = 64, num_conv: int = 2):
        super().__init__()
        self.class_names = list(class_names)
        groups = [list(g) for g in class_groups] if class_groups else [list(class_names)]
        flat = [c for g in groups for c in g]
        if sorted(flat) != sorted(self.class_names):
            raise ValueError(f"class_groups {groups} must hold each of {self.class_names} exactly once")
        self.class_groups = groups
        self.shared_conv = nn.Sequential(nn.Conv2d(in_channels, shared_channels, 3, padding=1, bias=False),
                                         _bn2d(shared_channels, relu=True))
        self.heads_list = nn.ModuleList(
            SeparateHead(shared_channels, {**HEAD_CHANNELS, "hm": len(g)}, num_conv) for g in groups)

    def forward(self, bev: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        x = self.shared_conv(bev)
        return [head(x) for head in self.heads_list]


class CenterDecoder:
    """Raw head maps -> boxes per sample (OpenPCDet's CenterHead post-processing, IoU-rectified).

    Args:
        point_cloud_range, voxel_size: of the voxel grid; ``feature_map_stride`` cells of the grid
            per BEV cell.
        max_objects: cells kept per sample and group before filtering (top-k over all classes).
        score_threshold: minimum heatmap score.
        post_center_limit_range: (x0, y0, z0, x1, y1, z1) box centres must lie in.
        iou_rectifier: per class a; score <- score^(1-a) * clamp(iou, 0, 1)^a (None: no rectification).
        nms_thresholds: per class BEV rotated IoU above which the lower-scored box is dropped.
        nms_pre_max_size: boxes per class entering NMS (highest scores).
    """

    def __init__(self, point_cloud_range: Sequence[float], voxel_size: Sequence[float], feature_map_stride: int,
                 class_names: Sequence[str], class_groups: Sequence[Sequence[str]], max_objects: int = 500,
                 score_threshold: float = 0.1, post_center_limit_range: Optional[Sequence[float]] = None,
                 iou_rectifier: Optional[Sequence[float]] = None, nms_thresholds: Sequence[float] = (),
                 nms_pre_max_size: int = 4096):
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.voxel_size = [float(v) for v in voxel_size]
        self.stride = feature_map_stride
        self.class_names = list(class_names)
        self.group_labels = [[self.class_names.index(c) for c in g] for g in class_groups]
        self.max_objects = max_objects
        self.score_threshold = score_threshold
        self.limit = list(post_center_limit_range) if post_center_limit_range is not None else None
        n = len(self.class_names)
        for name, values in (("iou_rectifier", iou_rectifier), ("nms_thresholds", nms_thresholds)):
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} values for {n} classes {self.class_names}")
        self.iou_rectifier = list(iou_rectifier) if iou_rectifier is not None else None
        self.nms_thresholds = list(nms_thresholds)
        self.nms_pre_max_size = nms_pre_max_size

    def _topk(self, heatmap: torch.Tensor):
        """Top-k cells over all classes: scores, cell indices, classes (B, K), as OpenPCDet ranks them."""
        B, C, H, W = heatmap.shape
        K = min(self.max_objects, H * W)
        scores, cells = torch.topk(heatmap.flatten(2), K)  # (B, C, K) best K cells per class
        scores, order = torch.topk(scores.flatten(1), K)  # (B, K) best K of the C*K
        classes = torch.div(order, K, rounding_mode="floor")
        cells = cells.flatten(1).gather(1, order)
        return scores, cells, classes

    def decode_group(self, maps: Dict[str, torch.Tensor]):
        """(boxes (B, K, 7), scores (B, K), group-local classes (B, K), iou (B, K) or None, keep (B, K))."""
        dtype = torch.promote_types(maps["hm"].dtype, torch.float32)  # decode in at least float32
        hm = maps["hm"].to(dtype).sigmoid()
        B, _, H, W = hm.shape
        scores, cells, classes = self._topk(hm)

        def gather(name):  # (B, c, H, W) at the kept cells -> (B, K, c)
            m = maps[name].to(dtype).flatten(2)
            return m.gather(2, cells[:, None].expand(-1, m.shape[1], -1)).transpose(1, 2)

        center, center_z, dim, rot = gather("center"), gather("center_z"), gather("dim").exp(), gather("rot")
        heading = torch.atan2(rot[..., 1:2], rot[..., 0:1])
        xs = (cells % W).to(dtype).unsqueeze(-1) + center[..., 0:1]
        ys = torch.div(cells, W, rounding_mode="floor").to(dtype).unsqueeze(-1) + center[..., 1:2]
        xs = xs * self.stride * self.voxel_size[0] + self.point_cloud_range[0]
        ys = ys * self.stride * self.voxel_size[1] + self.point_cloud_range[1]
        boxes = torch.cat([xs, ys, center_z, dim, heading], dim=-1)  # (B, K, 7)
        iou = (gather("iou")[..., 0] + 1) * 0.5 if "iou" in maps else None
        keep = scores > self.score_threshold
        if self.limit is not None:
            limit = boxes.new_tensor(self.limit)
            keep &= (boxes[..., :3] >= limit[:3]).all(-1) & (boxes[..., :3] <= limit[3:]).all(-1)
        return boxes, scores, classes, iou, keep

    def __call__(self, pred_maps: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        """Per sample ``{'boxes': (n, 7), 'scores': (n,), 'labels': (n,) int64 index into class_names}``."""
        decoded = [self.decode_group(maps) for maps in pred_maps]
        B = decoded[0][0].shape[0]
        results = []
        for b in range(B):
            boxes, scores, labels = [], [], []
            for (g_boxes, g_scores, g_classes, g_iou, g_keep), mapping in zip(decoded, self.group_labels):
                k = g_keep[b]
                lab = torch.tensor(mapping, device=g_classes.device)[g_classes[b, k]]
                sc = g_scores[b, k]
                if self.iou_rectifier is not None and g_iou is not None:
                    a = sc.new_tensor(self.iou_rectifier)[lab]
                    sc = sc.pow(1 - a) * g_iou[b, k].clamp(0, 1).pow(a)
                boxes.append(g_boxes[b, k])
                scores.append(sc)
                labels.append(lab)
            boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            if self.nms_thresholds:
                keep = rotated_box_nms(boxes, scores, self.nms_thresholds, labels=labels,
                                       pre_max_size=self.nms_pre_max_size)
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            results.append({"boxes": boxes, "scores": scores, "labels": labels})
        return results
