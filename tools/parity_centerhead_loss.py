"""Compare ScatterFormer's training targets and losses with the official OpenPCDet CenterHead on the CPU.

    python tools/parity_centerhead_loss.py --official-root /path/to/ScatterFormer [--seed 0] [--json out.json]

The official ``CenterHead`` (``pcdet/models/dense_heads/center_head.py``) with ScatterFormer's Waymo
settings (stride 2, 500 objects, Gaussian overlap 0.1, min radius 2, IoU branch and DIoU regression,
cls/loc weights 1/2) and ours (:class:`visionattn.models.detection3d.center_head.CenterHead` with
:class:`~visionattn.models.detection3d.center_head_loss.CenterHeadLoss`) get the same weights, the same
BEV features and the same ground truth: three frames (40 boxes partly outside the map, 7 boxes, none),
for one class group and for two. Compared: heatmaps, target cells, masks and regression codes per
group, each loss term, and the gradients of every head parameter.

The official modules are loaded from the checkout without running the ``pcdet`` package ``__init__``
files (they import OpenPCDet's CUDA extensions). What cannot run on a CPU is replaced: the CUDA
``paired_boxes_iou3d_gpu`` (the IoU branch's target) by :func:`visionattn.ops.rotated_box_iou.paired_boxes_iou_3d`,
``.cuda()`` in the head's constructor by a no-op, ``numba.jit`` (an NMS helper, not run) by the plain
function; modules the loss never calls (NMS, point-in-box pooling) are empty stand-ins.
"""
import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NAMES = ["Vehicle", "Pedestrian", "Cyclist"]
RANGE = np.array([-19.2, -19.2, -2.0, 19.2, 19.2, 4.0], dtype=np.float32)  # 60 x 60 BEV cells of 0.64 m
VOXEL = [0.32, 0.32, 0.1875]


class Cfg(dict):
    """OpenPCDet's EasyDict: keys as attributes, ``.get`` with a default."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


def import_official(root: Path):
    """The official center_head module, importable on a CPU (see the module docstring)."""
    from visionattn.ops.rotated_box_iou import paired_boxes_iou_3d

    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)
        return mod

    for name in ("pcdet", "pcdet.utils", "pcdet.ops", "pcdet.ops.iou3d_nms", "pcdet.ops.roiaware_pool3d",
                 "pcdet.models", "pcdet.models.model_utils", "pcdet.models.dense_heads"):
        module(name, __path__=[])
    module("numba", jit=lambda *a, **k: (lambda f: f))
    module("pcdet.ops.iou3d_nms.iou3d_nms_utils", paired_boxes_iou3d_gpu=paired_boxes_iou_3d)
    module("pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils")
    module("pcdet.utils.common_utils")
    module("pcdet.models.model_utils.model_nms_utils")

    def load(name, rel):
        spec = importlib.util.spec_from_file_location(name, root / rel)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, mod)
        spec.loader.exec_module(mod)
        return mod

    load("pcdet.utils.box_utils", "pcdet/utils/box_utils.py")
    load("pcdet.utils.loss_utils", "pcdet/utils/loss_utils.py")
    load("pcdet.models.model_utils.centernet_utils", "pcdet/models/model_utils/centernet_utils.py")
    return load("pcdet.models.dense_heads.center_head", "pcdet/models/dense_heads/center_head.py")


def official_head(center_head, groups, in_channels):
    heads = {k: {"out_channels": c, "num_conv": 2} for k, c in dict(center=2, center_z=1, dim=3, rot=2, iou=1).items()}
    cfg = Cfg(CLASS_NAMES_EACH_HEAD=groups, SHARED_CONV_CHANNEL=64, NUM_HM_CONV=2, BN_EPS=1e-3, BN_MOM=0.01,
              SEPARATE_HEAD_CFG=Cfg(HEAD_ORDER=["center", "center_z", "dim", "rot"], HEAD_DICT=heads),
              TARGET_ASSIGNER_CONFIG=Cfg(FEATURE_MAP_STRIDE=2, NUM_MAX_OBJS=500, GAUSSIAN_OVERLAP=0.1, MIN_RADIUS=2),
              IOU_REG_LOSS=True,
              LOSS_CONFIG=Cfg(LOSS_WEIGHTS={"cls_weight": 1.0, "loc_weight": 2.0, "code_weights": [1.0] * 8}))
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # the constructor moves its class-id tables to the GPU
    try:
        return center_head.CenterHead(cfg, in_channels, len(NAMES), NAMES, None, RANGE, VOXEL,
                                      predict_boxes_when_training=False)
    finally:
        torch.Tensor.cuda = cuda


def scene(seed: int):
    """Three frames of boxes and labels: 40 boxes (some centres outside the map), 7 boxes, none."""
    g = torch.Generator().manual_seed(seed)
    frames = []
    for n in (40, 7, 0):
        xy = (torch.rand(n, 2, generator=g) - 0.5) * 40
        boxes = torch.cat([xy, torch.rand(n, 1, generator=g) - 0.5, torch.rand(n, 3, generator=g) * 4 + 0.3,
                           (torch.rand(n, 1, generator=g) - 0.5) * 6.28], 1)
        frames.append((boxes, torch.randint(0, 3, (n,), generator=g)))
    return frames


def compare(center_head, groups, seed: int) -> dict:
    from visionattn.models.detection3d.center_head import CenterHead
    from visionattn.models.detection3d.center_head_loss import CenterHeadLoss

    torch.manual_seed(seed)
    official = official_head(center_head, groups, 16).train()
    ours = CenterHead(16, NAMES, groups, 64).train()
    ours.load_state_dict(official.state_dict(), strict=True)
    criterion = CenterHeadLoss(RANGE, VOXEL, 2, NAMES, groups)
    frames = scene(seed)
    boxes, labels = [f[0] for f in frames], [f[1] for f in frames]
    padded = torch.zeros(len(frames), max(len(b) for b in boxes), 8)  # OpenPCDet: (B, M, 7 + 1-based class)
    for i, (b, lab) in enumerate(frames):
        padded[i, :len(b), :7], padded[i, :len(b), 7] = b, lab.float() + 1
    features = torch.randn(len(frames), 16, 60, 60, generator=torch.Generator().manual_seed(seed + 1))

    official(dict(spatial_features_2d=features, gt_boxes=padded.clone(), batch_size=len(frames)))
    loss_official, terms = official.get_loss()
    loss_official.backward()
    targets_official = official.forward_ret_dict["target_dicts"]
    ours_terms = criterion(ours(features), boxes, labels)
    sum(ours_terms.values()).backward()
    targets_ours = criterion.assigner(boxes, labels, (60, 60))

    res = {}
    for i, t in enumerate(targets_ours):
        m = targets_official["masks"][i].bool()
        res[f"head{i}_heatmap_max_abs_diff"] = float((targets_official["heatmaps"][i] - t["heatmap"]).abs().max())
        res[f"head{i}_masks_equal"] = bool(torch.equal(m, t["mask"]))
        res[f"head{i}_cells_equal"] = bool(torch.equal(targets_official["inds"][i][m], t["inds"][t["mask"]]))
        res[f"head{i}_codes_max_abs_diff"] = float((targets_official["target_boxes"][i][m]
                                                    - t["target_boxes"][t["mask"]]).abs().max())
        res[f"head{i}_targets"] = int(t["mask"].sum())
    for key in ("hm_loss", "loc_loss", "iou_loss", "iou_reg_loss"):
        theirs = sum(float(v) for k, v in terms.items() if k.startswith(key + "_head"))
        res[f"{key}_official"], res[f"{key}_ours"] = theirs, float(ours_terms[key].detach())
    grads = [(p.grad - q.grad).abs().max() / p.grad.abs().max().clamp(min=1e-12)
             for p, q in zip(official.parameters(), ours.parameters()) if p.grad is not None]
    res["grad_max_rel_diff"] = float(max(grads))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-root", required=True, type=Path, help="checkout of skyhehe123/ScatterFormer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    center_head = import_official(args.official_root)
    out = {}
    for label, groups in (("one_group", [NAMES]), ("two_groups", [["Vehicle"], ["Pedestrian", "Cyclist"]])):
        res = compare(center_head, groups, args.seed)
        out[label] = res
        print(f"[{label}]")
        for k, v in res.items():
            print(f"  {k:<28} {v:.6g}" if isinstance(v, float) else f"  {k:<28} {v}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
