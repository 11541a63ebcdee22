"""Every op of ``visionattn.ops`` x bad parameters: each must fail with the op's own message.

Cases are generated: for every op, from its ``example_inputs`` at a tiny size, (a) each tensor
argument in turn moved to another device ('meta'), replaced by a Python list, given an integer
dtype (float arguments) or a float dtype (index arguments), and cast to float64 where its dtype
must match the others'; (b) the op's own bad scalars (radius < 0, zero heads, group sizes that do
not divide, thresholds out of range...). A case passes only when the op raises ValueError/TypeError
from a visionattn ``raise`` (see ``library_errors.py``); the valid call of each op must work.
"""
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from library_errors import expect_library_error  # noqa: E402

from visionattn.ops import consistency_mask as cmk  # noqa: E402
from visionattn.ops import convex_upsample as cvu  # noqa: E402
from visionattn.ops import depthwise_conv2d as dwc  # noqa: E402
from visionattn.ops import depthwise_glu as dwg  # noqa: E402
from visionattn.ops import (batch_norm_act as bna, bias_grad as bg, bilevel_routing_attention as bra, channel_bias_act as cba,  # noqa: E402
                            group_norm_act as gna, grouped_query_attention as gqa, layer_norm as ln, match_attention as ma,
                            multi_head_cross_attention as mhca, rotated_box_iou as iou, rotated_box_nms as nms,
                            scattered_linear_attention as sla, sparse_conv as spc, sparse_depthwise_conv as sdc,
                            wkv)


@dataclass
class OpSpec:
    name: str
    fn: Callable
    inputs: Callable[[], Dict]  # valid kwargs at a tiny size
    same_dtype: Sequence[str] = ()  # float tensors whose dtypes must agree (float64 mix refused)
    index_args: Sequence[str] = ()  # integer tensors (a float dtype is refused)
    list_ok: Sequence[str] = ()  # tensor arguments that may also be Python lists
    bad: Dict[str, Callable[[Dict], Dict]] = field(default_factory=dict)  # case -> kwargs changes


def _heads(d, heads):
    c = d["centers"]
    return dict(centers=c[:, :, :1].expand(-1, -1, heads, -1).contiguous()) if heads else dict(centers=c[:, :, :0])


def _wkv_inputs():
    d = wkv.example_inputs(tokens=16, channels=4)
    return {k: v for k, v in d.items() if k in ("w", "u", "k", "v")}


def _re_wkv_inputs():
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(1, 12, 4, generator=g), torch.randn(1, 12, 4, generator=g)
    return dict(k=k, v=v, decay=torch.randn(2, 4, generator=g), first=torch.randn(2, 4, generator=g), hw=(3, 4))


def _sdc_inputs():
    d = sdc.example_inputs(n_voxels=64, channels=4)
    return {k: v for k, v in d.items() if k in ("features", "weight", "pairs")}


def _pairs_inputs():
    return dict(coords=sdc.voxel_coords(64, spatial_shape=(4, 16, 16)), spatial_shape=(4, 16, 16), kernel_size=(3, 3, 3))


SPECS: List[OpSpec] = [
    OpSpec("bilevel_routing_attention", bra.bilevel_routing_attention,
           lambda: bra.example_inputs(batch=1, size=14, channels=16, num_heads=2, n_win=7, topk=1),
           same_dtype=("q", "k", "v"),
           bad={"num_heads=0": lambda d: dict(num_heads=0), "num_heads=3 (not dividing 16)": lambda d: dict(num_heads=3),
                "n_win=0": lambda d: dict(n_win=0), "n_win=5 (not dividing 14)": lambda d: dict(n_win=5),
                "n_win=2.5": lambda d: dict(n_win=2.5), "topk=0": lambda d: dict(topk=0),
                "topk=-1": lambda d: dict(topk=-1), "scale=0": lambda d: dict(scale=0.0),
                "scale=nan": lambda d: dict(scale=float("nan")), "q 3-D": lambda d: dict(q=d["q"][0])}),
    OpSpec("match_attention", ma.match_attention,
           lambda: ma.example_inputs(batch=1, height=6, width=6, heads=2, head_dim=4, radius=1),
           same_dtype=("q", "k", "v"),
           bad={"radius=-1": lambda d: dict(radius=-1), "radius=3 (window larger than 6x6)": lambda d: dict(radius=3),
                "radius=1.5": lambda d: dict(radius=1.5), "zero heads": lambda d: _heads(d, 0),
                "3 heads (8 channels)": lambda d: _heads(d, 3), "size=(5, 6) (N=36)": lambda d: dict(size=(5, 6)),
                "size=(0, 36)": lambda d: dict(size=(0, 36)), "size=6": lambda d: dict(size=6),
                "scale=-1": lambda d: dict(scale=-1.0), "kv_batch_shift=0.5": lambda d: dict(kv_batch_shift=0.5),
                "centers (B, N, 2)": lambda d: dict(centers=d["centers"][:, :, 0])}),
    OpSpec("batch_norm_act", bna.batch_norm_act, lambda: bna.example_inputs(channels=4, voxels=6),
           same_dtype=("x", "residual"),
           bad={"running_var (C+1,)": lambda d: dict(running_var=torch.ones(5)), "weight=None": lambda d: dict(weight=None),
                "x 3-D": lambda d: dict(x=d["x"][None], residual=None), "act='gelu'": lambda d: dict(act="gelu"),
                "eps=-1": lambda d: dict(eps=-1.0)}),
    OpSpec("bias_grad", bg.bias_grad, lambda: bg.example_inputs(dtype=torch.float32, batch=1, size=3, channels=4),
           bad={"dim=4": lambda d: dict(dim=4), "dim=-5": lambda d: dict(dim=-5), "dim=1.0": lambda d: dict(dim=1.0),
                "dim=True": lambda d: dict(dim=True)}),
    OpSpec("channel_bias_act", cba.channel_bias_act,
           lambda: cba.example_inputs(batch=1, channels=4, height=4, width=4, residual=True, scale=True),
           same_dtype=("y", "residual", "bias", "scale"),
           bad={"bias (C+1,)": lambda d: dict(bias=torch.zeros(5)), "bias=None": lambda d: dict(bias=None),
                "y 3-D": lambda d: dict(y=d["y"][0], residual=None)}),
    OpSpec("consistency_mask", cmk.consistency_mask, lambda: cmk.example_inputs(batch=1, height=3, width=4),
           bad={"threshold=0": lambda d: dict(threshold=0.0), "threshold=nan": lambda d: dict(threshold=float("nan")),
                "threshold='8'": lambda d: dict(threshold="8"), "field of an odd batch": lambda d: dict(field=d["field"][:1]),
                "field (2B, H, W, 1)": lambda d: dict(field=d["field"][..., :1]),
                "field 3-D": lambda d: dict(field=d["field"][0]),
                "field of zero rows": lambda d: dict(field=d["field"][:, :0]),
                "grid of another size": lambda d: dict(grid=torch.zeros(4, 3, 2))}),
    OpSpec("convex_upsample", cvu.convex_upsample, lambda: cvu.example_inputs(batch=1, height=3, width=4, factor=2),
           bad={"factor=0": lambda d: dict(factor=0), "factor=2.0": lambda d: dict(factor=2.0),
                "factor=4 (mask for 2)": lambda d: dict(factor=4), "field 3-D": lambda d: dict(field=d["field"][0]),
                "mask of another size": lambda d: dict(mask=d["mask"][..., :2])}),
    OpSpec("depthwise_conv2d", dwc.depthwise_conv2d, lambda: dwc.example_inputs(channels=4, height=5, width=6),
           same_dtype=("x", "weight"),
           bad={"weight (C, 1, 4, 4)": lambda d: dict(weight=torch.zeros(4, 1, 4, 4)),
                "weight (C+1, 1, 5, 5)": lambda d: dict(weight=torch.zeros(5, 1, 5, 5)),
                "x 3-D": lambda d: dict(x=d["x"][0])}),
    OpSpec("depthwise_glu", dwg.depthwise_glu, lambda: dwg.example_inputs(batch=1, channels=4, height=5, width=6),
           same_dtype=("h", "weight", "bias"),
           bad={"weight (C, 1, 2, 2)": lambda d: dict(weight=torch.zeros(4, 1, 2, 2)),
                "h with 2C+2 channels": lambda d: dict(h=torch.zeros(1, 5, 6, 10)),
                "bias (C+1,)": lambda d: dict(bias=torch.zeros(5)), "h 3-D": lambda d: dict(h=d["h"][0]),
                "inplace=True with autograd": lambda d: dict(h=d["h"].requires_grad_(), inplace=True)}),
    OpSpec("group_norm_act", gna.group_norm_act,
           lambda: gna.example_inputs(batch=1, channels=8, height=4, width=4, num_groups=2),
           bad={"num_groups=0": lambda d: dict(num_groups=0), "num_groups=3 (8 channels)": lambda d: dict(num_groups=3),
                "num_groups=2.0": lambda d: dict(num_groups=2.0), "act='relu'": lambda d: dict(act="relu"),
                "eps=-1": lambda d: dict(eps=-1.0), "weight (4,)": lambda d: dict(weight=torch.ones(4)),
                "x 3-D": lambda d: dict(x=d["x"][0])}),
    OpSpec("grouped_query_attention", gqa.grouped_query_attention,
           lambda: gqa.example_inputs(batch=1, heads=4, kv_heads=2, tokens=5, head_dim=8),
           same_dtype=("q", "k", "v"), index_args=("group_sizes",), list_ok=("group_sizes",),
           bad={"3 KV heads for 4 query heads": lambda d: dict(k=d["k"][:, :1].expand(-1, 3, -1, -1),
                                                              v=d["v"][:, :1].expand(-1, 3, -1, -1), group_sizes=None),
                "0 KV heads": lambda d: dict(k=d["k"][:, :0], v=d["v"][:, :0], group_sizes=None),
                "group_sizes sum 2 != 4": lambda d: dict(group_sizes=[1, 1]),
                "group_sizes of 3 groups": lambda d: dict(group_sizes=[1, 1, 2]),
                "group_sizes negative": lambda d: dict(group_sizes=[5, -1]),
                "group_sizes floats": lambda d: dict(group_sizes=[2.0, 2.0]),
                "dropout_p=1.5": lambda d: dict(dropout_p=1.5), "scale=0": lambda d: dict(scale=0.0)}),
    OpSpec("layer_norm", ln.layer_norm, lambda: ln.example_inputs(tokens=6, dim=8),
           same_dtype=("x", "weight", "bias"),
           bad={"weight (4,)": lambda d: dict(weight=torch.ones(4)), "weight=None": lambda d: dict(weight=None),
                "eps=-1": lambda d: dict(eps=-1.0)}),
    OpSpec("multi_head_cross_attention", mhca.multi_head_cross_attention,
           lambda: mhca.example_inputs(batch=1, tokens=5, channels=8, num_heads=2),
           same_dtype=("q", "k", "v"),
           bad={"num_heads=0": lambda d: dict(num_heads=0), "num_heads=3 (8 channels)": lambda d: dict(num_heads=3),
                "num_heads=2.0": lambda d: dict(num_heads=2.0), "scale=0": lambda d: dict(scale=0.0),
                "k with other channels": lambda d: dict(k=d["k"][..., :4])}),
    OpSpec("rotated_box_iou", iou.rotated_box_iou, lambda: iou.example_inputs(n_boxes=16),
           bad={"mode='2d'": lambda d: dict(mode="2d"), "boxes (N, 5)": lambda d: dict(boxes_a=d["boxes_a"][:, :5]),
                "impl='triton'": lambda d: dict(impl="triton")}),
    OpSpec("rotated_box_nms", nms.rotated_box_nms, lambda: nms.example_inputs(n_boxes=16), index_args=("labels",),
           bad={"iou_threshold=1.5": lambda d: dict(iou_threshold=1.5),
                "iou_threshold=-0.1": lambda d: dict(iou_threshold=-0.1),
                "iou_threshold=nan": lambda d: dict(iou_threshold=float("nan")),
                "iou_threshold='0.5'": lambda d: dict(iou_threshold="0.5"),
                "pre_max_size=0": lambda d: dict(pre_max_size=0), "post_max_size=-1": lambda d: dict(post_max_size=-1),
                "scores (N-1,)": lambda d: dict(scores=d["scores"][:-1]),
                "labels (N-1,)": lambda d: dict(labels=d["labels"][:-1])}),
    OpSpec("scattered_linear_attention", sla.scattered_linear_attention,
           lambda: sla.example_inputs(n_voxels=64, num_heads=2, head_dim=4),
           same_dtype=("q", "k", "v"), index_args=("offsets",),
           bad={"offsets end before N": lambda d: dict(offsets=torch.cat([d["offsets"][:-1], d["offsets"][-1:] - 1])),
                "offsets decreasing": lambda d: dict(offsets=torch.tensor([0, 40, 20, 64])),
                "k of another shape": lambda d: dict(k=d["k"][:-1])}),
    OpSpec("sparse_depthwise_conv", sdc.sparse_depthwise_conv, _sdc_inputs,
           same_dtype=("features", "weight"), index_args=("pairs",),
           bad={"pairs (K-1, N)": lambda d: dict(pairs=d["pairs"][:-1]),
                "weight of other channels": lambda d: dict(weight=d["weight"][:, :2])}),
    OpSpec("sparse_conv", spc.sparse_conv, lambda: spc.example_inputs(n_voxels=64, channels=4),
           same_dtype=("features", "weight"), index_args=("table",),
           bad={"table (K-1, M)": lambda d: dict(table=d["table"][:-1]),
                "table entry past N": lambda d: dict(table=d["table"].clamp(min=64)),
                "weight of other Cin": lambda d: dict(weight=d["weight"][..., :2]),
                "bias (Cout+1,)": lambda d: dict(bias=torch.zeros(5)), "cache=[]": lambda d: dict(cache=[])}),
    OpSpec("submanifold_pairs", sdc.submanifold_pairs, _pairs_inputs, index_args=("coords",),
           bad={"kernel_size=(2, 3, 3)": lambda d: dict(kernel_size=(2, 3, 3)),
                "kernel_size=(3, 3)": lambda d: dict(kernel_size=(3, 3)),
                "spatial_shape=(0, 16, 16)": lambda d: dict(spatial_shape=(0, 16, 16)),
                "coords outside the grid": lambda d: dict(spatial_shape=(2, 2, 2))}),
    OpSpec("bi_wkv", wkv.bi_wkv, _wkv_inputs, same_dtype=("k", "v"),
           bad={"w (C+1,)": lambda d: dict(w=torch.zeros(d["k"].shape[-1] + 1)), "k 2-D": lambda d: dict(k=d["k"][0]),
                "columns=(5, 4) (T=16)": lambda d: dict(columns=(5, 4)), "columns=4": lambda d: dict(columns=4)}),
    OpSpec("re_wkv", wkv.re_wkv, _re_wkv_inputs, same_dtype=("k", "v"),
           bad={"hw=(4, 4) (T=12)": lambda d: dict(hw=(4, 4)), "hw=(3.0, 4)": lambda d: dict(hw=(3.0, 4)),
                "decay (2, C+1)": lambda d: dict(decay=torch.zeros(2, 5))}),
]
BY_NAME = {s.name: s for s in SPECS}


def _generated_cases() -> List[Tuple[str, str, Callable[[Dict], Dict]]]:
    cases = []
    for spec in SPECS:
        example = spec.inputs()
        tensors = [k for k, v in example.items() if isinstance(v, torch.Tensor)]
        for arg in tensors:
            is_index = arg in spec.index_args
            if len(tensors) > 1:  # a device mix needs two tensors
                cases.append((spec.name, f"{arg} on another device (meta)", lambda d, a=arg: {a: d[a].to("meta")}))
            if arg not in spec.list_ok:
                cases.append((spec.name, f"{arg} as a Python list", lambda d, a=arg: {a: d[a].tolist()}))
            if is_index:
                cases.append((spec.name, f"{arg} as float", lambda d, a=arg: {a: d[a].float()}))
            else:
                cases.append((spec.name, f"{arg} as int32", lambda d, a=arg: {a: d[a].to(torch.int32)}))
            if arg in spec.same_dtype:
                cases.append((spec.name, f"{arg} float64 among float32", lambda d, a=arg: {a: d[a].double()}))
        for case, change in spec.bad.items():
            cases.append((spec.name, case, change))
    return cases


CASES = _generated_cases()


@pytest.mark.parametrize("op", [s.name for s in SPECS])
def test_valid_call_runs(op):
    spec = BY_NAME[op]
    spec.fn(**spec.inputs())


@pytest.mark.parametrize("op, case, change", CASES, ids=[f"{i + 1}/{len(CASES)}-{op}-{case}" for i, (op, case, _) in
                                                        enumerate(CASES)])
def test_bad_parameter_is_named(op, case, change):
    spec = BY_NAME[op]
    kwargs = spec.inputs()
    kwargs.update(change(kwargs))
    expect_library_error(lambda: spec.fn(**kwargs))


def test_case_count(record_property):
    """The number of generated op cases (reported by the robustness summary)."""
    record_property("op_cases", len(CASES))
    print(f"\nrobustness: {len(CASES)} op x bad-parameter cases over {len(SPECS)} ops")
    assert len(CASES) >= 10 * len(SPECS) // 2
