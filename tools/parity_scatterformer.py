"""Run the official ScatterFormer (skyhehe123/ScatterFormer, OpenPCDet) next to ours on the CPU and
compare them with the same random weights.

    python tools/parity_scatterformer.py --official-root /path/to/ScatterFormer [--points 4000]
        [--range 30.72] [--seed 0] [--dtype float32|float64] [--json out.json]

The official code has no CPU path; this script runs its model definition unchanged on the CPU by
providing what it imports but cannot have here, without touching its files:

- its Triton kernels (scattered linear attention) run in Triton's interpreter (TRITON_INTERPRET=1,
  set before Triton is imported);
- the ``pcdet`` packages are entered without executing their ``__init__`` files (which import every
  CUDA extension of OpenPCDet); only the files the detector's modules need are loaded;
- ``torch_scatter`` (no wheels for current PyTorch) -> ``scatter_reduce``; the ``dw_spconv`` CUDA
  extension -> its documented formula ``out[o, c] = sum_k w[k, c] * in[pair[k, o], c]``; spconv's
  implicit-GEMM pair generation (CUDA-only) -> spconv's CPU submanifold pair generation, turned
  into the same (K, N) gather table; ``.cuda()`` in constructors -> no-op;
- the official pillar pooling relies on spconv's GPU max-pool returning pillars sorted by
  (b, y, x); spconv's CPU pool does not sort, so its output is sorted here;
- spconv's CPU wheel runs the official sparse convolutions with one CPU thread (with more, its
  gather/scatter loop returns wrong rows now and then; see ``sparse_backend``), and biased sparse
  convolutions add their bias after the convolution (the wheel refuses a fused bias in eval mode).

The official weights (random, BatchNorm statistics randomised too) are saved as an OpenPCDet
checkpoint and loaded into ours through ``create_model('scatterformer_waymo', checkpoint=...)``, so
the converter is part of what is checked. Compared, in eval mode, on a synthetic frame: the voxel
features (row by row: both order voxels by (batch, x, y, z)), the 3-D backbone's pillar features
matched per (batch, y, x) coordinate (the window sort permutes rows differently), the BEV map, the
2-D backbone output, every raw head map, and the decoded boxes before NMS.

``--range R`` shrinks the Waymo range to [-R, R] in x and y (voxel size, heights, window and all
layer shapes unchanged) so that the CPU run takes seconds; ``--range 76.8`` is the full grid.
"""
import argparse
import importlib.util
import json
import math
import os
import sys
import types
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Cfg(dict):
    """OpenPCDet's EasyDict: keys as attributes, ``.get`` with a default."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


# --- making the official modules importable on a CPU ---------------------------------------------

def _package(name: str, path: Path) -> None:
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)]
    sys.modules[name] = mod


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _torch_scatter() -> types.ModuleType:
    ts = types.ModuleType("torch_scatter")

    def _reduce(src, index, dim, how):
        assert dim == 0
        num = int(index.max()) + 1 if index.numel() else 0
        out = src.new_zeros((num,) + src.shape[1:])
        idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
        return out.scatter_reduce_(0, idx, src, reduce=how, include_self=False)

    ts.scatter_add = lambda src, index, dim=0: _reduce(src, index, dim, "sum")
    ts.scatter_mean = lambda src, index, dim=0: _reduce(src, index, dim, "mean")
    ts.scatter_max = lambda src, index, dim=0: (_reduce(src, index, dim, "amax"), None)
    return ts


def _dw_spconv() -> types.ModuleType:
    ext = types.ModuleType("pcdet.ops.dw_spconv.dw_spconv")

    def forward(features, weights, pairs):  # pairs (K, N) int, -1 = absent; weights (..., C) flattened to (K, C)
        w = weights.reshape(-1, weights.shape[-1])
        valid = (pairs >= 0).unsqueeze(-1).to(features.dtype)
        gathered = features[pairs.long().clamp(min=0)] * valid  # (K, N, C)
        return (gathered * w.unsqueeze(1)).sum(0)

    ext.indice_sparse_dwconv = forward
    return ext


def _submanifold_table(spconv_ops, indices, batch_size, spatial_shape, ksize):
    """spconv's CPU submanifold pairs -> (K, N) gather table (input row of output o at offset k).

    spconv stores the pair counts of the first half of the kernel only (the second half mirrors it)
    and leaves out the centre (every voxel to itself)."""
    from spconv.core import ConvAlgo

    padding = [k // 2 for k in ksize]
    _, pairs, counts = spconv_ops.get_indice_pairs(indices, batch_size, list(spatial_shape), ConvAlgo.Native,
                                                   list(ksize), [1, 1, 1], padding, [1, 1, 1], [0, 0, 0], True, False)
    K, N = math.prod(ksize), indices.shape[0]
    table = torch.full((K, N), -1, dtype=torch.int32)
    table[K // 2] = torch.arange(N, dtype=torch.int32)
    for k in range(K):
        if k != K // 2:
            n = int(counts[k] if k < K // 2 else counts[K - 1 - k])
            table[k, pairs[1, k, :n].long()] = pairs[0, k, :n]
    return table


def import_official(root: Path):
    """The official modules (a namespace), importable on a CPU."""
    pcdet = root / "pcdet"
    for name, sub in [("pcdet", ""), ("pcdet.utils", "utils"), ("pcdet.ops", "ops"), ("pcdet.ops.dw_spconv", "ops/dw_spconv"),
                      ("pcdet.models", "models"), ("pcdet.models.model_utils", "models/model_utils"),
                      ("pcdet.models.backbones_3d", "models/backbones_3d"),
                      ("pcdet.models.backbones_3d.vfe", "models/backbones_3d/vfe"),
                      ("pcdet.models.backbones_2d", "models/backbones_2d"),
                      ("pcdet.models.backbones_2d.map_to_bev", "models/backbones_2d/map_to_bev"),
                      ("pcdet.models.dense_heads", "models/dense_heads")]:
        _package(name, pcdet / sub)
    sys.modules["torch_scatter"] = _torch_scatter()
    sys.modules["pcdet.ops.dw_spconv.dw_spconv"] = _dw_spconv()
    sys.modules["pcdet.ops.dw_spconv"].dw_spconv = sys.modules["pcdet.ops.dw_spconv.dw_spconv"]
    numba = types.ModuleType("numba")  # centernet_utils decorates a NMS helper we do not call
    numba.jit = lambda *a, **k: (lambda f: f)
    sys.modules.setdefault("numba", numba)
    for name in ("pcdet.models.model_utils.model_nms_utils", "pcdet.utils.loss_utils"):
        stub = types.ModuleType(name)  # the head's NMS (CUDA) and training losses: not run here
        stub.FocalLossCenterNet = stub.RegLossCenterNet = torch.nn.Identity
        sys.modules[name] = stub
    sys.modules["pcdet.models.model_utils"].model_nms_utils = sys.modules["pcdet.models.model_utils.model_nms_utils"]
    sys.modules["pcdet.utils"].loss_utils = sys.modules["pcdet.utils.loss_utils"]

    ns = types.SimpleNamespace()
    ns.utils = _load("pcdet.models.model_utils.scatterformer_utils", pcdet / "models/model_utils/scatterformer_utils.py")
    ns.backbone = _load("pcdet.models.backbones_3d.scatterformer", pcdet / "models/backbones_3d/scatterformer.py")
    ns.vfe = _load("pcdet.models.backbones_3d.vfe.dynamic_voxel_vfe",
                   pcdet / "models/backbones_3d/vfe/dynamic_voxel_vfe.py")
    ns.bev = _load("pcdet.models.backbones_2d.bev_backbone_ded", pcdet / "models/backbones_2d/bev_backbone_ded.py")
    ns.height = _load("pcdet.models.backbones_2d.map_to_bev.height_compression",
                      pcdet / "models/backbones_2d/map_to_bev/height_compression.py")
    ns.centernet = _load("pcdet.models.model_utils.centernet_utils", pcdet / "models/model_utils/centernet_utils.py")
    ns.head = _load("pcdet.models.dense_heads.center_head", pcdet / "models/dense_heads/center_head.py")
    _patch_dwconv_pairs(ns.utils)
    return ns


def _patch_dwconv_pairs(utils) -> None:
    """SparseDwConv generates its pairs with spconv's implicit-GEMM (CUDA-only) code; on the CPU the
    same table comes from spconv's CPU submanifold pair generation (cached per indice_key as the
    original caches its pairs)."""
    import spconv.pytorch as spconv
    from spconv.pytorch import ops

    def forward(self, input):
        assert self.subm
        cache = input.indice_dict
        key = f"_cpu_dw_{self.indice_key}"
        if key not in cache:
            cache[key] = _submanifold_table(ops, input.indices, input.batch_size, input.spatial_shape, self.kernel_size)
        out = utils.sparse_dwconv(input.features, self.weight, cache[key], cache[key])
        result = input.replace_feature(out)
        result.indice_dict = cache
        return result

    utils.SparseDwConv.forward = forward

    conv_forward = spconv.conv.SparseConvolution.forward

    def biased_forward(self, input, add_input=None):
        """spconv's CPU wheel refuses a bias fused into the convolution in eval mode: add it after."""
        if self.bias is None or input.features.is_cuda:
            return conv_forward(self, input, add_input)
        out = self._conv_forward(self.training, input, self.weight, None, add_input, name=self.name,
                                 sparse_unique_name=self._sparse_unique_name)
        return out.replace_feature(out.features + self.bias)

    spconv.conv.SparseConvolution.forward = biased_forward


# --- building both models with one set of weights ------------------------------------------------

def build_official(ns, config: dict):
    from visionattn.models.detection3d.dynamic_voxel_vfe import grid_size

    grid = np.array(grid_size(config["voxel_size"], config["point_cloud_range"]))
    real_cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # constructors move constants to the GPU
    try:
        vfe = ns.vfe.DynamicVoxelVFE(Cfg(USE_NORM=True, WITH_DISTANCE=False, USE_ABSLOTE_XYZ=True, NUM_FILTERS=[64, 64]),
                                     num_point_features=config["num_point_features"], voxel_size=list(config["voxel_size"]),
                                     grid_size=grid, point_cloud_range=list(config["point_cloud_range"]))
        backbone = ns.backbone.ScatterFormer(Cfg(FEATURE_DIM=128, WIN_SIZE=config["window"]), input_channels=64,
                                             grid_size=grid)
        height = ns.height.HeightCompression(Cfg(NUM_BEV_FEATURES=128))
        bev = ns.bev.CascadeDEDBackbone(Cfg(NUM_LAYERS=4, NUM_SBB=[2, 1, 1], DOWN_STRIDES=[1, 2, 2], FEATURE_DIM=128), 128)
        head_cfg = Cfg(CLASS_NAMES_EACH_HEAD=[list(config["class_names"])], SHARED_CONV_CHANNEL=64,
                       USE_BIAS_BEFORE_NORM=False, NUM_HM_CONV=2, BN_EPS=1e-3, BN_MOM=0.01,
                       SEPARATE_HEAD_CFG=Cfg(HEAD_ORDER=["center", "center_z", "dim", "rot"],
                                             HEAD_DICT={k: {"out_channels": c, "num_conv": 2} for k, c in
                                                        [("center", 2), ("center_z", 1), ("dim", 3), ("rot", 2), ("iou", 1)]}),
                       TARGET_ASSIGNER_CONFIG=Cfg(FEATURE_MAP_STRIDE=2))
        head = ns.head.CenterHead(head_cfg, 128, len(config["class_names"]), list(config["class_names"]), grid,
                                  list(config["point_cloud_range"]), list(config["voxel_size"]))
    finally:
        torch.Tensor.cuda = real_cuda
    vfe.grid_size, vfe.voxel_size, vfe.point_cloud_range = (t.cpu() for t in (vfe.grid_size, vfe.voxel_size,
                                                                                vfe.point_cloud_range))
    backbone.app.query_func = _SortedPool(backbone.app.query_func)
    model = torch.nn.ModuleDict(dict(vfe=vfe, backbone_3d=backbone, map_to_bev=height, backbone_2d=bev, dense_head=head))
    return model


class _SortedPool(torch.nn.Module):
    """The official AttnPillarPool pairs the rows of its max-pool output with ``torch.unique``'s
    (b, y, x)-sorted pillars. On the GPU spconv's pool returns that order (OpenPCDet turns spconv's
    direct table off); its CPU pool does not, so here the pooled rows are sorted by (b, z, y, x)."""

    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        out = self.pool(x)
        idx = out.indices.long()
        key = ((idx[:, 0] * (idx[:, 1].max() + 1) + idx[:, 1]) * (idx[:, 2].max() + 1) + idx[:, 2]) * (idx[:, 3].max() + 1) + idx[:, 3]
        order = torch.argsort(key)
        res = out.replace_feature(out.features[order])
        res.indices = out.indices[order]
        return res


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights of a sensible scale everywhere, and random BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            if name.endswith(("conv_k.weight", "conv_h.weight", "conv_w.weight")):
                fan_in = p[..., 0].numel()
            scale = 1 / math.sqrt(fan_in) if p.dim() > 1 else 0.1
            base = 1.0 if (name.endswith("weight") and p.dim() == 1) else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


# --- running ---------------------------------------------------------------------------------------

def run_official(model, points: torch.Tensor, batch_size: int):
    d = {"points": points, "batch_size": batch_size}
    d = model["vfe"](d)
    out = {"voxel_features": d["voxel_features"], "voxel_coords": d["voxel_coords"]}
    d = model["backbone_3d"](d)
    enc = d["encoded_spconv_tensor"]
    out["pillar_features"], out["pillar_indices"] = enc.features, enc.indices
    d = model["map_to_bev"](d)
    out["bev"] = d["spatial_features"]
    d = model["backbone_2d"](d)
    out["bev_2d"] = d["spatial_features_2d"]
    head = model["dense_head"]
    x = head.shared_conv(out["bev_2d"])
    out["maps"] = [h(x) for h in head.heads_list]
    return out


def run_ours(model, points: torch.Tensor, batch_size: int):
    out = {}
    out["voxel_features"], out["voxel_coords"] = model.vfe(points)
    pf, pil = model.backbone_3d(out["voxel_features"], out["voxel_coords"], batch_size)
    out["pillar_features"], out["pillar_indices"] = pf, pil
    out["bev"] = model.bev_features(points, batch_size)
    out["bev_2d"] = model.backbone_2d(out["bev"])
    out["maps"] = model.dense_head(out["bev_2d"])
    return out


def _per_coordinate(feats_a, idx_a, feats_b, idx_b):
    """Max |a - b| over coordinates both have; and how many coordinates only one side has."""
    key = lambda idx: {tuple(r): i for i, r in enumerate(idx.tolist())}  # noqa: E731
    ka, kb = key(idx_a), key(idx_b)
    common = sorted(set(ka) & set(kb))
    ia = torch.tensor([ka[c] for c in common], dtype=torch.long)
    ib = torch.tensor([kb[c] for c in common], dtype=torch.long)
    diff = (feats_a[ia] - feats_b[ib]).abs().max().item() if common else 0.0
    return diff, len(ka) - len(common) + len(kb) - len(common), len(common)


def compare(official_out, ours_out, ns, model, official_model) -> dict:
    res = {}
    assert torch.equal(official_out["voxel_coords"].long(), ours_out["voxel_coords"].long()), "voxel order differs"
    res["voxels"] = int(ours_out["voxel_coords"].shape[0])
    res["vfe"] = (official_out["voxel_features"] - ours_out["voxel_features"]).abs().max().item()
    off_idx = official_out["pillar_indices"][:, [0, 2, 3]]  # official pillars carry z = 0
    d, unmatched, n = _per_coordinate(official_out["pillar_features"], off_idx, ours_out["pillar_features"],
                                      ours_out["pillar_indices"])
    res.update(pillars=n, pillars_unmatched=unmatched, backbone_3d=d,
               pillar_scale=ours_out["pillar_features"].abs().max().item())
    res["bev"] = (official_out["bev"] - ours_out["bev"]).abs().max().item()
    res["backbone_2d"] = (official_out["bev_2d"] - ours_out["bev_2d"]).abs().max().item()
    for name in ours_out["maps"][0]:
        res[f"head.{name}"] = (official_out["maps"][0][name] - ours_out["maps"][0][name]).abs().max().item()
    # decoding before NMS: the official decode function on our maps vs our decoder (the maps already
    # agree to float rounding; decoding the same maps separates the decoder from near-tied top-k scores)
    maps = ours_out["maps"][0]
    dec = ns.centernet.decode_bbox_from_heatmap(
        heatmap=maps["hm"].sigmoid(), rot_cos=maps["rot"][:, 0:1], rot_sin=maps["rot"][:, 1:2],
        center=maps["center"], center_z=maps["center_z"], dim=maps["dim"].exp(), iou=(maps["iou"] + 1) * 0.5,
        point_cloud_range=list(model.point_cloud_range), voxel_size=list(model.voxel_size), feature_map_stride=2,
        K=model.decoder.max_objects, score_thresh=model.decoder.score_threshold,
        post_center_limit_range=torch.tensor(model.decoder.limit, dtype=maps["hm"].dtype))
    boxes, scores, classes, iou, keep = model.decoder.decode_group(maps)
    for b in range(len(dec)):
        k = keep[b]
        if dec[b]["pred_boxes"].shape != boxes[b, k].shape:
            res["decoded"] = f"count differs: official {len(dec[b]['pred_boxes'])} ours {int(k.sum())}"
            break
        res["decoded_boxes"] = max(res.get("decoded_boxes", 0.0), (dec[b]["pred_boxes"] - boxes[b, k]).abs().max().item())
        res["decoded_scores"] = max(res.get("decoded_scores", 0.0), (dec[b]["pred_scores"] - scores[b, k]).abs().max().item())
        res["decoded_iou"] = max(res.get("decoded_iou", 0.0), (dec[b]["pred_iou"] - iou[b, k]).abs().max().item())
        res["decoded_labels_equal"] = bool(torch.equal(dec[b]["pred_labels"].long(), classes[b, k].long()))
    ours_boxes = boxes[0, keep[0]]
    res["num_decoded"] = int(len(ours_boxes))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-root", required=True, type=Path, help="checkout of skyhehe123/ScatterFormer")
    p.add_argument("--points", type=int, default=4000, help="points of the synthetic frame")
    p.add_argument("--range", type=float, default=30.72, help="half-width of the x/y range in metres (76.8: Waymo's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--checkpoint-out", type=Path, default=None, help="where to write the official-format checkpoint")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)

    import tempfile

    import visionattn
    from visionattn.models.detection3d.scatterformer import WAYMO, synthetic_point_cloud

    r = args.range
    config = dict(WAYMO, point_cloud_range=(-r, -r, WAYMO["point_cloud_range"][2], r, r, WAYMO["point_cloud_range"][5]))
    dtype = getattr(torch, args.dtype)
    ns = import_official(args.official_root)
    torch.manual_seed(args.seed)
    official = build_official(ns, config)
    randomise(official, args.seed)
    official = official.to(dtype).eval()

    state = {k: v for k, v in official.state_dict().items() if not k.startswith("map_to_bev")}
    state["global_step"] = torch.tensor([1234.0])
    container = {"epoch": 0, "it": 0, "model_state": state, "optimizer_state": {}, "version": "pcdet+0.6.0"}
    path = args.checkpoint_out or Path(tempfile.mkdtemp()) / "scatterformer_official_random.pth"
    torch.save(container, path, _use_new_zipfile_serialization=False)  # OpenPCDet's legacy format
    ours = visionattn.create_model("scatterformer_waymo", checkpoint=str(path),
                                   point_cloud_range=config["point_cloud_range"]).to(dtype).eval()

    points = synthetic_point_cloud(args.points, config["point_cloud_range"], config["num_point_features"],
                                   batch_size=2, seed=args.seed).to(dtype)
    points = points[torch.randperm(len(points), generator=torch.Generator().manual_seed(args.seed))]
    threads = torch.get_num_threads()
    with torch.no_grad():
        torch.set_num_threads(1)  # spconv's CPU convolution is only reliable single-threaded
        try:
            a = run_official(official, points, 2)
        finally:
            torch.set_num_threads(threads)
        b = run_ours(ours, points, 2)
    res = compare(a, b, ns, ours, official)
    res.update(points=len(points), range=r, dtype=args.dtype, checkpoint=str(path))
    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{width}}  {v:.3g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
