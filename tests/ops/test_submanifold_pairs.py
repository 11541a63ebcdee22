"""Submanifold neighbour table: reference vs a brute-force lookup, symmetry, bad inputs; the triton path
equal to the reference (integer table, exactly) on the interpreter and on CUDA, without host syncs."""
import os

import pytest
import torch

from visionattn.ops import submanifold_pairs as sp_mod
from visionattn.ops.dispatch import use_impl
from visionattn.ops.submanifold_pairs import (IMPLS, example_inputs, kernel_offsets, submanifold_pairs,
                                              submanifold_pairs_many, voxel_coords)
from test_sparse_depthwise_conv import _random_coords  # the sparse-grid generator of the ops tests
from triton_interpreter import run_interpreted

try:
    from visionattn.models.detection3d.sparse_backend import torch_pairs
except ImportError:  # pragma: no cover - the voxel networks' module needs spconv or spconv-triton
    torch_pairs = None

KERNELS = [(3, 3, 3), (1, 1, 13), (1, 13, 1), (3, 1, 1), (1, 1, 1), (3, 1, 5)]
SHAPE = (4, 6, 7)


def _brute_force_pairs(coords, shape, kernel):
    where = {tuple(c): i for i, c in enumerate(coords.tolist())}
    pairs = torch.full((len(kernel_offsets(kernel)), coords.shape[0]), -1, dtype=torch.int64)
    for k, (dz, dy, dx) in enumerate(kernel_offsets(kernel).tolist()):
        for o, (b, z, y, x) in enumerate(coords.tolist()):
            pairs[k, o] = where.get((b, z + dz, y + dy, x + dx), -1)
    return pairs


def _border_coords(n, batches=3, seed=0):
    """Random unique voxels of ``batches`` frames on the small grid SHAPE, with voxels on every face."""
    coords = _random_coords(n, SHAPE, batches=batches, seed=seed)
    if n >= 20:
        zyx = coords[:, 1:]
        for axis, size in enumerate(SHAPE):
            assert (zyx[:, axis] == 0).any() and (zyx[:, axis] == size - 1).any()
        assert len(coords[:, 0].unique()) == batches
    return coords


@pytest.mark.parametrize("kernel", KERNELS)
def test_reference_equals_brute_force_lookup(kernel):
    coords = _border_coords(60)
    pairs = submanifold_pairs(coords.int(), SHAPE, kernel, impl="reference")
    assert pairs.dtype == torch.int64 and pairs.shape == (kernel[0] * kernel[1] * kernel[2], 60)
    assert torch.equal(pairs, _brute_force_pairs(coords, SHAPE, kernel))


def test_many_tables_sort_the_keys_once(monkeypatch):
    coords = _border_coords(60)
    sorts = []
    real_sort = torch.sort
    monkeypatch.setattr(torch, "sort", lambda *a, **k: sorts.append(1) or real_sort(*a, **k))
    tables = submanifold_pairs_many(coords, SHAPE, KERNELS[:3])
    assert len(sorts) == 1 and len(tables) == 3
    for kernel, table in zip(KERNELS[:3], tables):
        assert torch.equal(table, _brute_force_pairs(coords, SHAPE, kernel))
    assert [t.shape for t in submanifold_pairs_many(coords[:0], SHAPE, [(3, 3, 3), (1, 1, 13)])] == [(27, 0), (13, 0)]
    with pytest.raises(ValueError, match="must be odd"):
        submanifold_pairs_many(coords, SHAPE, [(3, 3, 3), (1, 1, 2)])


def test_pairs_are_symmetric_and_centre_is_identity():
    coords = _random_coords(80, (5, 6, 6))
    pairs = submanifold_pairs(coords, (5, 6, 6), (3, 3, 3))
    assert torch.equal(pairs[13], torch.arange(80))  # centre offset: the voxel itself
    for k in range(27):  # pairs[k, o] = i  <=>  pairs[26 - k, i] = o
        o = torch.nonzero(pairs[k] >= 0).flatten()
        assert torch.equal(pairs[26 - k, pairs[k, o]], o)


def test_pairs_of_empty_input_and_offsets_order():
    assert submanifold_pairs(torch.zeros(0, 4, dtype=torch.int64), (2, 3, 4), (1, 3, 5)).shape == (15, 0)
    assert kernel_offsets((1, 3, 5))[:3].tolist() == [[0, -1, -2], [0, -1, -1], [0, -1, 0]]  # x fastest


@pytest.mark.parametrize("bad,match", [
    (dict(kernel_size=(3, 2, 3)), "odd"),
    (dict(kernel_size=(3, 3)), "3 entries"),
    (dict(spatial_shape=(4, 0, 6)), "positive"),
    (dict(coords=torch.zeros(3, 3, dtype=torch.int64)), r"\(N, 4\) integer"),
    (dict(coords=torch.zeros(3, 4)), r"\(N, 4\) integer"),
    (dict(coords=torch.zeros(3, 4, dtype=torch.bool)), r"\(N, 4\) integer"),
    (dict(coords=torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0]])), "duplicate"),
    (dict(coords=torch.tensor([[0, 4, 0, 0]])), r"outside the grid .*\(0, 4, 0, 0\)"),
    (dict(coords=torch.tensor([[0, 1, 2, 6]])), "outside the grid"),
    (dict(coords=torch.tensor([[-1, 0, 0, 0]])), "outside the grid"),
    (dict(impl="cuda"), "unknown impl 'cuda'"),
])
def test_pairs_bad_inputs_raise_clear_errors(bad, match):
    kwargs = dict(coords=torch.tensor([[0, 1, 2, 3]]), spatial_shape=(4, 5, 6), kernel_size=(3, 3, 3))
    kwargs.update(bad)
    with pytest.raises(ValueError, match=match):
        submanifold_pairs(**kwargs)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs triton on CPU")
def test_op_contract_and_auto_dispatch_on_cpu(monkeypatch):
    assert IMPLS == ("triton", "reference")
    kwargs = example_inputs(n_voxels=300)
    assert kwargs["coords"].dtype == torch.int32 and kwargs["spatial_shape"] == (32, 480, 480)
    ref = submanifold_pairs(**kwargs, impl="reference")
    calls = []
    monkeypatch.setattr(sp_mod, "_reference", lambda *a: calls.append(1) or ref)
    assert submanifold_pairs(**kwargs) is ref and calls
    with use_impl("triton"):
        assert submanifold_pairs(**kwargs) is ref
    with pytest.raises(ValueError, match="does not support"):
        submanifold_pairs(**kwargs, impl="triton")


@pytest.mark.skipif(torch_pairs is None, reason="sparse_backend needs the 3d extra")
def test_torch_pairs_subm_is_this_op():
    """The sparse backend's submanifold tables are this op's (one implementation)."""
    coords = _border_coords(90).int()
    out_indices, out_shape, table = torch_pairs(coords, SHAPE, (3, 3, 3), (1, 1, 1), (1, 1, 1), True)
    assert out_indices is coords and out_shape == list(SHAPE)
    assert torch.equal(table, _brute_force_pairs(coords, SHAPE, (3, 3, 3)))


# --- Triton kernel vs the reference (CPU interpreter) -----------------------------------------------

interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")


@interpreter
@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 1, 13), (1, 13, 1), (3, 1, 1)])
@pytest.mark.parametrize("n", [0, 1, 2, 200])
def test_triton_equals_reference_interpreter(kernel, n):
    coords = _border_coords(n, seed=n)
    for dtype in (torch.int32, torch.int64):
        ref = submanifold_pairs(coords.to(dtype), SHAPE, kernel, impl="reference")
        got = submanifold_pairs(coords.to(dtype), SHAPE, kernel, impl="triton")
        assert got.dtype == torch.int64 and got.shape == ref.shape == (kernel[0] * kernel[1] * kernel[2], n)
        assert torch.equal(got, ref)
    if n:
        assert torch.equal(got, _brute_force_pairs(coords, SHAPE, kernel))
    if n == 200:
        assert (got >= 0).sum() > n and (got < 0).any()  # neighbours found and missing both tested
    many = submanifold_pairs_many(coords, SHAPE, [kernel, (3, 3, 3)], impl="triton")
    assert torch.equal(many[0], got) and torch.equal(many[1], submanifold_pairs(coords, SHAPE, (3, 3, 3)))


@interpreter
def test_auto_keeps_reference_on_cpu_and_custom_op_interpreter(monkeypatch):
    coords = _border_coords(120).int()
    ref = submanifold_pairs(coords, SHAPE, (3, 3, 3), impl="reference")
    calls = []
    real = sp_mod._reference
    monkeypatch.setattr(sp_mod, "_reference", lambda *a: calls.append(1) or real(*a))
    assert torch.equal(submanifold_pairs(coords, SHAPE, (3, 3, 3)), ref) and calls  # auto: CPU -> reference

    class Pairs(torch.nn.Module):
        def forward(self, coords):
            return submanifold_pairs(coords, SHAPE, (3, 3, 3), impl="triton")

    program = torch.export.export(Pairs(), (coords,))  # the kernel is one node, as torch.compile sees it
    op = torch.ops.visionattn.submanifold_pairs_triton.default
    assert sum(node.target == op for node in program.graph.nodes) == 1
    assert torch.equal(program.module()(coords), ref)


def test_triton_interpreter():
    """The Triton kernel on CPU in a fresh process: Triton reads TRITON_INTERPRET when the kernel is defined."""
    run_interpreted(__file__, "-k", "interpreter and not test_triton_interpreter", expect="17 passed", timeout=600)


# --- CUDA: a Waymo-sized frame ------------------------------------------------------------------------

def _two_frames(n_voxels=100000):
    """~100k voxels in two batch entries (two synthetic frames of half the size, different seeds)."""
    first, second = voxel_coords(n_voxels // 2, seed=0), voxel_coords(n_voxels - n_voxels // 2, seed=1)
    second[:, 0] = 1
    return torch.cat([first, second])


@pytest.mark.cuda
@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 1, 13), (1, 13, 1), (3, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_triton_equals_reference_cuda(kernel, dtype):
    coords = _two_frames().to("cuda", dtype)
    got = submanifold_pairs(coords, (32, 480, 480), kernel, impl="triton")
    ref = submanifold_pairs(coords, (32, 480, 480), kernel, impl="reference")
    assert torch.equal(got, ref)
    assert torch.equal(submanifold_pairs(coords, (32, 480, 480), kernel), got)  # auto on CUDA: triton
    assert torch.equal(got.cpu(), submanifold_pairs(coords.cpu(), (32, 480, 480), kernel))  # CPU (checked values)


@pytest.mark.cuda
def test_no_host_sync_cuda():
    """Neither the op's triton path nor the sparse backend's submanifold tables wait for the GPU."""
    coords = _two_frames().cuda().int()
    submanifold_pairs(coords, (32, 480, 480), (3, 3, 3), impl="triton")  # compile the kernel first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for kernel in [(3, 3, 3), (1, 1, 13), (1, 13, 1)]:
            submanifold_pairs(coords, (32, 480, 480), kernel, impl="triton")
        if torch_pairs is not None:
            torch_pairs(coords, (32, 480, 480), (3, 3, 3), (1, 1, 1), (1, 1, 1), True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
