"""Export a network to ONNX, a torch.export program or TorchScript, and check the file against PyTorch.

    visionattn-export MODEL [--checkpoint F | --pretrained] --format onnx|export|torchscript \\
        [--shape h=H w=W] [--batch 1] [--model-kwargs K=V ...] [--out FILE] [--opset N] [--no-check]

MODEL: any name of ``visionattn.list_models()`` (timm backbones and task networks), a model-zoo
entry name with ``--pretrained`` (``biformer_small.in1k``), or a timm model. The inputs are the
network's example inputs (task networks) or a (batch, 3, H, W) image at the model's default size;
``--shape`` overrides the size. After writing, the file is run (onnxruntime for ONNX) on the same
inputs and the largest difference to the PyTorch model is printed; ``--atol`` makes a larger one
an error. (``python tools/export.py ...`` in a clone is the same command.)
"""
import argparse
import sys

import torch
from mmengine.config import DictAction

from .. import create_model
from ..export import FORMATS, SUFFIXES, ExportError, compare, export_model, unsupported_reason
from .benchmark import model_inputs
from .console import ArgumentParser, UsageError, cli_main


def _family(name: str) -> str:
    """The family of ``name`` without importing a lazily declared module (whose extra may be missing)."""
    from ..factory import model_family
    from ..registry import NETWORKS, lazy_names

    lazy = lazy_names("networks")
    if name in lazy and not dict.__contains__(NETWORKS, name):
        return lazy[name].rsplit(".", 1)[-1]
    return model_family(name)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--format", required=True, choices=FORMATS)
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="weights file or URL (ours or the family's official format)")
    weights.add_argument("--pretrained", action="store_true", help="the model-zoo weights of MODEL")
    p.add_argument("--shape", nargs="*", default={}, action=DictAction, metavar="K=V",
                   help="input size: h=, w= (task networks: their example_inputs keywords)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--model-kwargs", nargs="*", default={}, action=DictAction, metavar="K=V",
                   help="create_model keyword arguments, e.g. num_classes=10")
    p.add_argument("--out", help="output file (default: MODEL + .onnx / .pt2 / .pt)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-check", action="store_true", help="do not run the file against PyTorch")
    p.add_argument("--atol", type=float, default=None,
                   help="fail when an output differs from PyTorch by more than this")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch must be >= 1, got {args.batch}")
    return args


def _architecture(name: str, pretrained: bool) -> str:
    """The network a zoo entry name stands for (``biformer_small.in1k`` -> ``biformer_small``), else ``name``."""
    from .. import hub

    return hub.get_entry(name).model if pretrained and hub.has_entry(name) else name


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    arch = _architecture(args.model, args.pretrained)
    family = _family(arch)
    reason = unsupported_reason(family, args.format)
    if reason:  # before building (the network may need an extra that is not installed)
        raise UsageError(f"{args.model} ({family}) cannot be exported to {args.format}: {reason}")
    out = args.out or args.model.replace("/", "_") + SUFFIXES[args.format]
    try:
        model = create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                             **dict(args.model_kwargs)).eval()
        inputs = model_inputs(arch, model, args.batch, dict(args.shape), "cpu", torch.float32)
        path = export_model(model, inputs, args.format, out, family=family, opset=args.opset)
    except ExportError as err:
        raise UsageError(str(err)) from err
    shapes = ", ".join(str(tuple(t.shape)) for t in inputs if isinstance(t, torch.Tensor))
    print(f"wrote {path} ({args.format}, inputs {shapes})")
    if args.no_check:
        return 0
    diffs = compare(model, path, args.format, inputs)
    worst = max((d for _, d in diffs), default=0.0)
    for shape, diff in diffs:
        print(f"  output {shape}: max |file - PyTorch| = {diff:.3g}")
    if args.atol is not None and worst > args.atol:
        print(f"error: the file differs from PyTorch by {worst:.3g} > --atol {args.atol}", file=sys.stderr)
        return 1
    return 0
