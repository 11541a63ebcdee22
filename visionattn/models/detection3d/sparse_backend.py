"""The sparse-convolution backend of the voxel networks: index pairs from spconv or PyTorch, the
convolution in PyTorch or spconv-triton.

Model code imports only this module. It exposes the few spconv-API pieces the networks use:

- :func:`sparse_tensor` builds the library's ``SparseConvTensor`` (features (N, C), indices (N, 4)
  int32 ``[batch, z, y, x]``, spatial shape ``(Z, Y, X)``) for the device of the features;
- :class:`SubMConv3d`, :class:`SparseConv3d`: modules holding their weight in spconv's KRSC layout
  ``(out, kz, ky, kx, in)`` (the layout of spconv 2.x checkpoints, OpenPCDet's included) and an
  optional bias; at each call they run the convolution of the library that fits the input's
  device, so ``model.cuda()`` / ``model.cpu()`` switch library without touching the weights;
- :class:`SparseSequential`: spconv's ``SparseSequential`` semantics (dense modules such as
  BatchNorm1d/ReLU act on ``.features``) for modules of both libraries.

Backends (the ``3d`` extra installs spconv and spconv-triton):

- ``spconv`` on CPU tensors: spconv's CPU wheel generates the index pairs (cached per ``indice_key``
  as spconv caches them; its output order is the official code's) and the convolution is the
  library's :func:`~visionattn.ops.sparse_conv.sparse_conv` on that neighbour table (:func:`_conv_pairs`;
  on CPU its PyTorch reference, with PyTorch's autograd). The wheel's own CPU compute is not
  used: with more than one CPU thread its gather/scatter loop returns wrong rows now and then
  (measured with spconv 2.3.8: 3 of 12 identical calls off by up to 0.49 on unit-scale features),
  its backward asks for a CUDA stream (upstream spconv issue #366) and it refuses a bias in eval
  mode. On CUDA tensors ``spconv`` means spconv's own CUDA build.
- ``torch``: the index pairs from sorting and binary search (:func:`torch_pairs`; submanifold tables
  from :func:`~visionattn.ops.submanifold_pairs.submanifold_pairs`, its Triton kernel on CUDA), the
  same :func:`~visionattn.ops.sparse_conv.sparse_conv`: its Triton gather-GEMM on CUDA (one kernel
  per convolution, no host syncs), its PyTorch reference on CPU; nothing to install, no autotuning.
- ``spconv_triton``: pure Triton with spconv's API and numerics, CUDA only. Its kernels autotune
  over a few dozen tile configurations per layer shape at first use (a minute to minutes on a fresh
  machine; Triton caches the choice on disk). Slower than ``torch`` on the Waymo network (measured
  in docs/scatterformer.md).

Default: ``spconv`` on CPU, ``torch`` on CUDA. ``VISIONATTN_SPARSE_BACKEND=spconv|torch|spconv_triton``
forces one.
"""
import importlib
import os
import warnings
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ...extras import require_extra
from ...ops.sparse_conv import offset_pairs, sparse_conv
from ...ops.submanifold_pairs import submanifold_pairs

BACKENDS = ("spconv", "torch", "spconv_triton")
_ENV = "VISIONATTN_SPARSE_BACKEND"


def _try_import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_LIBS: Dict[str, object] = {}
for _name in BACKENDS:
    _lib = _try_import(f"{_name}.pytorch")
    if _lib is not None:
        _LIBS[_name] = _lib
if not _LIBS:  # neither library: raise the message that names the extra to install
    require_extra("spconv.pytorch")


def available_backends() -> Tuple[str, ...]:
    """The backends that run here, e.g. ``('spconv', 'torch', 'spconv_triton')``."""
    return tuple(name for name in BACKENDS if name == "torch" or name in _LIBS)


def backend_for(device: Union[torch.device, str]) -> str:
    """Name of the library that runs sparse convolutions on ``device``."""
    device = torch.device(device)
    forced = os.environ.get(_ENV)
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{_ENV}={forced!r} is not a sparse backend; use one of {BACKENDS}")
        if forced != "torch" and forced not in _LIBS:
            raise ImportError(f"{_ENV}={forced!r} but {forced} is not installed "
                              f"({'pip install -e .[3d]' if forced == 'spconv' else 'pip install spconv-triton'})")
        if forced == "spconv_triton" and device.type == "cpu":
            raise ValueError(f"{_ENV}=spconv_triton cannot run CPU tensors (its kernels are GPU-only); "
                             f"unset it or move the model to a GPU")
        return forced
    if device.type == "cpu":
        return "spconv" if "spconv" in _LIBS else "torch"
    return "torch"


class SparseTensor:
    """The ``torch`` backend's sparse tensor: the part of spconv's ``SparseConvTensor`` the networks use
    (``features``, ``indices``, ``spatial_shape``, ``batch_size``, ``indice_dict``, ``replace_feature``)."""

    def __init__(self, features: torch.Tensor, indices: torch.Tensor, spatial_shape: Sequence[int], batch_size: int):
        self.features, self.indices = features, indices
        self.spatial_shape, self.batch_size = [int(s) for s in spatial_shape], int(batch_size)
        self.indice_dict: Dict[str, object] = {}

    def replace_feature(self, features: torch.Tensor) -> "SparseTensor":
        out = SparseTensor(features, self.indices, self.spatial_shape, self.batch_size)
        out.indice_dict = self.indice_dict  # same voxels: the cached index pairs stay valid (spconv does the same)
        return out


def _backend_of(x) -> str:
    if isinstance(x, SparseTensor):
        return "torch"
    for name, lib in _LIBS.items():
        if isinstance(x, lib.SparseConvTensor):
            return name
    raise TypeError(f"expected a sparse tensor of {available_backends()}, got {type(x).__name__}")


def sparse_tensor(features: torch.Tensor, indices: torch.Tensor, spatial_shape: Sequence[int], batch_size: int):
    """The backend's sparse tensor: features (N, C), indices (N, 4) ``[batch, z, y, x]``, shape (Z, Y, X)."""
    name = backend_for(features.device)
    cls = SparseTensor if name == "torch" else _LIBS[name].SparseConvTensor
    return cls(features, indices.int().contiguous(), [int(s) for s in spatial_shape], int(batch_size))


_NOTICED = []


def _notice_autotuning() -> None:
    """Say once per process why the first spconv-triton frame is slow: it prints nothing while it
    autotunes, so a first forward looks hung for a minute."""
    if not _NOTICED:
        _NOTICED.append(True)
        warnings.warn("spconv_triton autotunes its kernels at the first use of each layer shape and precision: "
                      "the first frame can take a minute or more (Triton keeps the choices on disk for later "
                      "runs); the default GPU backend 'torch' does not autotune", stacklevel=3)


class _SparseConv(nn.Module):
    """Weight (out, kz, ky, kx, in) and bias (out,) of one sparse convolution; runs the library's
    convolution of the input's device (see the module docstring)."""

    _kind = ""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, indice_key: Optional[str] = None):
        super().__init__()
        self._args = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                          stride=stride, padding=padding, bias=bias, indice_key=indice_key)
        first = next(iter(_LIBS))
        proto = getattr(_LIBS[first], self._kind)(**self._args)  # the library's own initialisation
        self.weight = proto.weight
        self.bias = proto.bias
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = proto.kernel_size, proto.stride, proto.padding
        self.indice_key = indice_key
        self.subm = self._kind == "SubMConv3d"
        self._impls = {}  # library name -> that library's module, weight-less (ours are passed in)
        self._impls[first] = self._weightless(proto)

    @staticmethod
    def _weightless(module: nn.Module) -> nn.Module:
        module._parameters.clear()
        return module

    def _impl(self, name: str) -> nn.Module:
        if name not in self._impls:
            with torch.device("meta"):
                self._impls[name] = self._weightless(getattr(_LIBS[name], self._kind)(**self._args))
        return self._impls[name]

    def forward(self, x):
        name = _backend_of(x)
        if name == "torch" or (name == "spconv" and not x.features.is_cuda):
            return _conv_pairs(self, x, *(neighbour_table if name == "torch" else _spconv_pairs)(self, x))
        if name == "spconv_triton":
            _notice_autotuning()
        impl = self._impl(name)
        impl.training = self.training  # pair generation keeps the backward tables only in training
        weight, bias = self.weight, self.bias
        features = x.features
        if features.dtype != weight.dtype and torch.is_autocast_enabled(features.device.type):
            # as autocast does for a dense convolution: the weights in the activations' precision
            # (spconv-triton's kernels take one dtype and fail to compile on bf16 features and fp32 weights)
            weight = weight.to(features.dtype)
            bias = None if bias is None else bias.to(features.dtype)
        return impl._conv_forward(self.training, x, weight, bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, "
                f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, bias={self.bias is not None}, "
                f"indice_key={self.indice_key!r}")


class NeighbourTable:
    """A convolution's (K, M) neighbour table (``table[k, o]`` = input row of output ``o`` at kernel offset
    ``k``, or -1) and ``cache``, the dict in which :func:`~visionattn.ops.sparse_conv.sparse_conv` keeps
    what it derives from the table (per-offset pairs, row orders, the inverse table) at first use.
    Iterating gives per offset the ``(output rows, input rows)`` pairs that exist."""

    def __init__(self, table: torch.Tensor):
        self.table = table
        self.cache: Dict[object, object] = {}

    def __len__(self) -> int:
        return self.table.shape[0]

    def __iter__(self):
        return iter(offset_pairs(self.table, self.cache))


def _cache_key(backend: str, indice_key: str) -> str:
    return f"visionattn_{backend}/{indice_key}"


def _cached(conv: _SparseConv, x, backend: str, make):
    """``(out_indices, out_shape, NeighbourTable)`` of ``conv`` on ``x``, cached in ``x.indice_dict`` under
    the conv's ``indice_key`` (the layers of one key share the table and what is derived from it)."""
    key = _cache_key(backend, conv.indice_key) if conv.indice_key is not None else None
    if key is not None and key in x.indice_dict:
        return x.indice_dict[key]
    out_indices, out_shape, table = make()
    result = (out_indices, list(out_shape), NeighbourTable(table))
    if key is not None:
        x.indice_dict[key] = result
    return result


def _spconv_pairs(conv: _SparseConv, x):
    """The table from spconv's CPU pair generation (the official code's output order)."""

    def make():
        ops = importlib.import_module("spconv.pytorch.ops")
        algo = importlib.import_module("spconv.core").ConvAlgo.Native
        shape = [int(s) for s in x.spatial_shape]
        ksize, stride, padding = list(conv.kernel_size), list(conv.stride), list(conv.padding)
        out_indices, pairs, counts = ops.get_indice_pairs(x.indices, x.batch_size, shape, algo, ksize, stride,
                                                          padding, [1] * len(shape), [0] * len(shape), conv.subm, False)
        if conv.subm:
            out_indices = x.indices
        counts = counts.tolist()
        K = len(counts)
        table = torch.full((K, out_indices.shape[0]), -1, dtype=torch.int64, device=x.indices.device)
        for k in range(K):
            if conv.subm and k == K // 2:  # centre of a submanifold kernel: every voxel sees itself
                table[k] = torch.arange(out_indices.shape[0], device=x.indices.device)
                continue
            # spconv stores the counts of the first half of a submanifold kernel (the second half mirrors it)
            n = counts[K - 1 - k] if conv.subm and k > K // 2 else counts[k]
            table[k, pairs[1, k, :n].long()] = pairs[0, k, :n].long()
        out_shape = shape if conv.subm else ops.get_conv_output_size(shape, ksize, stride, padding, [1] * len(shape))
        return out_indices, out_shape, table

    return _cached(conv, x, "spconv", make)


def neighbour_table(conv: _SparseConv, x):
    """``(out_indices, out_shape, NeighbourTable)`` of ``conv`` on the ``torch``-backend tensor ``x`` from
    :func:`torch_pairs` (any device), built once per ``indice_key`` and kept in ``x.indice_dict``."""
    return _cached(conv, x, "torch", lambda: torch_pairs(x.indices, x.spatial_shape, conv.kernel_size,
                                                         conv.stride, conv.padding, conv.subm))


def torch_pairs(indices: torch.Tensor, spatial_shape: Sequence[int], kernel_size: Sequence[int],
                stride: Sequence[int], padding: Sequence[int], subm: bool):
    """Index pairs of a sparse convolution (dilation 1) in PyTorch.

    Returns ``(out_indices (M, 4) int32, out_shape [Z', Y', X'], table (K, M) int64)`` where
    ``table[k, o]`` is the input row seen by output ``o`` through kernel offset ``k`` (row-major over
    (kz, ky, kx), the KRSC weight's order), or -1. A submanifold convolution's outputs are its inputs
    in their order; a strided convolution's outputs are the sites whose receptive field holds an input
    voxel, sorted by (batch, z, y, x). Cross-correlation: output ``p`` reads input ``p * stride - padding + k``.
    """
    shape_l, ksize_l = [int(s) for s in spatial_shape], [int(k) for k in kernel_size]
    stride_l, pad_l = [int(s) for s in stride], [int(p) for p in padding]
    if subm:  # outputs = inputs, in their order: the submanifold neighbour table op
        return indices, shape_l, submanifold_pairs(indices, shape_l, ksize_l)
    # sizes as Python ints, per axis: a shape read back from the GPU would wait for it, and a tensor made
    # from a Python list is a host-to-device copy at each call
    out_l = [(s + 2 * p - k) // t + 1 for s, p, k, t in zip(shape_l, pad_l, ksize_l, stride_l)]
    axes = [torch.arange(k, device=indices.device) for k in ksize_l]
    offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)  # (K, 3)
    idx = indices.long()
    batch, zyx = idx[:, 0], idx[:, 1:]
    if idx.shape[0] == 0:
        return indices[:0], out_l, torch.empty(len(offsets), 0, dtype=torch.int64, device=indices.device)
    # input q reaches output p = (q + padding - k) / stride through offset k, when that divides and lies inside
    valid = torch.ones(len(offsets), idx.shape[0], dtype=torch.bool, device=indices.device)  # (K, N)
    key = batch[None]  # (1, N), then the row-major key over (batch, Z', Y', X') of p, (K, N)
    for axis in range(3):
        shifted = zyx[None, :, axis] + pad_l[axis] - offsets[:, axis, None]  # (K, N)
        p = torch.div(shifted, stride_l[axis], rounding_mode="floor")
        valid = valid & (shifted - p * stride_l[axis] == 0) & (p >= 0) & (p < out_l[axis])
        key = key * out_l[axis] + p
    out_keys = torch.unique(key[valid])  # sorted
    m = len(out_keys)
    # one input per (offset, output); pairs that do not exist go to a spare last column (no nonzero,
    # which would wait for the GPU)
    column = torch.where(valid, torch.searchsorted(out_keys, key), m)  # (K, N)
    table = torch.full((len(offsets), m + 1), -1, dtype=torch.int64, device=indices.device)
    table.scatter_(1, column, torch.arange(idx.shape[0], device=indices.device).expand_as(column))
    table = table[:, :m].contiguous()
    rest, x_ = torch.div(out_keys, out_l[2], rounding_mode="floor"), out_keys % out_l[2]
    rest, y_ = torch.div(rest, out_l[1], rounding_mode="floor"), rest % out_l[1]
    b_, z_ = torch.div(rest, out_l[0], rounding_mode="floor"), rest % out_l[0]
    out_indices = torch.stack([b_, z_, y_, x_], 1).int()
    return out_indices, out_l, table


def submanifold_keys(module: nn.Module) -> Tuple[str, ...]:
    """The ``indice_key`` of every sparse convolution in ``module``, in order, each once; all must be keyed
    submanifold convolutions (which keep their input's rows)."""
    keys = []
    for conv in module.modules():
        if isinstance(conv, _SparseConv):
            if not conv.subm or conv.indice_key is None:
                raise ValueError(f"{conv!r}: expected keyed submanifold convolutions only (they keep the rows)")
            if conv.indice_key not in keys:
                keys.append(conv.indice_key)
    return tuple(keys)


def submanifold_tables(module: nn.Module, x: SparseTensor) -> Tuple[torch.Tensor, ...]:
    """The (K, N) neighbour tables of ``module``'s convolutions on the ``torch``-backend tensor ``x``, in the
    order of :func:`submanifold_keys` (built now and cached in ``x``, as the convolutions would)."""
    by_key = {conv.indice_key: conv for conv in module.modules() if isinstance(conv, _SparseConv)}
    return tuple(neighbour_table(by_key[key], x)[2].table for key in submanifold_keys(module))


def with_tables(features: torch.Tensor, indices: torch.Tensor, spatial_shape: Sequence[int], batch_size: int,
                tables: Dict[str, torch.Tensor]) -> SparseTensor:
    """A ``torch``-backend sparse tensor whose submanifold convolutions read ``tables`` (``indice_key`` ->
    (K, N) table) instead of building them: how their features are recomputed from given tables (e.g.
    row-padded copies replayed from a CUDA graph)."""
    x = SparseTensor(features, indices, spatial_shape, batch_size)
    for key, table in tables.items():
        x.indice_dict[_cache_key("torch", key)] = (indices, x.spatial_shape, NeighbourTable(table))
    return x


def _conv_pairs(conv: _SparseConv, x, out_indices, out_shape, neighbours: NeighbourTable):
    """``out[o] = bias + sum_k W_k x[table[k, o]]`` (W (out, K, in) from the KRSC weight) with the
    library's :func:`~visionattn.ops.sparse_conv.sparse_conv`: its Triton gather-GEMM on CUDA, its
    reference (per offset a gather, a matrix product and an ``index_add``) on CPU."""
    weight = conv.weight.reshape(conv.out_channels, -1, conv.in_channels)  # (out, K, in)
    out = sparse_conv(x.features, weight, neighbours.table, conv.bias, cache=neighbours.cache)
    result = x.replace_feature(out)
    result.indices, result.spatial_shape = out_indices, out_shape
    return result


class SubMConv3d(_SparseConv):
    """Submanifold 3-D sparse convolution (outputs at the input voxels), spconv semantics."""

    _kind = "SubMConv3d"


class SparseConv3d(_SparseConv):
    """Regular (strided) 3-D sparse convolution, spconv semantics."""

    _kind = "SparseConv3d"


class SparseSequential(nn.Sequential):
    """Applies its modules in order to a sparse tensor: sparse modules (ours, or a module whose
    ``forward`` takes the sparse tensor, marked with ``sparse_input = True``) get the tensor, dense
    modules (BatchNorm1d, ReLU...) get ``.features`` (N, C)."""

    sparse_input = True

    def forward(self, x):
        for module in self:
            x = self.apply_module(module, x)
        return x

    @staticmethod
    def apply_module(module: nn.Module, x):
        """One step: a sparse module takes the tensor, a dense one its features."""
        if isinstance(module, _SparseConv) or getattr(module, "sparse_input", False):
            return module(x)
        return x.replace_feature(module(x.features))
