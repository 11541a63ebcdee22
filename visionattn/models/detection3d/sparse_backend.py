"""The sparse-convolution library behind the voxel networks: spconv on CPU, spconv-triton on GPU.

Model code imports only this module. It exposes the few spconv-API pieces the networks use:

- :func:`sparse_tensor` builds the library's ``SparseConvTensor`` (features (N, C), indices (N, 4)
  int32 ``[batch, z, y, x]``, spatial shape ``(Z, Y, X)``) for the device of the features;
- :class:`SubMConv3d`, :class:`SparseConv3d`: modules holding their weight in spconv's KRSC layout
  ``(out, kz, ky, kx, in)`` (the layout of spconv 2.x checkpoints, OpenPCDet's included) and an
  optional bias; at each call they run the convolution of the library that fits the input's
  device, so ``model.cuda()`` / ``model.cpu()`` switch library without touching the weights;
- :class:`SparseSequential`: spconv's ``SparseSequential`` semantics (dense modules such as
  BatchNorm1d/ReLU act on ``.features``) for modules of both libraries.

Which library (the ``3d`` extra installs spconv; ``pip install spconv-triton`` adds the GPU one):

- CPU tensors: ``spconv``'s CPU wheel generates the index pairs (cached per ``indice_key`` as spconv
  caches them) and the convolution itself is a gather and one einsum in PyTorch here
  (:func:`_conv_cpu`), with PyTorch's autograd. The wheel's own CPU compute is not used: with more
  than one CPU thread its gather/scatter loop returns wrong rows now and then (measured with
  spconv 2.3.8: 3 of 12 identical calls off by up to 0.49 on unit-scale features), its backward asks
  for a CUDA stream (upstream spconv issue #366) and it refuses a bias in eval mode.
- CUDA tensors: ``spconv_triton`` (pure Triton, spconv's API and numerics) if it is installed,
  else ``spconv`` (which then needs a CUDA build of spconv). ``VISIONATTN_SPARSE_BACKEND=spconv``
  or ``=spconv_triton`` forces one.
"""
import importlib
import os
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ...extras import require_extra

BACKENDS = ("spconv", "spconv_triton")
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
    """The sparse-convolution libraries that imported here, e.g. ``('spconv', 'spconv_triton')``."""
    return tuple(_LIBS)


def backend_for(device: Union[torch.device, str]) -> str:
    """Name of the library that runs sparse convolutions on ``device``."""
    device = torch.device(device)
    forced = os.environ.get(_ENV)
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{_ENV}={forced!r} is not a sparse backend; use one of {BACKENDS}")
        if forced not in _LIBS:
            raise ImportError(f"{_ENV}={forced!r} but {forced} is not installed "
                              f"({'pip install -e .[3d]' if forced == 'spconv' else 'pip install spconv-triton'})")
        if forced == "spconv_triton" and device.type == "cpu":
            raise ValueError(f"{_ENV}=spconv_triton cannot run CPU tensors (its kernels are GPU-only); "
                             f"unset it or move the model to a GPU")
        return forced
    if device.type == "cpu":
        if "spconv" not in _LIBS:
            raise ImportError("sparse convolutions on CPU need spconv: pip install -e '.[3d]'  "
                              "(spconv-triton, installed here, runs on GPUs only)")
        return "spconv"
    if "spconv_triton" in _LIBS:
        return "spconv_triton"
    return "spconv"


def library(device: Union[torch.device, str]):
    """The ``spconv.pytorch``-like module that runs on ``device``."""
    return _LIBS[backend_for(device)]


def _library_of(x) -> str:
    for name, lib in _LIBS.items():
        if isinstance(x, lib.SparseConvTensor):
            return name
    raise TypeError(f"expected a SparseConvTensor of {available_backends()}, got {type(x).__name__}")


def sparse_tensor(features: torch.Tensor, indices: torch.Tensor, spatial_shape: Sequence[int], batch_size: int):
    """The library's sparse tensor: features (N, C), indices (N, 4) ``[batch, z, y, x]``, shape (Z, Y, X)."""
    lib = library(features.device)
    return lib.SparseConvTensor(features, indices.int().contiguous(), [int(s) for s in spatial_shape],
                                int(batch_size))


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
        if not x.features.is_cuda:
            return _conv_cpu(self, x)
        impl = self._impl(_library_of(x))
        impl.training = self.training  # pair generation keeps the backward tables only in training
        return impl._conv_forward(self.training, x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, "
                f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, bias={self.bias is not None}, "
                f"indice_key={self.indice_key!r}")


def _cpu_pairs(conv: _SparseConv, x):
    """(output indices, output shape, gather table (K, N_out) int64: the input row that output o sees
    through kernel offset k, -1 if none) of ``conv`` on ``x``, from spconv's CPU pair generation;
    cached in ``x.indice_dict`` under the conv's ``indice_key``."""
    key = f"visionattn_cpu/{conv.indice_key}" if conv.indice_key is not None else None
    if key is not None and key in x.indice_dict:
        return x.indice_dict[key]
    ops = importlib.import_module("spconv.pytorch.ops")
    algo = importlib.import_module("spconv.core").ConvAlgo.Native
    shape = [int(s) for s in x.spatial_shape]
    ksize, stride, padding = list(conv.kernel_size), list(conv.stride), list(conv.padding)
    out_indices, pairs, counts = ops.get_indice_pairs(x.indices, x.batch_size, shape, algo, ksize, stride, padding,
                                                      [1] * len(shape), [0] * len(shape), conv.subm, False)
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
    result = (out_indices, out_shape, table)
    if key is not None:
        x.indice_dict[key] = result
    return result


def _conv_cpu(conv: _SparseConv, x, max_chunk_bytes: int = 1 << 28):
    """``out[o] = bias + sum_k W[:, k] x[table[k, o]]`` (absent neighbours contribute 0), W (out, K, in);
    the gathered inputs (K, N_out, in) are processed in chunks of kernel offsets of at most
    ``max_chunk_bytes``."""
    out_indices, out_shape, table = _cpu_pairs(conv, x)
    K, n_out = table.shape
    feats = torch.cat([x.features, x.features.new_zeros(1, x.features.shape[1])])  # row -1 -> zeros
    weight = conv.weight.reshape(conv.out_channels, K, conv.in_channels)  # (out, K, in)
    step = max(1, max_chunk_bytes // max(1, n_out * conv.in_channels * feats.element_size()))
    out = None
    for k0 in range(0, K, step):
        gathered = feats[table[k0:k0 + step]]  # (k, N_out, in)
        part = torch.einsum("kni,oki->no", gathered, weight[:, k0:k0 + step])
        out = part if out is None else out + part
    if conv.bias is not None:
        out = out + conv.bias
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
            if isinstance(module, _SparseConv) or getattr(module, "sparse_input", False):
                x = module(x)
            else:
                x = x.replace_feature(module(x.features))
        return x
