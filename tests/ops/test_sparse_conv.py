"""Sparse convolution through a neighbour table: reference vs a dense conv3d (submanifold, 1x1x13,
strided), gradcheck, the inverse-table claim; triton path vs reference (interpreter and CUDA)."""
import os

import pytest
import torch
import torch.nn.functional as F

from visionattn.ops import _sparse_conv_triton as sc_triton
from visionattn.ops import sparse_conv as sc_mod
from visionattn.ops.dispatch import use_impl
from visionattn.ops.sparse_conv import IMPLS, example_inputs, offset_pairs, sparse_conv
from visionattn.ops.sparse_depthwise_conv import submanifold_pairs, voxel_coords
from test_sparse_depthwise_conv import _random_coords as _coords  # the sparse-grid generator of the ops tests
from triton_interpreter import run_interpreted

try:
    from visionattn.models.detection3d.sparse_backend import torch_pairs
except ImportError:  # pragma: no cover - the voxel networks' module needs spconv or spconv-triton
    torch_pairs = None

needs_pairs = pytest.mark.skipif(torch_pairs is None, reason="sparse_backend needs the 3d extra")

# (kernel, stride, padding, submanifold)
CONVS = {
    "subm333": ((3, 3, 3), (1, 1, 1), (1, 1, 1), True),
    "subm1113": ((1, 1, 13), (1, 1, 1), (0, 0, 6), True),
    "strided311": ((3, 1, 1), (2, 1, 1), (0, 0, 0), False),
    "strided333": ((3, 3, 3), (2, 2, 2), (1, 1, 1), False),
}




def _table(coords, shape, conv):
    kernel, stride, padding, subm = CONVS[conv]
    out_indices, out_shape, table = torch_pairs(coords.int(), shape, kernel, stride, padding, subm)
    return out_indices, out_shape, table


def _dense_conv(features, weight, bias, coords, shape, conv, out_indices, batches):
    """Independent formula: scatter into a dense grid, conv3d, read at the output voxels."""
    kernel, stride, padding, _ = CONVS[conv]
    c_out, _, c_in = weight.shape
    dense = features.new_zeros(batches, c_in, *shape)
    b, z, y, x = coords.long().unbind(1)
    dense[b, :, z, y, x] = features
    w = weight.permute(0, 2, 1).reshape(c_out, c_in, *kernel)  # offsets row-major over (kz, ky, kx)
    out = F.conv3d(dense, w, bias, stride=stride, padding=padding)
    b, z, y, x = out_indices.long().unbind(1)
    return out[b, :, z, y, x]


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@needs_pairs
@pytest.mark.parametrize("conv", list(CONVS))
def test_reference_equals_dense_conv3d(conv):
    shape = (5, 7, 16)
    coords = _coords(90, shape)
    out_indices, _, table = _table(coords, shape, conv)
    g = torch.Generator().manual_seed(1)
    k = table.shape[0]
    features = torch.randn(90, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, k, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    out = sparse_conv(features, weight, table, bias, impl="reference")
    ref = _dense_conv(features, weight, bias, coords, shape, conv, out_indices, 2)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(out, (features, weight, bias), grad),
                    torch.autograd.grad(ref, (features, weight, bias), grad)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_reference_gradcheck_float64():
    coords = _coords(14, (2, 3, 3), batches=1)
    table = submanifold_pairs(coords, (2, 3, 3), (3, 3, 3))
    features = torch.randn(14, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 27, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w, b: sparse_conv(f, w, table, b, impl="reference"),
                                    (features, weight, bias), fast_mode=True)


@needs_pairs
@pytest.mark.parametrize("conv", list(CONVS))
def test_each_offset_and_input_reaches_at_most_one_output(conv):
    """The claim the triton backward rests on, and the inverse table built from it."""
    shape = (6, 8, 15)
    coords = _coords(300, shape)
    _, _, table = _table(coords, shape, conv)
    k, m = table.shape
    valid = table >= 0
    key = (torch.arange(k)[:, None] * 300 + table)[valid]
    assert int(torch.bincount(key).max()) == 1  # no (k, i) twice
    inv = sc_triton.inverse_table(table, 300)
    assert inv.shape == (k, 300)
    ks, os_ = valid.nonzero(as_tuple=True)
    assert torch.equal(inv[ks, table[ks, os_]], os_)  # inv[k, table[k, o]] = o
    assert int((inv >= 0).sum()) == int(valid.sum())  # and nothing else


def test_row_order_is_a_permutation_that_groups_empty_offsets():
    coords = voxel_coords(20000)
    table = submanifold_pairs(coords, (32, 480, 480), (3, 3, 3))
    order = sc_triton.row_order(table)
    assert torch.equal(order.sort().values, torch.arange(20000))

    def tile_offsets(t):  # fraction of (64-row tile, offset) with some neighbour
        t = F.pad(t, (0, (-t.shape[1]) % 64), value=-1).view(t.shape[0], -1, 64)
        return (t >= 0).any(-1).float().mean().item()

    assert tile_offsets(table[:, order]) < 0.6 * tile_offsets(table)


@pytest.mark.parametrize("bad,match,error", [
    (dict(weight=torch.zeros(6, 27, 4)), "one Cin", ValueError),
    (dict(weight=torch.zeros(6, 27)), r"\(Cout, K, Cin\)", ValueError),
    (dict(weight=torch.zeros(6, 27, 5, dtype=torch.float64)), "share one floating dtype", ValueError),
    (dict(table=torch.zeros(26, 10, dtype=torch.int64)), r"K = weight.shape\[1\] = 27", ValueError),
    (dict(table=torch.zeros(27, 10, dtype=torch.int32)), "int64", ValueError),
    (dict(table=torch.full((27, 10), 10, dtype=torch.int64)), r"\[0, N=10\) or -1", ValueError),
    (dict(table=torch.full((27, 10), -2, dtype=torch.int64)), r"got values in \[-2, -2\]", ValueError),
    (dict(bias=torch.zeros(5)), r"bias must be \(Cout,\) = \(6,\)", ValueError),
    (dict(bias=torch.zeros(6, dtype=torch.int64)), "bias has dtype int64", ValueError),
    (dict(features=torch.zeros(10, 5, dtype=torch.int64)), "floating", ValueError),
    (dict(cache=[]), "cache must be a dict", TypeError),
    (dict(impl="cuda"), "unknown impl 'cuda'", ValueError),
])
def test_bad_inputs_raise_clear_errors(bad, match, error):
    kwargs = dict(features=torch.zeros(10, 5), weight=torch.zeros(6, 27, 5),
                  table=torch.full((27, 10), -1, dtype=torch.int64), bias=None, impl="reference")
    kwargs.update(bad)
    with pytest.raises(error, match=match):
        sparse_conv(**kwargs)


def test_empty_input_and_rows_without_neighbours_reference():
    weight = torch.randn(4, 27, 3, requires_grad=True)
    bias = torch.randn(4)
    out = sparse_conv(torch.zeros(0, 3), weight, torch.empty(27, 0, dtype=torch.int64), bias, impl="reference")
    assert out.shape == (0, 4)
    out = sparse_conv(torch.zeros(0, 3), weight, torch.full((27, 5), -1, dtype=torch.int64), bias, impl="reference")
    torch.testing.assert_close(out, bias.expand(5, 4))
    assert torch.autograd.grad(out.sum(), weight)[0].abs().sum() == 0


def test_autocast_runs_in_its_dtype():
    kwargs = example_inputs(n_voxels=300, channels=8)
    ref = sparse_conv(**kwargs, impl="reference")
    with torch.autocast("cpu", torch.bfloat16):
        out = sparse_conv(**kwargs, impl="reference")
    assert out.dtype == torch.bfloat16 and _rel(out, ref) < 1e-2


def test_cache_keeps_the_pairs():
    kwargs = example_inputs(n_voxels=300, channels=4)
    cache = {}
    first = sparse_conv(**kwargs, impl="reference", cache=cache)
    assert len(cache["pairs"]) == 27 and cache["pairs"] is offset_pairs(kwargs["table"], cache)
    torch.testing.assert_close(sparse_conv(**kwargs, impl="reference", cache=cache), first, atol=0, rtol=0)


def test_example_inputs_are_a_cpe_convolution():
    kwargs = example_inputs(n_voxels=2000, channels=16)
    assert kwargs["table"].shape == (27, 2000) and kwargs["weight"].shape == (16, 27, 16)
    assert torch.equal(kwargs["table"][13], torch.arange(2000))  # centre offset: the voxel itself
    assert 2 < (kwargs["table"] >= 0).sum(0).float().mean() < 27


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs triton on CPU")
def test_op_contract_and_auto_dispatch_on_cpu(monkeypatch):
    assert IMPLS == ("triton", "reference")
    kwargs = example_inputs(n_voxels=200, channels=4)
    ref = sparse_conv(**kwargs, impl="reference")
    calls = []
    monkeypatch.setattr(sc_mod, "_reference", lambda *a: calls.append(1) or ref)
    assert sparse_conv(**kwargs) is ref and calls  # auto -> reference on CPU
    with use_impl("triton"):  # forcing an impl that cannot run on CPU falls back to the reference
        assert sparse_conv(**kwargs) is ref
    with pytest.raises(ValueError, match="does not support"):
        sparse_conv(**kwargs, impl="triton")


# --- Triton kernels vs the reference -----------------------------------------------------------------

def _case(conv, n, c_in, c_out, bias=True, dtype=torch.float32, device="cpu", seed=2, shape=(6, 9, 17)):
    """features, weight, bias, table of a random voxel set (as float64 masters) and the output grad."""
    coords = _coords(n, shape, seed=seed)
    if conv.startswith("subm") and conv != "subm1113":
        table = submanifold_pairs(coords, shape, CONVS[conv][0])
    else:
        table = _table(coords, shape, conv)[2]
    g = torch.Generator().manual_seed(seed)
    k = table.shape[0]
    features = torch.randn(n, c_in, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, k, c_in, generator=g, dtype=torch.float64) / (k * c_in) ** 0.5
    b = torch.randn(c_out, generator=g, dtype=torch.float64) if bias else None
    grad = torch.randn(table.shape[1], c_out, generator=g, dtype=torch.float64)
    return features, weight, b, table.to(device), grad


def _triton_vs_reference(features, weight, bias, table, grad, dtype=torch.float32, device="cpu", cache=None):
    """[(triton, fp64 reference)] for out, d features, d weight (, d bias)."""
    results = []
    for impl, cast in (("triton", dtype), ("reference", torch.float64)):
        leaves = [t.to(device, cast).requires_grad_() for t in (features, weight) + ((bias,) if bias is not None
                                                                                   else ())]
        b = leaves[2] if bias is not None else None
        out = sparse_conv(leaves[0], leaves[1], table, b, impl=impl, cache=cache if impl == "triton" else None)
        assert out.dtype == cast and out.shape == (table.shape[1], weight.shape[0])
        results.append([out, *torch.autograd.grad(out, leaves, grad.to(device, cast))])
    return list(zip(*results))


interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")


@interpreter
@needs_pairs
@pytest.mark.parametrize("conv,n,c_in,c_out,bias", [
    ("subm333", 200, 16, 24, True),
    ("subm333", 150, 40, 17, False),      # channels not powers of two, over one BLOCK_K
    ("subm1113", 120, 19, 33, True),
    ("strided311", 200, 16, 16, False),  # strided: outputs with a single neighbour
    ("strided333", 180, 24, 40, True),
])
def test_triton_equals_reference_forward_backward_interpreter(conv, n, c_in, c_out, bias):
    case = _case(conv, n, c_in, c_out, bias)
    assert int(((case[3] >= 0).sum(0) <= 1).sum()) > 0  # some rows see nothing but (at most) themselves
    cache = {}
    for _ in range(2):  # the second call reads the order and the inverse table from the cache
        for got, ref in _triton_vs_reference(*case, cache=cache):
            torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    assert {"order", ("inverse", n)} <= set(cache)


@interpreter
def test_triton_deterministic_with_split_weight_gradient_interpreter(monkeypatch):
    monkeypatch.setattr(sc_triton, "DW_PROGRAMS", 27 * 5)  # 5 row splits of the weight gradient
    case = _case("subm333", 300, 16, 16)
    first = _triton_vs_reference(*case)
    second = _triton_vs_reference(*case)
    for (a, ref), (b, _) in zip(first, second):
        assert torch.equal(a, b)
        torch.testing.assert_close(a.double(), ref, atol=1e-5, rtol=1e-5)


@interpreter
def test_triton_empty_inputs_and_isolated_rows_interpreter():
    weight = torch.randn(20, 27, 16, requires_grad=True)
    bias = torch.randn(20, requires_grad=True)
    x = torch.zeros(0, 16, requires_grad=True)
    out = sparse_conv(x, weight, torch.empty(27, 0, dtype=torch.int64), bias, impl="triton")
    assert out.shape == (0, 20)
    grads = torch.autograd.grad(out.sum(), (x, weight, bias))
    assert [g.shape for g in grads] == [(0, 16), (20, 27, 16), (20,)] and all(g.abs().sum() == 0 for g in grads)
    out = sparse_conv(x, weight, torch.full((27, 3), -1, dtype=torch.int64), bias, impl="triton")
    torch.testing.assert_close(out, bias.expand(3, 20))
    # inputs that no output sees, outputs that see nothing
    table = torch.full((27, 4), -1, dtype=torch.int64)
    table[13, 1], table[0, 3] = 5, 2
    features = torch.randn(7, 16, requires_grad=True)
    ref = sparse_conv(features, weight, table, bias, impl="reference")
    got = sparse_conv(features, weight, table, bias, impl="triton")
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    grads = zip(torch.autograd.grad(got.sum(), (features, weight)), torch.autograd.grad(ref.sum(), (features, weight)))
    for a, b in grads:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@interpreter
def test_triton_half_precision_interpreter():
    """fp16 inputs (tensor-core dots with fp32 accumulation on a GPU); bf16 runs in the cuda tests."""
    for got, ref in _triton_vs_reference(*_case("subm333", 150, 16, 24), dtype=torch.float16):
        assert _rel(got, ref) < 2e-3


@interpreter
def test_custom_op_forward_backward_interpreter():
    """The registered custom op (what torch.compile traces) gives the eager path's values and gradients."""
    features, weight, bias, table, grad = (t.float() if t.is_floating_point() else t
                                           for t in _case("subm333", 100, 16, 16))
    leaves = [t.requires_grad_() for t in (features, weight, bias)]
    order = sc_triton.row_order(table)
    out = torch.ops.visionattn.sparse_conv_triton(*leaves, table, order)
    ref = sparse_conv(*leaves[:2], table, leaves[2], impl="triton")
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    for a, b in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)

    class Conv(torch.nn.Module):
        def forward(self, features, weight, table):
            return sparse_conv(features, weight, table, impl="triton")

    program = torch.export.export(Conv(), (features.detach(), weight.detach(), table))
    op = torch.ops.visionattn.sparse_conv_triton.default
    assert sum(n.target == op for n in program.graph.nodes) == 1
    torch.testing.assert_close(program.module()(features.detach(), weight.detach(), table),
                               sparse_conv(features.detach(), weight.detach(), table, impl="reference"),
                               atol=1e-5, rtol=1e-5)


def test_triton_interpreter():
    """The Triton kernels on CPU in a fresh process: Triton reads TRITON_INTERPRET when the kernels are defined."""
    run_interpreted(__file__, "-m", "not slow and not cuda", "-k", "interpreter and not test_triton_interpreter",
                    expect="9 passed" if torch_pairs is not None else "4 passed", timeout=900)


# --- CUDA: real sizes ---------------------------------------------------------------------------------

def _cuda_case(conv="subm333", n_voxels=100000, channels=128):
    kwargs = example_inputs(n_voxels=n_voxels, channels=channels)
    table = kwargs["table"]
    if conv != "subm333":
        coords = voxel_coords(n_voxels)
        kernel, stride, padding, subm = CONVS[conv]
        table = torch_pairs(coords.int(), (32, 480, 480), kernel, stride, padding, subm)[2]
        kwargs["weight"] = kwargs["weight"][:, :table.shape[0]].contiguous()
    grad = torch.randn(table.shape[1], channels, generator=torch.Generator().manual_seed(5))
    return (kwargs["features"].double(), kwargs["weight"].double(), kwargs["bias"].double(), table.cuda(),
            grad.double())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("conv", ["subm333", "strided311", "strided333"])
def test_triton_matches_reference_cuda(conv, dtype, monkeypatch):
    """100k voxels of a LiDAR-like frame, 128 channels: fp32 with TF32 off within 1e-4 relative of the
    fp64 reference, half precision within 1e-2; output and all gradients."""
    if conv != "subm333" and torch_pairs is None:
        pytest.skip("sparse_backend needs the 3d extra")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    for got, ref in _triton_vs_reference(*_cuda_case(conv), dtype=dtype, device="cuda", cache={}):
        assert _rel(got, ref) < (1e-4 if dtype == torch.float32 else 1e-2), (_rel(got, ref))


@pytest.mark.cuda
def test_triton_fp32_follows_the_convolution_tf32_flag_cuda(monkeypatch):
    """fp32 runs TF32 dots under ``torch.backends.cudnn.allow_tf32`` (PyTorch's default for convolutions):
    within 5e-3 of the reference, and not equal to the strict fp32 result."""
    features, weight, bias, table, grad = _cuda_case(n_voxels=20000, channels=64)
    g = torch.Generator().manual_seed(1)  # full-mantissa values (TF32 is exact on few-bit ones)
    features = torch.randn(features.shape, generator=g, dtype=torch.float64)
    weight = torch.randn(weight.shape, generator=g, dtype=torch.float64) / (weight.shape[1] * weight.shape[2]) ** 0.5
    case = (features, weight, bias, table, grad)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    tf32 = _triton_vs_reference(*case, device="cuda")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    strict = _triton_vs_reference(*case, device="cuda")
    for (a, ref), (b, _) in list(zip(tf32, strict))[:3]:  # out, d features, d weight (d bias is a plain sum)
        assert _rel(a, ref) < 5e-3
        assert _rel(b, ref) < 1e-4 and not torch.equal(a, b)


@pytest.mark.cuda
def test_triton_odd_channels_and_deterministic_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    case = _cuda_case(n_voxels=20000, channels=40)
    case = (case[0][:, :37].contiguous(), case[1][:24, :, :37].contiguous(), case[2][:24], case[3],
            case[4][:, :24].contiguous())
    first = _triton_vs_reference(*case, device="cuda")
    second = _triton_vs_reference(*case, device="cuda")
    for (a, ref), (b, _) in zip(first, second):
        assert torch.equal(a, b)
        assert _rel(a, ref) < 1e-4


@pytest.mark.cuda
def test_triton_empty_input_cuda():
    weight = torch.randn(32, 27, 16, device="cuda", requires_grad=True)
    x = torch.zeros(0, 16, device="cuda", requires_grad=True)
    out = sparse_conv(x, weight, torch.empty(27, 0, dtype=torch.int64, device="cuda"), impl="triton")
    assert out.shape == (0, 32)
    assert [g.shape for g in torch.autograd.grad(out.sum(), (x, weight))] == [(0, 16), (32, 27, 16)]


@pytest.mark.cuda
def test_triton_under_torch_compile_cuda():
    """The custom ops trace (fake impls, the inverse table as graph ops) and their autograd runs compiled."""
    kwargs = example_inputs(device="cuda", n_voxels=5000, channels=32)
    leaves = [kwargs[k].detach().requires_grad_() for k in ("features", "weight", "bias")]

    def f(features, weight, bias, table):
        return sparse_conv(torch.relu(features), weight, table, bias, impl="triton").square().sum()

    eager = torch.autograd.grad(f(*leaves, kwargs["table"]), leaves)
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(*leaves, kwargs["table"]), leaves)
    for a, b in zip(compiled, eager):
        assert _rel(a, b) < 1e-5


@pytest.mark.cuda
def test_auto_picks_triton_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(sc_mod, "_triton", lambda *a: calls.append(1) or sc_mod._reference(*a))
    sparse_conv(**example_inputs(device="cuda", n_voxels=1000, channels=16))
    assert calls
