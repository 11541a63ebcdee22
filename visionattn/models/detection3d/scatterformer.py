"""ScatterFormer: voxel transformer with scattered linear attention for LiDAR 3-D detection.

*ScatterFormer: Efficient Voxel Transformer with Scattered Linear Attention*, He et al., ECCV 2024
(arXiv 2401.00912); the official code is skyhehe123/ScatterFormer on OpenPCDet. This is an
independent implementation of its detector:

points -> DynamicVoxelVFE -> CPE -> 2 stages x 3 ScatterFormer layers (SLA + CWI + FFN) ->
AttnPillarPool -> BEV map -> cascade of 4 DED blocks -> CenterHead with IoU branch ->
IoU-rectified scores and class-specific rotated NMS.

Networks: ``scatterformer_waymo`` (the official Waymo configuration) and ``scatterformer_kitti``
(our KITTI configuration: see ``KITTI``). Official OpenPCDet checkpoints load strictly through the
``scatterformer`` converter (``create_model(name, checkpoint=path)``).
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ...cuda_graph import graph_runner
from ...ops.scattered_linear_attention import IMPLS as SLA_IMPLS
from ...ops.sparse_depthwise_conv import IMPLS as SDC_IMPLS
from ...registry import register_converter, register_network
from ..input_contract import FLOAT_DTYPES, check_choice, check_divides, check_int, tracing
from .center_head import CenterDecoder, CenterHead
from .ded_backbone import CascadeDEDBackbone
from .dynamic_voxel_vfe import DynamicVoxelVFE, grid_size
from .scatterformer_backbone import ScatterFormerBackbone3d

# tools/cfgs/waymo_models/scatterformer.yaml of the official repository
WAYMO = dict(
    point_cloud_range=(-76.8, -76.8, -2.0, 76.8, 76.8, 4.0),
    voxel_size=(0.32, 0.32, 0.1875),
    num_point_features=5,  # x, y, z, intensity, elongation (tanh applied to the last two by the data pipeline)
    class_names=("Vehicle", "Pedestrian", "Cyclist"),
    window=12,
    iou_rectifier=(0.68, 0.71, 0.65),
    nms_thresholds=(0.75, 0.6, 0.55),
    post_center_limit_range=(-80.0, -80.0, -10.0, 80.0, 80.0, 10.0),
)
# Our KITTI configuration (no official one exists): KITTI's usual front-view range, a grid whose
# height gives the same 33 -> 16 -> 8 z-levels as Waymo's and a 0.4 m BEV cell (176 x 200), the
# usual KITTI CenterPoint resolution. The rectifier is Waymo's, untuned; the NMS threshold is the 0.01
# of OpenPCDet's KITTI models (KITTI objects never overlap from above: any overlap is a duplicate).
KITTI = dict(
    point_cloud_range=(0.0, -40.0, -3.0, 70.4, 40.0, 1.0),
    voxel_size=(0.2, 0.2, 0.125),
    num_point_features=4,  # x, y, z, reflectance
    class_names=("Car", "Pedestrian", "Cyclist"),
    window=12,
    iou_rectifier=(0.68, 0.71, 0.65),
    nms_thresholds=(0.01, 0.01, 0.01),
    post_center_limit_range=(-10.0, -50.0, -10.0, 80.4, 50.0, 10.0),
)


def _check_args(point_cloud_range, voxel_size, num_point_features, class_names, dim, num_heads, num_layers,
                window, bev_layers, head_channels, max_objects, score_threshold, nms_pre_max_size,
                attn_impl, conv_impl) -> None:
    """Constructor arguments, each with its name, value and allowed range."""
    owner = "ScatterFormer"
    pcr, vs = list(point_cloud_range), list(voxel_size)
    if len(pcr) != 6 or not all(isinstance(v, (int, float)) for v in pcr):
        raise ValueError(f"{owner}: point_cloud_range must be 6 numbers (x0, y0, z0, x1, y1, z1), got {point_cloud_range!r}")
    if len(vs) != 3 or not all(isinstance(v, (int, float)) and v > 0 for v in vs):
        raise ValueError(f"{owner}: voxel_size must be 3 numbers > 0 (metres along x, y, z), got {voxel_size!r}")
    for i, axis in enumerate("xyz"):
        if not pcr[i + 3] - pcr[i] >= vs[i]:
            raise ValueError(f"{owner}: point_cloud_range {axis} extent [{pcr[i]}, {pcr[i + 3]}] must be at least "
                             f"one voxel ({vs[i]} m) long, with max > min")
    check_int(owner, "num_point_features", num_point_features, 3)
    if isinstance(class_names, str) or not list(class_names):
        raise ValueError(f"{owner}: class_names must be a non-empty sequence of names, got {class_names!r}")
    for arg, value in (("dim", dim), ("num_layers", num_layers), ("window", window), ("bev_layers", bev_layers),
                       ("head_channels", head_channels), ("max_objects", max_objects),
                       ("nms_pre_max_size", nms_pre_max_size)):
        check_int(owner, arg, value, 1)
    check_divides(owner, "num_heads", num_heads, "dim", dim)
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)) \
            or not 0 <= score_threshold <= 1:
        raise ValueError(f"{owner}: score_threshold={score_threshold!r} is out of range; it must be in [0, 1]")
    check_choice(owner, "attn_impl", attn_impl, ("auto",) + SLA_IMPLS)
    check_choice(owner, "conv_impl", conv_impl, ("auto",) + SDC_IMPLS)


class ScatterFormer(nn.Module):
    """ScatterFormer detector.

    Call ``model(points)`` with points (N, 1 + num_point_features) float: columns
    ``[batch index, x, y, z, features...]`` in metres in the LiDAR frame (OpenPCDet's layout; Waymo:
    intensity and elongation after ``tanh``). Points outside ``point_cloud_range`` are ignored.
    ``batch_size`` defaults to the largest batch index + 1 (1 for an empty point cloud).

    ``mode='tensor'`` (default; training): the raw head maps, a list with one dict per class group
    (one for the registered networks) of (B, c, H, W) maps ``hm``, ``center``, ``center_z``,
    ``dim``, ``rot``, ``iou`` on the (H, W) BEV grid (Waymo 240 x 240, cell 0.64 m; see
    :class:`.center_head.CenterHead`). ``mode='predict'``: decoded detections, a list of B dicts
    ``{'boxes': (n, 7) [x, y, z, dx, dy, dz, heading], 'scores': (n,), 'labels': (n,)}`` with
    labels indexing ``class_names`` (``visionattn.inference.predict_boxes_3d`` runs it without gradients).

    An empty point cloud (or no point in range) gives the maps of an all-zero BEV feature map.
    ``attn_impl`` / ``conv_impl``: the ``impl`` of the scattered-linear-attention and sparse
    depth-wise convolution ops (``"auto"``, ``"triton"``, ``"reference"``).
    """

    def __init__(self, point_cloud_range: Sequence[float], voxel_size: Sequence[float], num_point_features: int,
                 class_names: Sequence[str], class_groups: Optional[Sequence[Sequence[str]]] = None,
                 vfe_filters: Sequence[int] = (64, 64), dim: int = 128, num_heads: int = 4, num_layers: int = 3,
                 window: int = 12, bev_layers: int = 4, bev_num_sbb: Sequence[int] = (2, 1, 1),
                 bev_strides: Sequence[int] = (1, 2, 2), head_channels: int = 64, max_objects: int = 500,
                 score_threshold: float = 0.1, post_center_limit_range: Optional[Sequence[float]] = None,
                 iou_rectifier: Optional[Sequence[float]] = None, nms_thresholds: Sequence[float] = (),
                 nms_pre_max_size: int = 4096, attn_impl: str = "auto", conv_impl: str = "auto"):
        super().__init__()
        _check_args(point_cloud_range, voxel_size, num_point_features, class_names, dim, num_heads, num_layers,
                    window, bev_layers, head_channels, max_objects, score_threshold, nms_pre_max_size,
                    attn_impl, conv_impl)
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.num_point_features = num_point_features
        self.class_names = tuple(class_names)
        X, Y, Z = grid_size(voxel_size, point_cloud_range)
        self.vfe = DynamicVoxelVFE(num_point_features, voxel_size, point_cloud_range, vfe_filters)
        # spconv's grid has one extra z level (OpenPCDet: grid_size[::-1] + [1, 0, 0])
        self.backbone_3d = ScatterFormerBackbone3d(vfe_filters[-1], (Z + 1, Y, X), dim, num_heads, num_layers, window,
                                                   attn_impl, conv_impl)
        self.backbone_2d = CascadeDEDBackbone(dim, dim, bev_layers, bev_num_sbb, bev_strides)
        self.dense_head = CenterHead(dim, class_names, class_groups, head_channels)
        self.bev_shape = self.backbone_3d.bev_shape  # (H, W) = (Y', X')
        multiple = math.prod(bev_strides)
        if any(s % multiple for s in self.bev_shape):
            raise ValueError(f"the BEV grid {self.bev_shape} must be divisible by {multiple} (the BEV backbone's "
                             f"strides {tuple(bev_strides)}); change voxel_size or point_cloud_range")
        self.decoder = CenterDecoder(point_cloud_range, voxel_size, feature_map_stride=Y // self.bev_shape[0],
                                     class_names=class_names, class_groups=self.dense_head.class_groups,
                                     max_objects=max_objects, score_threshold=score_threshold,
                                     post_center_limit_range=post_center_limit_range, iou_rectifier=iou_rectifier,
                                     nms_thresholds=nms_thresholds, nms_pre_max_size=nms_pre_max_size)

    def _check(self, points: torch.Tensor) -> None:
        """The input contract: (N, 1 + num_point_features) floats (float64 only for a float64 network:
        cast with ``points.float()``) on the network's device; N = 0 is an empty point cloud."""
        if tracing(points):
            return
        if not isinstance(points, torch.Tensor):
            raise TypeError(f"ScatterFormer takes points as a torch.Tensor (N, 1 + {self.num_point_features}), got "
                            f"{type(points).__name__}; convert with torch.from_numpy(array).float()")
        if points.dim() != 2 or points.shape[1] != 1 + self.num_point_features:
            raise ValueError(f"points must be (N, 1 + {self.num_point_features}) [batch, x, y, z, ...], got "
                             f"{tuple(points.shape)}")
        if not points.is_floating_point():
            raise ValueError(f"points must be floating point, got {points.dtype}; convert with points.float()")
        like = next(self.parameters(), None)
        double_model = like is not None and like.dtype == torch.float64
        if points.dtype not in FLOAT_DTYPES and not (points.dtype == torch.float64 and double_model):
            raise ValueError(f"ScatterFormer takes float32 points (float16/bfloat16 accepted; float64 only for a "
                             f"float64 model, model.double()), got {str(points.dtype).replace('torch.', '')}; "
                             f"cast with points.float()")
        if like is not None and not like.is_meta and points.device != like.device:
            raise ValueError(f"ScatterFormer is on {like.device} but got points on {points.device}; move them with "
                             f"points.to('{like.device}')")

    def bev_features(self, points: torch.Tensor, batch_size: Optional[int] = None, cuda_graph: bool = False
                     ) -> torch.Tensor:
        """The BEV feature map (B, dim, H, W) entering the 2-D backbone (after height compression);
        ``cuda_graph`` as in :meth:`forward`."""
        self._check(points)
        if cuda_graph:
            self._check_graphable(points)
        last = int(points[:, 0].max().item()) if points.shape[0] else 0
        if batch_size is None:
            batch_size = last + 1
        elif last >= batch_size:
            raise ValueError(f"points hold batch index {last} but batch_size is {batch_size}; pass batch_size > {last} "
                             f"or leave it None")
        voxel_features, voxel_coords = self.vfe(points)
        dim = self.backbone_3d.num_out_features
        H, W = self.bev_shape
        if voxel_coords.shape[0] == 0:  # nothing in range: the BEV map is empty
            return voxel_features.new_zeros(batch_size, dim, H, W)
        pillar_features, pillars = self.backbone_3d(voxel_features, voxel_coords, batch_size, cuda_graph=cuda_graph)
        pillars = pillars.long()
        bev = pillar_features.new_zeros(batch_size, H * W, dim)
        bev[pillars[:, 0], pillars[:, 1] * W + pillars[:, 2]] = pillar_features
        return bev.view(batch_size, H, W, dim).permute(0, 3, 1, 2)

    def forward(self, points: torch.Tensor, batch_size: Optional[int] = None, mode: str = "tensor",
                cuda_graph: bool = False) -> List[Dict[str, torch.Tensor]]:
        """Raw head maps (``mode='tensor'``) or detections per frame (``'predict'``).

        ``cuda_graph=True`` (CUDA inference: eval mode, no grad) replays most kernels from CUDA graphs,
        where eagerly the GPU would wait on Python to launch them (hundreds of small kernels):

        - the dense part (2-D backbone and head), whose shapes the BEV grid fixes: one graph per batch
          size, dtype and autocast setting;
        - the voxel part's CPE submanifold convolutions and each stage's ScatterFormer layers, whose
          sizes follow the voxel count: graphs per voxel count rounded up to 1/8 of an octave, the
          rows padded with voxels that no real voxel sees
          (:func:`~.scatterformer_backbone.replay_rows`).

        The voxelisation, the neighbour tables, the strided convolutions and the pillar pool run
        eagerly. Outputs equal the eager ones up to the kernels cuDNN and cuBLAS pick for the captured
        (padded) sizes; the first call per size captures (a few eager runs).
        """
        if mode not in ("tensor", "predict"):
            raise ValueError(f"mode must be 'tensor' (raw head maps) or 'predict' (boxes), got {mode!r}")
        bev = self.bev_features(points, batch_size, cuda_graph=cuda_graph)
        maps = self._dense_graphed(bev) if cuda_graph else self._dense(self, bev)
        return maps if mode == "tensor" else self.decoder(maps)

    @staticmethod
    def _dense(model: "ScatterFormer", bev: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        return model.dense_head(model.backbone_2d(bev))

    def _check_graphable(self, points: torch.Tensor) -> None:
        if not points.is_cuda:
            raise ValueError(f"cuda_graph=True needs the network and points on a CUDA device, got {points.device}; "
                             f"move them with .cuda() or leave cuda_graph False")
        if self.training or torch.is_grad_enabled():
            raise ValueError("cuda_graph=True is for inference: call model.eval() and run under torch.no_grad() "
                             "(training steps run eagerly)")

    def _dense_graphed(self, bev: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        return graph_runner(self, f"bev_to_maps/{autocast}", self._dense)(bev)


# --- synthetic inputs (tests, benchmark) -------------------------------------------------------

def synthetic_point_cloud(num_points: int, point_cloud_range: Sequence[float], num_point_features: int,
                          batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """A LiDAR-like frame per sample (N, 1 + num_point_features): 70 % ground returns whose density
    falls with range around a sensor at the origin, 30 % on 3.9 x 1.6 x 1.5 m box surfaces
    (one box per 500 points); features uniform in [0, 1). Points in the xy range."""
    g = torch.Generator().manual_seed(seed)
    x0, y0, z0, x1, y1, z1 = point_cloud_range
    ground_z = z0 + 0.3 * (z1 - z0)
    out = []
    for b in range(batch_size):
        n_ground = int(num_points * 0.7)
        n_obj = num_points - n_ground
        r = 2.0 + torch.rand(n_ground, generator=g) ** 2 * max(abs(x0), abs(x1), abs(y0), abs(y1))
        theta = torch.rand(n_ground, generator=g) * 2 * math.pi
        ground = torch.stack([r * theta.cos(), r * theta.sin(), ground_z + 0.05 * torch.randn(n_ground, generator=g)], 1)
        n_boxes = max(1, n_obj // 500)
        centres = torch.stack([x0 + (x1 - x0) * torch.rand(n_boxes, generator=g),
                               y0 + (y1 - y0) * torch.rand(n_boxes, generator=g),
                               torch.full((n_boxes,), ground_z + 0.75)], 1)
        box = torch.randint(0, n_boxes, (n_obj,), generator=g)
        local = torch.rand(n_obj, 3, generator=g) - 0.5  # on a face: one coordinate at +-0.5
        face = torch.randint(0, 3, (n_obj,), generator=g)
        local[torch.arange(n_obj), face] = torch.sign(local[torch.arange(n_obj), face]) * 0.5
        objects = centres[box] + local * torch.tensor([3.9, 1.6, 1.5])
        xyz = torch.cat([ground, objects])
        xyz[:, 0] = xyz[:, 0].clamp(x0, x1 - 1e-3)
        xyz[:, 1] = xyz[:, 1].clamp(y0, y1 - 1e-3)
        feats = torch.rand(num_points, num_point_features - 3, generator=g)
        out.append(torch.cat([torch.full((num_points, 1), float(b)), xyz, feats], 1))
    return torch.cat(out)


def _example_inputs_for(config: dict):
    def example_inputs(batch_size: int = 1, points: int = 2000, mode: str = "tensor", seed: int = 0):
        """(points,) of a synthetic frame per sample; ``points=160000`` is Waymo-sized; ``mode='predict'``
        adds the decoding (forward(points, None, 'predict'))."""
        cloud = synthetic_point_cloud(int(points), config["point_cloud_range"], config["num_point_features"],
                                      batch_size, seed)
        return (cloud,) if mode == "tensor" else (cloud, None, mode)
    return example_inputs


def _frames_in(points: torch.Tensor, *_) -> int:
    """Frames in a batch of points (N, 1 + C) with a batch-index column."""
    return int(points[:, 0].max().item()) + 1 if points.shape[0] else 1


def _register(name: str, config: dict, note: str, smoke_range: Sequence[float]):
    # smoke_kwargs: the same network on a 48 x 48 voxel grid (24 x 24 BEV) for the registry's CPU checks;
    # benchmark: points stay float32 under --dtype bfloat16, throughput counts frames
    @register_network(name, family="scatterformer", task="detection3d", example_inputs=_example_inputs_for(config),
                      paper="arXiv 2401.00912", classes=config["class_names"], note=note,
                      smoke_kwargs=dict(point_cloud_range=tuple(smoke_range)), input_dtype=torch.float32,
                      samples_in=_frames_in, throughput_unit="frames/s")
    def build(**kwargs) -> ScatterFormer:
        return ScatterFormer(**{**config, **kwargs})

    build.__name__ = name
    build.__doc__ = f"{name}: ScatterFormer detector ({note})."
    return build


scatterformer_waymo = _register("scatterformer_waymo", WAYMO, "official Waymo configuration, 12.30M parameters",
                                (-7.68, -7.68, -2.0, 7.68, 7.68, 4.0))
scatterformer_kitti = _register("scatterformer_kitti", KITTI, "our KITTI configuration (no official one)",
                                (0.0, -4.8, -3.0, 9.6, 4.8, 1.0))


# --- official checkpoints ----------------------------------------------------------------------

@register_converter("scatterformer")
def convert_official(checkpoint, model: nn.Module, **_) -> Dict[str, torch.Tensor]:
    """OpenPCDet checkpoint (``{'model_state': ..., 'optimizer_state', 'epoch', ...}`` or a bare state
    dict, optionally ``module.``-prefixed) -> our state dict, strictly.

    Module names and tensor layouts are the official ones: spconv weights in spconv's KRSC layout
    ``(out, kz, ky, kx, in)`` (our sparse backend's), the depth-wise CWI weights ``(kz, ky, kx, C)``.
    ``global_step`` (OpenPCDet's iteration counter) is dropped. Any other difference raises, naming
    the keys.
    """
    from ...hub import extract_state_dict

    state = checkpoint.get("model_state")
    official = dict(state) if isinstance(state, Mapping) else extract_state_dict(checkpoint)
    if official and all(k.startswith("module.") for k in official):
        official = {k[len("module."):]: v for k, v in official.items()}
    official.pop("global_step", None)
    ours = model.state_dict()
    unexpected = sorted(set(official) - set(ours))
    missing = sorted(set(ours) - set(official))
    if unexpected or missing:
        raise RuntimeError(f"official ScatterFormer checkpoint does not fit {type(model).__name__}: "
                           f"unexpected keys {unexpected[:8]}, missing keys {missing[:8]} "
                           f"(a different configuration or dataset?)")
    wrong = [f"{k}: {tuple(v.shape)} vs ours {tuple(ours[k].shape)}" for k, v in official.items()
             if tuple(v.shape) != tuple(ours[k].shape)]
    if wrong:
        raise RuntimeError(f"official ScatterFormer checkpoint has other shapes (a different configuration?): "
                           f"{wrong[:6]}")
    return official
