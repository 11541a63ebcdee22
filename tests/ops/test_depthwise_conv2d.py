"""depthwise_conv2d: the channels_last Triton kernel (interpreter on CPU, CUDA) against F.conv2d."""
import os

import pytest
import torch
import torch.nn.functional as F

from visionattn.ops import depthwise_conv2d as dw
from triton_interpreter import run_interpreted

# (B, C, H, W, K): maps narrower/shorter than the kernel, channels not a multiple of the block
CASES = [(2, 5, 7, 9, 5), (1, 3, 2, 3, 5), (1, 70, 6, 5, 3), (2, 4, 5, 11, 1)]


def _compare(device, dtype, B, C, H, W, K, tol):
    g = torch.Generator().manual_seed(C + K)
    x = torch.randn(B, C, H, W, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(C, 1, K, K, generator=g).to(device, dtype)
    leaves = [x.detach().requires_grad_(), w.detach().requires_grad_()]
    y = dw.depthwise_conv2d(*leaves, impl="triton")
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x.double(), w.double(), padding=K // 2, groups=C)
    assert (y.double() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item()), (B, C, H, W, K, dtype)
    gy = torch.randn(y.shape, generator=g).to(device, dtype)
    grads = torch.autograd.grad(y, leaves, gy)  # the reference's gradients
    ref_grads = torch.autograd.grad(dw.depthwise_conv2d_reference(*leaves), leaves, gy)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("case", CASES)
def test_triton_interpreter_cases(case):
    _compare("cpu", torch.float32, *case, 1e-5)


def test_triton_interpreter():
    pytest.importorskip("triton")
    run_interpreted(__file__, "-k", "test_triton_interpreter_cases", expect=f"{len(CASES)} passed", timeout=600)


def test_reference_dispatch_and_contract():
    kw = dw.example_inputs(channels=4, height=9, width=8)
    out = dw.depthwise_conv2d(**kw)  # CPU without the interpreter: the reference
    torch.testing.assert_close(out, F.conv2d(kw["x"], kw["weight"], padding=2, groups=4))
    assert dw.IMPLS[-1] == "reference"
    with pytest.raises(ValueError, match="K odd"):
        dw.depthwise_conv2d(kw["x"], torch.randn(4, 1, 4, 4))
    with pytest.raises(ValueError, match="weight"):
        dw.depthwise_conv2d(kw["x"], torch.randn(3, 1, 5, 5))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_triton_cuda(dtype, tol):
    for case in CASES + [(1, 48, 256, 256, 5), (1, 96, 64, 64, 5), (1, 384, 32, 32, 5)]:
        _compare("cuda", dtype, *case, tol)
