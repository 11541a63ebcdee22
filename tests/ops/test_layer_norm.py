"""LayerNorm op: the Triton path (interpreter on CPU, CUDA) against torch.nn.functional.layer_norm."""
import os
import subprocess
import sys

import pytest
import torch

from visionattn.ops import layer_norm as ln

# (shape, channel slice end or None, bias): odd widths, strided channel slices, rows not a multiple of the block
CASES = [((3, 5, 42), None, False), ((2, 4, 7, 36), 34, False), ((37, 130), 128, True), ((6, 522), None, True)]


def _compare(device, dtype, shape, cut, bias, atol):
    g = torch.Generator().manual_seed(len(shape) + shape[-1])
    full = torch.randn(shape, generator=g).to(device, dtype)
    x = full[..., :cut] if cut else full
    D = x.shape[-1]
    w = (1 + 0.1 * torch.randn(D, generator=g)).to(device, dtype)
    b = (0.1 * torch.randn(D, generator=g)).to(device, dtype) if bias else None
    outs = {}
    for impl in ("reference", "triton"):
        leaves = [t.detach().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
        y = ln.layer_norm(leaves[0], leaves[1], leaves[2] if bias else None, 1e-5, impl=impl)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        grads = torch.autograd.grad((y.float() * gy.float()).sum(), leaves)
        outs[impl] = [y, *grads]
    assert outs["triton"][0].is_contiguous() and outs["triton"][0].dtype == dtype
    for name, r, t in zip(("y", "dx", "dw", "db"), outs["reference"], outs["triton"]):
        scale = max(1.0, r.float().abs().max().item())
        assert (r.float() - t.float()).abs().max().item() <= atol * scale, (name, shape, dtype)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("shape,cut,bias", CASES)
def test_triton_interpreter_cases(shape, cut, bias):
    _compare("cpu", torch.float32, shape, cut, bias, 1e-5)


@pytest.mark.skipif(not ln.triton_available(), reason="triton not installed")
def test_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                           "-k", "test_triton_interpreter_cases"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_reference_and_contract():
    kw = ln.example_inputs(tokens=10, dim=6)
    y = ln.layer_norm(**kw, impl="reference")
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(kw["x"], (6,), kw["weight"], eps=1e-5))
    assert ln.IMPLS == ("triton", "reference")
    with pytest.raises(ValueError, match="weight"):
        ln.layer_norm(kw["x"], kw["weight"][:3])
    if not ln.interpreting():  # CPU tensors: the Triton path needs a GPU (or the interpreter)
        with pytest.raises(ValueError, match="does not support"):
            ln.layer_norm(kw["x"], kw["weight"], impl="triton")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("shape,cut,bias", CASES)
def test_triton_cuda(shape, cut, bias, dtype, atol):
    _compare("cuda", dtype, shape, cut, bias, atol)


@pytest.mark.cuda
def test_triton_cuda_compiles():
    kw = ln.example_inputs(device="cuda", tokens=100)
    f = torch.compile(lambda **k: ln.layer_norm(**k, impl="triton"), fullgraph=True)
    torch.testing.assert_close(f(**kw), ln.layer_norm(**kw, impl="reference"), atol=1e-5, rtol=1e-5)
