"""Saving a network as a deployable file: ONNX, a ``torch.export`` program, or TorchScript.

Every op is exported through its PyTorch path (:func:`visionattn.ops.dispatch.portable_ops`): the
file holds standard ATen / ONNX operators instead of the ``visionattn::`` Triton custom ops, so it
runs in onnxruntime or on any device. Two ATen ops that ONNX's standard translation lacks get an
ONNX function of their own here (:data:`ONNX_TRANSLATIONS`): the stable sort and ``searchsorted``
of the key-norm-driven GQA allocation.

Formats:

- ``onnx``: ``torch.onnx.export(..., dynamo=True)`` (through ``torch.export``), opset 18 or later;
  needs the ``onnx`` and ``onnxscript`` packages (``pip install visionattn[dev]``).
- ``export``: a ``torch.export`` ExportedProgram saved with ``torch.export.save`` (``.pt2``), loaded
  with ``torch.export.load(path).module()``.
- ``torchscript``: ``torch.jit.trace`` (the traced graph of this input size), loaded with
  ``torch.jit.load``. A network whose output mixes tensors and lists returns its tensors as one
  flat tuple (dict values in order, lists expanded).

Files have the static input shape they were exported with. Networks that cannot be exported say
why (:data:`UNSUPPORTED`). ``python tools/export.py MODEL --format onnx --out model.onnx`` is the
command line (:mod:`visionattn.cli.export`).
"""
import fnmatch
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .extras import require_extra
from .ops.dispatch import portable_ops

FORMATS = ("onnx", "export", "torchscript")
SUFFIXES = {"onnx": ".onnx", "export": ".pt2", "torchscript": ".pt"}

# family (or name pattern) -> {format: why it cannot be exported}
UNSUPPORTED: Dict[str, Dict[str, str]] = {
    "scatterformer": {fmt: (
        "ScatterFormer works on point clouds through voxelisation with a data-dependent number of "
        "voxels, sparse 3-D convolutions (spconv or Triton kernels without an ATen/ONNX form) and "
        "per-voxel scatter/sort by coordinates; none of this has a static-shape graph. Run it in "
        "PyTorch (visionattn.create_model) or torch.compile it instead") for fmt in FORMATS},
}


UNSUPPORTED["matchstereo"] = {"onnx": (
    "the ONNX file is written and runs in onnxruntime, but its outputs differ from PyTorch (the initial "
    "global-matching field by pixels at 192x224; onnx 1.23.2, onnxruntime 1.32.0): an operator of the "
    "initial matching is translated wrongly. Use --format export or torchscript, which match PyTorch")}


class ExportError(RuntimeError):
    """A network cannot be saved in the asked format; the message says why."""


def unsupported_reason(family: str, fmt: str) -> Optional[str]:
    """Why ``family`` cannot be exported to ``fmt``, or None when it can."""
    for pattern, reasons in UNSUPPORTED.items():
        if fnmatch.fnmatch(family, pattern) and fmt in reasons:
            return reasons[fmt]
    return None


# --- ONNX translations of ATen ops the standard ONNX exporter lacks ---------------------------

def _onnx_translations() -> Dict[Callable, Callable]:
    op = require_extra("onnxscript").opset18

    def sort_stable(self, stable=None, dim: int = -1, descending: bool = False):
        # ONNX TopK returns equal values in index order (spec): the stable sort when k = the size.
        k = op.Reshape(op.Gather(op.Shape(self), dim), op.Constant(value_ints=[1]))
        return op.TopK(self, k, axis=dim, largest=1 if descending else 0, sorted=1)

    def searchsorted(sorted_sequence, self, out_int32: bool = False, right: bool = False, side=None,
                     sorter=None):
        # index = how many entries of the (sorted) row are < value (<= with right=True)
        rows = op.Unsqueeze(sorted_sequence, op.Constant(value_ints=[-2]))  # (..., 1, G)
        values = op.Unsqueeze(self, op.Constant(value_ints=[-1]))  # (..., H, 1)
        hit = op.LessOrEqual(rows, values) if right or side == "right" else op.Less(rows, values)
        count = op.ReduceSum(op.Cast(hit, to=7), op.Constant(value_ints=[-1]), keepdims=0)  # int64
        return op.Cast(count, to=6) if out_int32 else count

    return {torch.ops.aten.sort.stable: sort_stable, torch.ops.aten.searchsorted.Tensor: searchsorted}


# --- export -----------------------------------------------------------------------------------

def flat_outputs(out) -> List[torch.Tensor]:
    """Every tensor of a (nested) output in order: dicts by their insertion order, as the exporters."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flat_outputs(o)]
    return []


class _FlatOutputs(nn.Module):
    """``model``'s outputs as a flat tuple of tensors (:func:`flat_outputs` order): what
    ``torch.jit.trace`` takes from a network whose output mixes tensors and lists (MatchStereo)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return tuple(flat_outputs(self.model(*inputs)))


def _plain(out) -> bool:
    """A tensor, or a tuple/list/dict of tensors: what ``torch.jit.trace`` can type."""
    if isinstance(out, torch.Tensor):
        return True
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else None
    return values is not None and all(isinstance(v, torch.Tensor) for v in values)


def _output_names(out) -> Optional[List[str]]:
    if isinstance(out, dict) and all(isinstance(v, torch.Tensor) for v in out.values()):
        return list(out)
    return None


def export_model(model: nn.Module, inputs: Sequence[torch.Tensor], fmt: str, out: Union[str, Path],
                 family: str = "", opset: Optional[int] = None) -> Path:
    """Save ``model`` (in eval mode) called on ``inputs`` as ``fmt`` at ``out``; returns the path.

    Args:
        model: the network; it is put in eval mode.
        inputs: positional example inputs (their shapes are the file's input shapes).
        fmt: one of :data:`FORMATS`.
        out: the file to write (parent folders are created).
        family: the network's family, for the :data:`UNSUPPORTED` check and messages.
        opset: ONNX opset (default: the exporter's, at least 18).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {list(FORMATS)}")
    reason = unsupported_reason(family, fmt)
    if reason:
        raise ExportError(f"{family} cannot be exported to {fmt}: {reason}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs = tuple(inputs)
    model = model.eval()
    what = f"{family or type(model).__name__} -> {fmt}"
    with portable_ops(), torch.no_grad():
        try:
            if fmt == "onnx":
                _require_onnx()
                names = _output_names(model(*inputs))
                kwargs = dict(opset_version=opset) if opset else {}
                torch.onnx.export(model, inputs, str(out), dynamo=True, external_data=False,
                                  custom_translation_table=_onnx_translations(), output_names=names,
                                  input_names=[f"input{i}" for i in range(len(inputs))], verbose=False,
                                  **kwargs)
            elif fmt == "export":
                torch.export.save(torch.export.export(model, inputs), str(out))
            else:
                target = model if _plain(model(*inputs)) else _FlatOutputs(model)
                traced = torch.jit.trace(target, inputs, strict=False, check_trace=False)
                torch.jit.save(traced, str(out))
        except ExportError:
            raise
        except Exception as err:  # the exporters raise many types; name the model, the format and the cause
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"{what} failed: {type(err).__name__}: {first[:500]}") from err
    return out


def _require_onnx() -> None:
    for module in ("onnx", "onnxscript"):
        try:
            require_extra(module)
        except ImportError as err:
            raise ExportError(str(err)) from err


def run_exported(path: Union[str, Path], fmt: str, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Run a file written by :func:`export_model` on ``inputs``: onnxruntime (CPU) for ONNX,
    ``torch.export.load`` / ``torch.jit.load`` otherwise. Returns the flat outputs (CPU tensors)."""
    inputs = tuple(inputs)
    if fmt == "onnx":
        try:
            ort = require_extra("onnxruntime")
        except ImportError as err:
            raise ExportError(str(err)) from err
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
        return [torch.from_numpy(o) for o in session.run(None, feed)]
    with torch.no_grad():
        if fmt == "export":
            out = torch.export.load(str(path)).module()(*inputs)
        elif fmt == "torchscript":
            out = torch.jit.load(str(path))(*inputs)
        else:
            raise ValueError(f"unknown export format {fmt!r}; choose from {list(FORMATS)}")
    return [t.cpu() for t in flat_outputs(out)]


def compare(model: nn.Module, path: Union[str, Path], fmt: str, inputs: Sequence[torch.Tensor]
            ) -> List[Tuple[Tuple[int, ...], float]]:
    """(shape, max |exported - PyTorch|) per output; the PyTorch side runs ``model`` eagerly on the
    same portable ops. Raises :class:`ExportError` when the outputs' number or shapes differ."""
    with portable_ops(), torch.no_grad():
        expected = [t.cpu() for t in flat_outputs(model.eval()(*inputs))]
    got = run_exported(path, fmt, inputs)
    if len(got) != len(expected):
        raise ExportError(f"{path} gives {len(got)} outputs, the model {len(expected)}")
    result = []
    for g, e in zip(got, expected):
        if tuple(g.shape) != tuple(e.shape):
            raise ExportError(f"{path}: output shape {tuple(g.shape)} differs from the model's {tuple(e.shape)}")
        diff = (g.double() - e.double()).abs().max().item() if e.numel() and e.is_floating_point() \
            else float((g != e).sum().item())
        result.append((tuple(e.shape), diff))
    return result
