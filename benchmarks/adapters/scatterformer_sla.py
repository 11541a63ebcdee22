"""The official ScatterFormer SLA kernels as an ``--official`` row of ``tools/benchmark.py``.

    SCATTERFORMER_OFFICIAL=/path/to/ScatterFormer python tools/benchmark.py scattered_linear_attention \\
        --device cuda --mode train --impl reference,triton \\
        --official benchmarks/adapters/scatterformer_sla.py:scattered_linear_attention

``SCATTERFORMER_OFFICIAL`` is a checkout of skyhehe123/ScatterFormer or its
``pcdet/models/model_utils/scatterformer_utils.py`` itself. Nothing of it is part of this repository:
this adapter reads that file, keeps only its plain-Triton parts (the ``@triton.jit`` kernels, the
``ScatterMatmulKV``/``ScatterMatmulQC`` autograd functions and ``BLOCK_SIZE``; the rest of the file
imports spconv, torch_scatter and a CUDA extension) and imports them from a temporary file.

``scattered_linear_attention(q, k, v, offsets)`` then runs what the official ``SLALayer.forward``
runs between its qkv and output projections: ReLU on q and k, ``scatter_matmul_kv``,
``torch_scatter.scatter_add`` of k over the windows, ``scatter_matmul_qc``, the denominator and the
division. The window metadata the official stage computes once for its three layers (window starts,
counts, each voxel's window) is computed once per ``offsets`` tensor here too, outside the timed
calls. ``torch_scatter.scatter_add`` is used when installed; otherwise its computation is repeated
(a zero tensor and ``scatter_add_`` with the index broadcast over the trailing dims, its size read
from ``index.max()``, which waits for the GPU as torch_scatter does without ``dim_size``).
"""
import ast
import importlib.util
import os
import tempfile
from pathlib import Path

import torch

_KEEP = {"_scatter_kv_fwd_kernel", "_scatter_kv_bwd_kernel", "_scatter_qc_fwd_kernel", "_scatter_qc_bwd_kernel",
         "ScatterMatmulKV", "ScatterMatmulQC", "BLOCK_SIZE", "scatter_matmul_kv", "scatter_matmul_qc"}
_module = None
_windows = {}


def _source_file() -> Path:
    root = os.environ.get("SCATTERFORMER_OFFICIAL")
    if not root:
        raise RuntimeError("set SCATTERFORMER_OFFICIAL to a checkout of skyhehe123/ScatterFormer (or to its "
                           "pcdet/models/model_utils/scatterformer_utils.py)")
    path = Path(root)
    if path.is_dir():
        path = path / "pcdet" / "models" / "model_utils" / "scatterformer_utils.py"
    if not path.is_file():
        raise FileNotFoundError(f"SCATTERFORMER_OFFICIAL: {path} does not exist")
    return path


def _official():
    """The official kernels and autograd functions, imported from a temporary copy of just those parts."""
    global _module
    if _module is not None:
        return _module
    text = _source_file().read_text()
    lines = text.splitlines()
    kept = ["import torch", "import triton", "import triton.language as tl", ""]
    found = set()
    for node in ast.parse(text).body:
        names = ({node.name} if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                 else {t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)})
        if names & _KEEP:
            found |= names & _KEEP
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept += lines[first - 1:node.end_lineno] + [""]
    if found != _KEEP:
        raise RuntimeError(f"{_source_file()} lacks {sorted(_KEEP - found)}: not the expected official file")
    folder = Path(tempfile.mkdtemp(prefix="scatterformer_official_"))
    path = folder / "scatterformer_sla_kernels.py"
    path.write_text("\n".join(kept))  # Triton reads kernel source from the file, so it must be a real one
    spec = importlib.util.spec_from_file_location("scatterformer_sla_kernels", path)
    _module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_module)
    return _module


def _scatter_add(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    try:
        import torch_scatter
    except ImportError:
        size = int(index.max()) + 1
        out = src.new_zeros((size, *src.shape[1:]))
        return out.scatter_add_(0, index.view(-1, *([1] * (src.dim() - 1))).expand_as(src), src)
    return torch_scatter.scatter_add(src, index, dim=0)


def _window_metadata(offsets: torch.Tensor, n: int):
    """(starts (M,), counts (M,), window of each voxel (N,)), as the official stage builds them."""
    key = (offsets.data_ptr(), offsets.shape[0], n)
    if key not in _windows:
        counts = offsets[1:] - offsets[:-1]
        win = torch.repeat_interleave(torch.arange(counts.shape[0], device=offsets.device), counts, output_size=n)
        _windows[key] = (offsets[:-1].contiguous(), counts.contiguous(), win)
    return _windows[key]


def scattered_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor
                               ) -> torch.Tensor:
    """The official SLA between the projections; q, k, v (N, h, d), offsets (M+1,) as in ours."""
    official = _official()
    starts, counts, win = _window_metadata(offsets, q.shape[0])
    q = torch.relu(q).contiguous()
    k = torch.relu(k).contiguous()
    kv = official.scatter_matmul_kv(k, v.contiguous(), starts, counts)
    s = _scatter_add(k, win)
    y = official.scatter_matmul_qc(q, kv, starts, counts)
    z = torch.sum(s[win, ...] * q, -1, keepdim=True)
    return y / (z + 1e-6)
