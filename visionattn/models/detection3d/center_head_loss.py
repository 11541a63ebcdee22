"""Training targets and losses of the CenterPoint head, as OpenPCDet's ``CenterHead`` trains ScatterFormer.

Targets (per class group, :class:`CenterTargetAssigner`): every ground-truth box of the group's classes
draws a Gaussian peak on its class heatmap at the BEV cell of its centre (value 1 exactly there), with
CornerNet's radius (:func:`gaussian_radius` of the footprint in cells, ``gaussian_overlap`` 0.1,
truncated to an integer, at least ``min_radius`` 2) and sigma = (2 radius + 1) / 6; overlapping peaks
of a class keep the maximum. Up to ``max_objects`` boxes per frame and group are regression targets
at their centre cell: ``[centre offset x, y (cells), z (m), log dx, log dy, log dz, cos heading,
sin heading]`` (the inverse of :class:`.center_head.CenterDecoder`). Box centres outside the BEV map are
clamped onto its border cells (as the official code; its data pipeline drops them before).

Losses (:class:`CenterHeadLoss`, summed over class groups):

- ``hm_loss``: CornerNet's penalty-reduced focal loss on the heatmap (sigmoid clamped to
  [1e-4, 1 - 1e-4]), normalised by the number of peaks; times ``cls_weight`` (1).
- ``loc_loss``: L1 between the regression maps at the target cells and the targets, per code
  averaged over the batch's targets, times ``code_weights`` (8 ones), summed, times ``loc_weight`` (2).
- ``iou_loss``: L1 between the ``iou`` map at the target cells and 2 IoU - 1, IoU the rotated 3D IoU of
  the (detached) decoded box with its ground truth, averaged over the targets (weight 1).
- ``iou_reg_loss``: 1 - DIoU of the decoded boxes with their ground truth, averaged over the targets,
  times ``loc_weight``. As the official ``bbox3d_overlaps_diou`` the DIoU takes both boxes axis-aligned
  (the heading is not used), so this term moves centres and sizes only.

One deliberate difference: a box with a non-positive size is no target at all (the official code
skips dx <= 0 or dy <= 0 but turns dz <= 0 into a -inf regression target).
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops.rotated_box_iou import paired_boxes_iou_3d

REG_MAPS = ("center", "center_z", "dim", "rot")  # regression maps, in the order of the 8 codes
NUM_CODES = 8


def gaussian_radius(dx: torch.Tensor, dy: torch.Tensor, min_overlap: float = 0.5) -> torch.Tensor:
    """CornerNet's radius (as CenterPoint/OpenPCDet use it) for footprints dx x dy (same unit, e.g. cells):
    the smallest of the three radii at which a corner-shifted box still overlaps the box with IoU
    ``min_overlap``."""
    s, p = dx + dy, dx * dy
    r1 = (s + (s ** 2 - 4 * p * (1 - min_overlap) / (1 + min_overlap)).sqrt()) / 2
    r2 = (2 * s + (4 * s ** 2 - 16 * (1 - min_overlap) * p).sqrt()) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * s
    r3 = (b3 + (b3 ** 2 - 4 * a3 * (min_overlap - 1) * p).sqrt()) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


class CenterTargetAssigner:
    """Heatmap and regression targets of a :class:`.center_head.CenterHead` (module docstring).

    Args:
        point_cloud_range, voxel_size: of the voxel grid; ``feature_map_stride`` voxels per BEV cell.
        class_names: all classes (labels index them); class_groups: the head's groups.
        max_objects: regression targets per frame and group (OpenPCDet ``NUM_MAX_OBJS``); the boxes
            after the first ``max_objects`` of a group draw no heatmap peak either.
        gaussian_overlap, min_radius: of the heatmap peaks (``GAUSSIAN_OVERLAP``, ``MIN_RADIUS``).
    """

    def __init__(self, point_cloud_range: Sequence[float], voxel_size: Sequence[float], feature_map_stride: int,
                 class_names: Sequence[str], class_groups: Optional[Sequence[Sequence[str]]] = None,
                 max_objects: int = 500, gaussian_overlap: float = 0.1, min_radius: int = 2):
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.voxel_size = [float(v) for v in voxel_size]
        self.stride = int(feature_map_stride)
        self.class_names = list(class_names)
        groups = [list(g) for g in class_groups] if class_groups else [list(class_names)]
        unknown = sorted({c for g in groups for c in g} - set(self.class_names))
        if unknown:
            raise ValueError(f"class_groups name {unknown}, which are not in class_names {self.class_names}")
        self.class_groups = groups
        if max_objects < 1 or min_radius < 0:
            raise ValueError(f"max_objects must be >= 1 and min_radius >= 0, got {max_objects} and {min_radius}")
        self.max_objects = int(max_objects)
        self.gaussian_overlap = float(gaussian_overlap)
        self.min_radius = int(min_radius)

    def _group_boxes(self, gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor], group: List[str],
                     device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first ``max_objects`` boxes of each frame whose class is in ``group``, padded:
        boxes (B, K, 7), group-local class (B, K), filled (B, K) bool."""
        B, K = len(gt_boxes), self.max_objects
        to_local = torch.full((len(self.class_names),), -1, dtype=torch.long, device=device)
        to_local[[self.class_names.index(c) for c in group]] = torch.arange(len(group), device=device)
        boxes = torch.cat([b[:, :7].to(device, torch.float32) for b in gt_boxes])
        labels = torch.cat([lab.to(device, torch.long).reshape(-1) for lab in gt_labels])
        frame = torch.repeat_interleave(torch.arange(B, device=device),
                                        torch.tensor([len(b) for b in gt_boxes], device=device))
        bad = (labels < 0) | (labels >= len(self.class_names))
        if bad.any():
            raise ValueError(f"gt_labels must index class_names {self.class_names} (0..{len(self.class_names) - 1}); "
                             f"got {labels[bad].unique().tolist()}")
        local = to_local[labels]
        ours = local >= 0
        boxes, local, frame = boxes[ours], local[ours], frame[ours]
        # rank of each box among its frame's boxes of the group (frames are contiguous and in order)
        counts = torch.bincount(frame, minlength=B)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(frame), device=device) - first[frame]
        keep = rank < K
        out_boxes = boxes.new_zeros(B, K, 7)
        out_cls = torch.zeros(B, K, dtype=torch.long, device=device)
        filled = torch.zeros(B, K, dtype=torch.bool, device=device)
        out_boxes[frame[keep], rank[keep]] = boxes[keep]
        out_cls[frame[keep], rank[keep]] = local[keep]
        filled[frame[keep], rank[keep]] = True
        return out_boxes, out_cls, filled

    def _draw_heatmap(self, heatmap: torch.Tensor, cls: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
                      radius: torch.Tensor) -> None:
        """Max-draw one Gaussian per box into heatmap (B, C, H, W); cls, cx, cy, radius (B, K) of valid boxes,
        a radius < 0 marking the empty slots."""
        B, C, H, W = heatmap.shape
        b, k = (radius >= 0).nonzero(as_tuple=True)
        if b.numel() == 0:
            return
        r = radius[b, k]
        reach = int(r.max())
        offsets = torch.arange(-reach, reach + 1, device=heatmap.device)
        oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")  # (S, S) window around the centre cell
        sigma = (2 * r.double() + 1) / 6
        value = torch.exp(-(ox ** 2 + oy ** 2)[None].double() / (2 * sigma[:, None, None] ** 2))  # (n, S, S)
        value = torch.where(value < torch.finfo(torch.float64).eps, torch.zeros_like(value), value)
        x = cx[b, k][:, None, None] + ox
        y = cy[b, k][:, None, None] + oy
        inside = ((ox.abs()[None] <= r[:, None, None]) & (oy.abs()[None] <= r[:, None, None])
                  & (x >= 0) & (x < W) & (y >= 0) & (y < H))
        flat = ((b * C + cls[b, k])[:, None, None] * H + y) * W + x
        heatmap.view(-1).scatter_reduce_(0, flat[inside], value[inside].to(heatmap.dtype), reduce="amax")

    def __call__(self, gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor],
                 feature_map_size: Tuple[int, int], device: Optional[torch.device] = None) -> List[Dict[str, torch.Tensor]]:
        """Per frame boxes (M_b, 7) [x, y, z, dx, dy, dz, heading] (extra columns ignored) and labels (M_b,)
        indexing ``class_names``; the BEV map size (H, W). Returns one dict per class group:

        - ``heatmap`` (B, classes of the group, H, W) float32 in [0, 1]
        - ``target_boxes`` (B, K, 8) the regression codes, ``inds`` (B, K) int64 cell index y * W + x,
          ``mask`` (B, K) bool (the slots holding a target), ``boxes`` (B, K, 7) the ground-truth boxes
        """
        if len(gt_boxes) != len(gt_labels):
            raise ValueError(f"{len(gt_boxes)} frames of gt_boxes but {len(gt_labels)} of gt_labels")
        for i, (b, lab) in enumerate(zip(gt_boxes, gt_labels)):
            if b.dim() != 2 or b.shape[1] < 7 or b.shape[0] != lab.numel():
                raise ValueError(f"frame {i}: gt_boxes must be (M, 7) with M labels, got boxes {tuple(b.shape)} "
                                 f"and {lab.numel()} labels")
        device = device or (gt_boxes[0].device if len(gt_boxes) else torch.device("cpu"))
        H, W = feature_map_size
        x0, y0 = self.point_cloud_range[:2]
        cell_x, cell_y = self.voxel_size[0] * self.stride, self.voxel_size[1] * self.stride
        targets = []
        for group in self.class_groups:
            boxes, cls, filled = self._group_boxes(gt_boxes, gt_labels, group, device)
            B = boxes.shape[0]
            cx = ((boxes[..., 0] - x0) / self.voxel_size[0] / self.stride).clamp(0, W - 0.5)
            cy = ((boxes[..., 1] - y0) / self.voxel_size[1] / self.stride).clamp(0, H - 0.5)
            ix, iy = cx.floor().long(), cy.floor().long()
            valid = filled & (boxes[..., 3:6] > 0).all(-1)
            radius = gaussian_radius(boxes[..., 3] / cell_x, boxes[..., 4] / cell_y, self.gaussian_overlap)
            radius = torch.where(valid, radius, torch.zeros_like(radius)).long().clamp(min=self.min_radius)
            heatmap = boxes.new_zeros(B, len(group), H, W)
            self._draw_heatmap(heatmap, cls, ix, iy, torch.where(valid, radius, torch.full_like(radius, -1)))
            codes = torch.cat([cx[..., None] - ix[..., None], cy[..., None] - iy[..., None], boxes[..., 2:3],
                               boxes[..., 3:6].clamp(min=1e-12).log(), boxes[..., 6:7].cos(), boxes[..., 6:7].sin()], -1)
            codes = torch.where(valid[..., None], codes, torch.zeros_like(codes))
            inds = torch.where(valid, iy * W + ix, torch.zeros_like(ix))
            targets.append(dict(heatmap=heatmap, target_boxes=codes, inds=inds, mask=valid, boxes=boxes))
        return targets


# --- losses ---------------------------------------------------------------------------------------

def focal_heatmap_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CornerNet's penalty-reduced focal loss: -[sum over peaks (1-p)^2 log p + sum elsewhere
    (1-t)^4 p^2 log(1-p)] / number of peaks (the plain sum when there is no peak). prob in (0, 1)."""
    pos = target.eq(1)
    pos_loss = (prob.log() * (1 - prob) ** 2)[pos].sum()
    neg_loss = ((1 - prob).log() * prob ** 2 * (1 - target) ** 4)[~pos].sum()
    num_pos = pos.sum()
    return -(pos_loss + neg_loss) / num_pos.clamp(min=1)


def gather_cells(maps: torch.Tensor, inds: torch.Tensor) -> torch.Tensor:
    """(B, c, H, W) maps at the cells inds (B, K) (index y * W + x) -> (B, K, c)."""
    flat = maps.flatten(2)
    return flat.gather(2, inds[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def regression_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per code (D,): sum over the masked slots of |pred - target| / max(number of masked slots, 1);
    pred, target (B, K, D), mask (B, K). NaN targets count as zero error (as the official loss)."""
    weight = mask[..., None].to(pred.dtype) * (~target.isnan()).to(pred.dtype)
    err = (pred * weight - target.nan_to_num() * weight).abs()
    return err.sum((0, 1)) / mask.sum().clamp(min=1).to(pred.dtype)


def axis_aligned_diou_3d(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """3D distance-IoU of paired boxes (N, 7) taken axis-aligned (heading ignored), in [-1, 1]: IoU minus
    squared centre distance over the squared diagonal of the enclosing box (OpenPCDet's
    ``bbox3d_overlaps_diou``)."""
    lo_p, hi_p = pred[:, :3] - pred[:, 3:6] / 2, pred[:, :3] + pred[:, 3:6] / 2
    lo_g, hi_g = gt[:, :3] - gt[:, 3:6] / 2, gt[:, :3] + gt[:, 3:6] / 2
    inter = (torch.minimum(hi_p, hi_g) - torch.maximum(lo_p, lo_g)).clamp(min=0).prod(-1)
    union = pred[:, 3:6].prod(-1) + gt[:, 3:6].prod(-1) - inter
    centre_dist = ((gt[:, :3] - pred[:, :3]) ** 2).sum(-1)
    diagonal = ((torch.maximum(hi_p, hi_g) - torch.minimum(lo_p, lo_g)).clamp(min=0) ** 2).sum(-1)
    return (inter / union - centre_dist / diagonal).clamp(-1.0, 1.0)


class CenterHeadLoss(nn.Module):
    """The official CenterHead's training loss (module docstring): targets from the ground truth, then
    ``{'hm_loss', 'loc_loss', 'iou_loss', 'iou_reg_loss'}`` summed over class groups.

    Args:
        point_cloud_range, voxel_size, feature_map_stride, class_names, class_groups, max_objects,
            gaussian_overlap, min_radius: as :class:`CenterTargetAssigner` (Waymo: stride 2, 500, 0.1, 2).
        cls_weight, loc_weight, code_weights: ``LOSS_WEIGHTS`` (Waymo: 1, 2, eight 1s).
        iou_reg_loss: add the DIoU regression term (``IOU_REG_LOSS``, on for ScatterFormer).
        The ``iou_loss`` term is added when the head predicts an ``iou`` map.
    """

    def __init__(self, point_cloud_range: Sequence[float], voxel_size: Sequence[float], feature_map_stride: int,
                 class_names: Sequence[str], class_groups: Optional[Sequence[Sequence[str]]] = None,
                 max_objects: int = 500, gaussian_overlap: float = 0.1, min_radius: int = 2,
                 cls_weight: float = 1.0, loc_weight: float = 2.0, code_weights: Optional[Sequence[float]] = None,
                 iou_reg_loss: bool = True):
        super().__init__()
        self.assigner = CenterTargetAssigner(point_cloud_range, voxel_size, feature_map_stride, class_names,
                                             class_groups, max_objects, gaussian_overlap, min_radius)
        code_weights = [1.0] * NUM_CODES if code_weights is None else [float(w) for w in code_weights]
        if len(code_weights) != NUM_CODES:
            raise ValueError(f"code_weights needs {NUM_CODES} values (offset x, y, z, log dx, dy, dz, cos, sin), "
                             f"got {len(code_weights)}")
        self.register_buffer("code_weights", torch.tensor(code_weights), persistent=False)
        self.cls_weight, self.loc_weight = float(cls_weight), float(loc_weight)
        self.use_iou_reg = bool(iou_reg_loss)

    def decode_at(self, maps: Mapping[str, torch.Tensor], inds: torch.Tensor) -> torch.Tensor:
        """Boxes (B, K, 7) that the raw maps predict at cells inds (B, K), as the decoder makes them."""
        W = maps["center"].shape[-1]
        a = self.assigner
        center, z = gather_cells(maps["center"], inds), gather_cells(maps["center_z"], inds)
        dims, rot = gather_cells(maps["dim"], inds).exp(), gather_cells(maps["rot"], inds)
        x = ((inds % W).to(center.dtype) + center[..., 0]) * a.stride * a.voxel_size[0] + a.point_cloud_range[0]
        y = (torch.div(inds, W, rounding_mode="floor").to(center.dtype) + center[..., 1]) * a.stride \
            * a.voxel_size[1] + a.point_cloud_range[1]
        heading = torch.atan2(rot[..., 1], rot[..., 0])
        return torch.cat([x[..., None], y[..., None], z, dims, heading[..., None]], -1)

    def forward(self, pred_maps: Sequence[Mapping[str, torch.Tensor]], gt_boxes: Sequence[torch.Tensor],
                gt_labels: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        if len(pred_maps) != len(self.assigner.class_groups):
            raise ValueError(f"{len(pred_maps)} groups of head maps for {len(self.assigner.class_groups)} class "
                             f"groups {self.assigner.class_groups}")
        hm0 = pred_maps[0]["hm"]
        if hm0.shape[0] != len(gt_boxes):
            raise ValueError(f"head maps hold {hm0.shape[0]} frames but {len(gt_boxes)} frames of gt_boxes were given")
        targets = self.assigner(gt_boxes, gt_labels, tuple(hm0.shape[-2:]), device=hm0.device)
        zero = hm0.new_zeros((), dtype=torch.float32)
        out = dict(hm_loss=zero, loc_loss=zero, iou_loss=zero, iou_reg_loss=zero)
        for maps, t in zip(pred_maps, targets):
            maps = {k: v.float() for k, v in maps.items()}
            prob = maps["hm"].sigmoid().clamp(1e-4, 1 - 1e-4)
            out["hm_loss"] = out["hm_loss"] + self.cls_weight * focal_heatmap_loss(prob, t["heatmap"])
            pred_codes = torch.cat([gather_cells(maps[name], t["inds"]) for name in REG_MAPS], -1)
            per_code = regression_l1(pred_codes, t["target_boxes"], t["mask"])
            out["loc_loss"] = out["loc_loss"] + self.loc_weight * (per_code * self.code_weights).sum()
            mask = t["mask"]
            has_targets = bool(mask.any())
            boxes = self.decode_at(maps, t["inds"])[mask] if ("iou" in maps or self.use_iou_reg) else None
            if "iou" in maps:
                if has_targets:
                    iou_target = paired_boxes_iou_3d(boxes.detach(), t["boxes"][mask]).nan_to_num(0.0) * 2 - 1
                    iou_pred = gather_cells(maps["iou"], t["inds"])[mask][:, 0]
                    term = F.l1_loss(iou_pred, iou_target, reduction="sum") / mask.sum()
                else:  # keeps the iou branch in the graph (distributed training needs every parameter used)
                    term = maps["iou"].sum() * 0
                out["iou_loss"] = out["iou_loss"] + term
            if self.use_iou_reg:
                if has_targets:
                    diou = axis_aligned_diou_3d(boxes, t["boxes"][mask])
                    term = self.loc_weight * (1 - diou).sum() / mask.sum()
                else:
                    term = sum(maps[name].sum() for name in REG_MAPS) * 0
                out["iou_reg_loss"] = out["iou_reg_loss"] + term
        return out
