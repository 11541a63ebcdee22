"""Submanifold depth-wise sparse convolution: reference vs a dense depth-wise conv3d, gradcheck; triton
path vs reference. The neighbour table's own tests are in test_submanifold_pairs.py."""
import os

import pytest
import torch
import torch.nn.functional as F

from visionattn.ops import sparse_depthwise_conv as dw_mod
from visionattn.ops.dispatch import use_impl
from visionattn.ops.sparse_depthwise_conv import (IMPLS, example_inputs, sparse_depthwise_conv, submanifold_pairs,
                                                  voxel_coords)
from triton_interpreter import run_interpreted

KERNELS = [(3, 3, 3), (1, 1, 13), (1, 13, 1), (1, 1, 1), (3, 1, 5)]


def _random_coords(n, shape, batches=2, seed=0):
    """Unique (b, z, y, x) coordinates, some on the grid border."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, batches, (4 * n,), generator=g)
    zyx = torch.stack([torch.randint(0, s, (4 * n,), generator=g) for s in shape], 1)
    coords = torch.unique(torch.cat([b[:, None], zyx], 1), dim=0)
    return coords[torch.randperm(coords.shape[0], generator=g)[:n]]


def _dense_depthwise(features, weight, coords, shape, kernel, batches):
    """Independent formula: scatter into a dense grid, conv3d(groups=C), read back at the voxels."""
    c = features.shape[1]
    dense = features.new_zeros(batches, c, *shape)
    b, z, y, x = coords.long().unbind(1)
    dense[b, :, z, y, x] = features
    w = weight.t().reshape(c, 1, *kernel)  # (K, C) row-major (kz, ky, kx) -> (C, 1, kz, ky, kx)
    out = F.conv3d(dense, w, padding=tuple(k // 2 for k in kernel), groups=c)
    return out[b, :, z, y, x]


@pytest.mark.parametrize("kernel", KERNELS)
def test_reference_equals_dense_depthwise_conv3d(kernel):
    shape = (4, 6, 7)
    coords = _random_coords(70, shape)
    g = torch.Generator().manual_seed(1)
    features = torch.randn(70, 5, generator=g)
    weight = torch.randn(kernel[0] * kernel[1] * kernel[2], 5, generator=g)
    out = sparse_depthwise_conv(features, weight, submanifold_pairs(coords, shape, kernel), impl="reference")
    torch.testing.assert_close(out, _dense_depthwise(features, weight, coords, shape, kernel, 2),
                               atol=1e-5, rtol=1e-5)


def test_reference_gradcheck_float64():
    coords = _random_coords(12, (2, 3, 3), batches=1)
    pairs = submanifold_pairs(coords, (2, 3, 3), (3, 3, 3))
    features = torch.randn(12, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(27, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: sparse_depthwise_conv(f, w, pairs, impl="reference"),
                                    (features, weight), fast_mode=True)


@pytest.mark.parametrize("bad,match", [
    (dict(weight=torch.zeros(27, 4)), "one C"),
    (dict(weight=torch.zeros(27, 5, dtype=torch.float64)), "float32"),
    (dict(pairs=torch.zeros(26, 10, dtype=torch.int64)), r"\(K, N\) = \(27, 10\)"),
    (dict(pairs=torch.zeros(27, 10)), "int64/int32"),
    (dict(impl="cuda"), "unknown impl 'cuda'"),
])
def test_conv_bad_inputs_raise_clear_errors(bad, match):
    kwargs = dict(features=torch.zeros(10, 5), weight=torch.zeros(27, 5),
                  pairs=torch.full((27, 10), -1, dtype=torch.int64), impl="reference")
    kwargs.update(bad)
    with pytest.raises(ValueError, match=match):
        sparse_depthwise_conv(**kwargs)


def test_example_inputs_are_lidar_like():
    coords = voxel_coords(3000)
    assert coords.shape == (3000, 4) and torch.unique(coords, dim=0).shape[0] == 3000
    kwargs = example_inputs(n_voxels=3000)
    assert kwargs["pairs"].shape == (27, 3000) and kwargs["features"].shape == (3000, 32)
    neighbours = (kwargs["pairs"] >= 0).sum(0).float().mean()
    assert 2 < neighbours < 27  # stacked voxels and nearby cells: a sparse but not isolated neighbourhood


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs triton on CPU")
def test_op_contract_and_auto_dispatch_on_cpu(monkeypatch):
    assert IMPLS == ("triton", "reference")
    kwargs = example_inputs(n_voxels=200, channels=4)
    ref = sparse_depthwise_conv(**kwargs, impl="reference")
    calls = []
    monkeypatch.setattr(dw_mod, "_reference", lambda *a: calls.append(1) or ref)
    assert sparse_depthwise_conv(**kwargs) is ref and calls
    with use_impl("triton"):
        assert sparse_depthwise_conv(**kwargs) is ref
    with pytest.raises(ValueError, match="does not support"):
        sparse_depthwise_conv(**kwargs, impl="triton")


# --- Triton kernels vs the reference -----------------------------------------------------------------

def _triton_vs_reference(n, channels, kernel, dtype=torch.float32, device="cpu", weight_dtype=None, sliced=False,
                         seed=0):
    """Forward + backward of both paths; features optionally a channel slice of a wider tensor (how the
    network's channel groups call it). Returns [(triton, reference)] for out, d_features, d_weight."""
    shape = (8, 40, 40)
    coords = _random_coords(n, shape, seed=seed)
    n = coords.shape[0]  # at most the grid's 12,800 cells: duplicates are dropped
    pairs = submanifold_pairs(coords.to(device), shape, kernel)
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(n, 3 * channels if sliced else channels, generator=g).to(device, dtype)
    weight = torch.randn(pairs.shape[0], channels, generator=g).to(device, weight_dtype or dtype)
    grad = torch.randn(n, channels, generator=g).to(device, dtype)
    results = []
    for impl in ("triton", "reference"):
        x, w = wide.detach().requires_grad_(), weight.detach().requires_grad_()
        features = x[:, channels:2 * channels] if sliced else x
        out = sparse_depthwise_conv(features, w, pairs, impl=impl)
        assert out.dtype == dtype and out.shape == (n, channels)
        d_x, d_w = torch.autograd.grad(out, (x, w), grad)
        assert d_w.dtype == w.dtype
        results.append((out, d_x[:, channels:2 * channels] if sliced else d_x, d_w))
    return list(zip(*results))


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")


@interpreter
@pytest.mark.parametrize("n,channels,kernel,sliced", [
    (130, 32, (3, 3, 3), False),
    (100, 20, (1, 1, 13), True),   # channels not a power of two, strided rows
    (70, 80, (1, 13, 1), False),   # two channel tiles
    (1, 8, (3, 3, 3), False),      # a single voxel
])
def test_triton_equals_reference_interpreter(n, channels, kernel, sliced):
    for got, ref in _triton_vs_reference(n, channels, kernel, sliced=sliced):
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


@interpreter
def test_triton_half_precision_and_empty_interpreter():
    for got, ref in _triton_vs_reference(100, 16, (3, 3, 3), dtype=torch.float16, weight_dtype=torch.float32):
        assert _rel(got, ref) < 2e-3
    features = torch.zeros(0, 8, requires_grad=True)
    weight = torch.randn(27, 8, requires_grad=True)
    out = sparse_depthwise_conv(features, weight, torch.zeros(27, 0, dtype=torch.int64), impl="triton")
    assert out.shape == (0, 8)
    d_f, d_w = torch.autograd.grad(out.sum(), (features, weight))
    assert d_f.shape == (0, 8) and torch.equal(d_w, torch.zeros_like(weight))


@interpreter
def test_custom_op_forward_backward_interpreter():
    """The registered custom op (what torch.compile traces) gives the eager path's values and gradients."""
    kwargs = example_inputs(n_voxels=100, channels=8)
    f = kwargs["features"].requires_grad_()
    out = torch.ops.visionattn.sparse_depthwise_conv_triton(f, kwargs["weight"], kwargs["pairs"])
    ref = sparse_depthwise_conv(f, kwargs["weight"], kwargs["pairs"], impl="triton")
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), f)[0], torch.autograd.grad(ref.sum(), f)[0],
                               atol=0, rtol=0)

    class Conv(torch.nn.Module):
        def forward(self, features, weight, pairs):
            return sparse_depthwise_conv(features, weight, pairs, impl="triton")

    args = (f.detach(), kwargs["weight"], kwargs["pairs"])
    program = torch.export.export(Conv(), args)  # one node, as torch.compile sees it
    assert sum(n.target == torch.ops.visionattn.sparse_depthwise_conv_triton.default for n in program.graph.nodes) == 1
    torch.testing.assert_close(program.module()(*args), ref.detach(), atol=0, rtol=0)


def test_triton_interpreter():
    """The Triton kernels on CPU in a fresh process: Triton reads TRITON_INTERPRET when the kernels are defined."""
    run_interpreted(__file__, "-k", "interpreter and not test_triton_interpreter", expect="6 passed", timeout=600)


# --- CUDA ----------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype,weight_dtype", [(torch.float32, None), (torch.bfloat16, None),
                                                (torch.float16, None), (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 1, 13), (1, 13, 1)])
@pytest.mark.parametrize("n", [30000, 1])
def test_triton_matches_reference_cuda(dtype, weight_dtype, kernel, n):
    for got, ref in _triton_vs_reference(n, 32, kernel, dtype, "cuda", weight_dtype, sliced=True):
        assert _rel(got, ref) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.cuda
def test_triton_under_torch_compile_cuda():
    kwargs = example_inputs(device="cuda", n_voxels=5000)
    weight = kwargs["weight"].requires_grad_()

    def f(features, weight, pairs):
        return sparse_depthwise_conv(features, weight, pairs, impl="triton").square().sum()

    eager = torch.autograd.grad(f(kwargs["features"], weight, kwargs["pairs"]), weight)[0]
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(kwargs["features"], weight, kwargs["pairs"]),
                                   weight)[0]
    assert _rel(compiled, eager) < 1e-5
