"""Count the aten ops of one model forward on CPU (torch.profiler): a GPU-free proxy for kernel launches.

    python tools/count_ops.py MODEL [--model-kwargs k=v ...] [--shape h=256 w=256] [--batch 1]
        [--channels-last] [--dtype float32|bfloat16]

Prints the top-level aten and visionattn ops (those not called from inside another op) per name, and an
estimate of the full passes over activations a CUDA eager forward makes:

- every top-level op with an input of 3 or more dims (a feature map) that is not a view, i.e.
  convolutions, GEMMs on NHWC views, elementwise ops, norms, reductions; and every matrix product
  (``addmm``, ``addmm_``, ``mm``) over the (pixels, C) rows of a map, i.e. of more rows than images;
- plus one per convolution with a bias: cuDNN convolutions do not take the bias, so PyTorch adds it in
  a separate elementwise kernel (what the H200 profile in benchmarks/ffnet.md shows). A GEMM
  (``addmm``/``linear``) adds its bias in the cuBLAS epilogue and counts once.

Ops on weights only (e.g. a bias folded at call time, ``addmv`` on a (C_out, C_in) matrix) are
counted as ops and kernels but not as activation passes. This is a proxy: it does not time anything.
"""
import argparse
import collections
import sys
from typing import Dict, List

import torch
from mmengine.config import DictAction
from torch.profiler import ProfilerActivity, profile

VIEWS = {"aten::permute", "aten::view", "aten::reshape", "aten::flatten", "aten::expand", "aten::t",
         "aten::transpose", "aten::as_strided", "aten::unsqueeze", "aten::squeeze", "aten::slice",
         "aten::select", "aten::detach", "aten::alias", "aten::_unsafe_view", "aten::contiguous",
         "aten::empty", "aten::empty_like", "aten::lift_fresh", "aten::_reshape_alias", "aten::dropout"}
CONVS = {"aten::conv2d", "aten::convolution"}
ROW_GEMMS = {"aten::addmm": 1, "aten::addmm_": 1, "aten::mm": 0}  # name -> position of the activation rows
OPS = ("aten::", "visionattn::")  # visionattn's custom ops (e.g. channel_bias_act) count like aten ops


def count_ops(model: torch.nn.Module, x: torch.Tensor) -> Dict:
    """Counts for ``model(x)``: 'ops' (Counter of top-level op names), 'biased_convs', 'passes' (over
    activations, CUDA estimate) and 'kernels' (non-view ops + one bias kernel per biased conv)."""
    with torch.no_grad():
        model(x)  # warm up lazy init
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(x)
    ops, passes, biased, kernels = collections.Counter(), 0, 0, 0
    for ev in prof.events():
        if not ev.name.startswith(OPS):
            continue
        parent = ev.cpu_parent
        while parent is not None and not parent.name.startswith(OPS):
            parent = parent.cpu_parent
        if parent is not None:
            continue  # called from inside another op
        ops[ev.name] += 1
        kernels += ev.name not in VIEWS
        shapes: List = ev.input_shapes or []
        rows = shapes[ROW_GEMMS[ev.name]] if ev.name in ROW_GEMMS and len(shapes) > ROW_GEMMS[ev.name] else []
        on_rows = len(rows) == 2 and rows[0] > x.shape[0]  # a classifier's (images, C) matrix is not a map
        if ev.name in VIEWS or not (on_rows or any(isinstance(s, list) and len(s) >= 3 for s in shapes)):
            continue
        passes += 1
        if ev.name in CONVS and len(shapes) > 2 and shapes[2]:  # (input, weight, bias, ...)
            biased += 1
            passes += 1
    return {"ops": ops, "passes": passes, "biased_convs": biased, "kernels": kernels + biased}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=DictAction, metavar="K=V")
    p.add_argument("--shape", nargs="*", default={}, action=DictAction, metavar="K=V", help="h=, w=")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = p.parse_args(argv)

    import visionattn

    kwargs, shape = args.model_kwargs, args.shape
    model = visionattn.create_model(args.model, **kwargs).eval().to(getattr(torch, args.dtype))
    size = model.pretrained_cfg.get("input_size", (3, 224, 224)) if hasattr(model, "pretrained_cfg") else (3, 224, 224)
    x = torch.randn(args.batch, size[0], shape.get("h", size[1]), shape.get("w", size[2]),
                    dtype=getattr(torch, args.dtype))
    if args.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    res = count_ops(model, x)
    for name, n in sorted(res["ops"].items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{n:6d}  {name}")
    print(f"{sum(res['ops'].values()):6d}  top-level ops")
    print(f"{res['biased_convs']:6d}  biased convolutions (a separate bias kernel each under cuDNN)")
    print(f"{res['kernels']:6d}  estimated CUDA kernels (non-view ops + bias kernels)")
    print(f"{res['passes']:6d}  estimated CUDA passes over activations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
