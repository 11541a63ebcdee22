"""depthwise_conv2d: the channels_last Triton kernel (interpreter on CPU, CUDA) and the CUDA C kernel
(CUDA), with and without the epilogue, against F.conv2d and the epilogue in float64."""
import os

import pytest
import torch
import torch.nn.functional as F

from visionattn.ops import depthwise_conv2d as dw
from triton_interpreter import run_interpreted

# (B, C, H, W, K): maps narrower/shorter than the kernel, channels not a multiple of the block
CASES = [(2, 5, 7, 9, 5), (1, 3, 2, 3, 5), (1, 70, 6, 5, 3), (2, 4, 5, 11, 1)]
# epilogues: (bias, gelu, scale, residual)
EPILOGUES = [(False, False, False, False), (True, True, False, False), (True, False, True, True),
             (True, True, True, True), (False, False, False, True)]


def _inputs(device, dtype, B, C, H, W, K, epilogue=EPILOGUES[0], seed=0):
    bias, gelu, scale, residual = epilogue
    g = torch.Generator().manual_seed(seed + C + K)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)
    nhwc = torch.channels_last
    return dict(x=rand(B, C, H, W).contiguous(memory_format=nhwc), weight=rand(C, 1, K, K) / K,
                bias=rand(C) if bias else None, residual=rand(B, C, H, W).contiguous(memory_format=nhwc) if residual
                else None, scale=rand(C) if scale else None, gelu=gelu)


def _exact(kw):
    """The formula in float64."""
    return dw.depthwise_conv2d_reference(**{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})


def _compare(device, dtype, case, epilogue, tol, impl="triton", grads=True):
    kw = _inputs(device, dtype, *case, epilogue)
    y = dw.depthwise_conv2d(**kw, impl=impl)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    ref = _exact(kw)
    err = (y.double() - ref).abs().max().item()
    assert err <= tol * max(1.0, ref.abs().max().item()), (case, epilogue, dtype, impl, err)
    if not grads:
        return
    leaves = {k: v.detach().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    tensors = [v for v in leaves.values() if isinstance(v, torch.Tensor)]
    y = dw.depthwise_conv2d(**leaves, impl=impl)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    got = torch.autograd.grad(y, tensors, gy)  # the reference's gradients
    want = torch.autograd.grad(dw.depthwise_conv2d_reference(**leaves), tensors, gy)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("case", CASES)
def test_triton_interpreter_cases(case):
    for epilogue in EPILOGUES if case[1] < 70 else EPILOGUES[:1]:
        _compare("cpu", torch.float32, case, epilogue, 1e-5)


def test_triton_interpreter():
    pytest.importorskip("triton")
    run_interpreted(__file__, "-k", "test_triton_interpreter_cases", expect=f"{len(CASES)} passed", timeout=600)


def test_reference_dispatch_and_contract():
    kw = dw.example_inputs(channels=4, height=9, width=8)
    out = dw.depthwise_conv2d(**kw)  # CPU without the interpreter: the reference
    torch.testing.assert_close(out, F.conv2d(kw["x"], kw["weight"], padding=2, groups=4))
    assert dw.IMPLS[-1] == "reference" and dw.resolve_impl(kw["x"], kw["weight"]) in ("triton", "reference")
    with pytest.raises(ValueError, match="cuda.*does not support"):  # no CUDA tensor: the kernel cannot run
        dw.depthwise_conv2d(**kw, impl="cuda")
    # the epilogue: bias, GELU, scale, residual in that order
    b, s, r = torch.randn(4), torch.rand(4), torch.randn_like(kw["x"])
    want = r + s.view(1, -1, 1, 1) * F.gelu(F.conv2d(kw["x"], kw["weight"], b, padding=2, groups=4))
    torch.testing.assert_close(dw.depthwise_conv2d(**kw, bias=b, residual=r, scale=s, gelu=True), want)
    with pytest.raises(ValueError, match="K odd"):
        dw.depthwise_conv2d(kw["x"], torch.randn(4, 1, 4, 4))
    with pytest.raises(ValueError, match="weight"):
        dw.depthwise_conv2d(kw["x"], torch.randn(3, 1, 5, 5))
    with pytest.raises(ValueError, match="bias"):
        dw.depthwise_conv2d(**kw, bias=torch.randn(5))
    with pytest.raises(ValueError, match="residual"):
        dw.depthwise_conv2d(**kw, residual=torch.randn(1, 4, 9, 9))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_triton_cuda(dtype, tol):
    for case in CASES + [(1, 48, 256, 256, 5), (1, 96, 64, 64, 5), (1, 384, 32, 32, 5)]:
        for epilogue in EPILOGUES[:3]:
            _compare("cuda", dtype, case, epilogue, tol)


# FFNet-1's token-mixer maps at 224 (b4) and Restore-RWKV's Omni-Shift, plus odd shapes: channels
# that leave one channel per thread (5, 70), maps narrower than a strip or the kernel, a 1x1 kernel
CUDA_CASES = CASES + [(4, 80, 56, 56, 3), (4, 320, 14, 14, 7), (2, 640, 7, 7, 7), (1, 48, 64, 64, 5),
                      (3, 24, 9, 13, 7), (1, 8, 1, 1, 3)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2 ** -7), (torch.float16, 2 ** -10)])
def test_cuda_kernel(dtype, tol):
    """The CUDA C kernel: float32 sums and epilogue, rounded once (within one rounding of the exact
    result); chosen by default for inference on channels_last CUDA maps, not under autograd."""
    from visionattn.ops import _depthwise_conv2d_cuda as kernel
    assert kernel.available(), "NVRTC could not compile the depthwise kernel"
    for case in CUDA_CASES:
        for epilogue in EPILOGUES:
            _compare("cuda", dtype, case, epilogue, tol, impl="cuda", grads=False)
    kw = _inputs("cuda", dtype, *CUDA_CASES[-4], EPILOGUES[2])
    with torch.no_grad():
        assert dw.resolve_impl(kw["x"], kw["weight"], kw["bias"], kw["residual"], kw["scale"]) == "cuda"
    leaf = kw["weight"].detach().requires_grad_()
    assert dw.resolve_impl(kw["x"], leaf) == "triton"  # gradients: the Triton op
    # a map whose storage starts off the vector alignment: narrower vectors, same result
    flat = torch.randn(2 * 40 * 6 * 6 + 1, device="cuda", dtype=dtype)[1:]
    x = flat.as_strided((2, 40, 6, 6), (40 * 36, 1, 6 * 40, 40))
    w = torch.randn(40, 1, 3, 3, device="cuda", dtype=dtype)
    torch.testing.assert_close(dw.depthwise_conv2d(x, w, impl="cuda").double(), _exact(dict(x=x, weight=w)),
                               atol=tol * 8, rtol=tol)
    # an updated weight is seen: the cached tap layout follows an in-place update (version) and a
    # swapped storage (what module.to() does to a parameter), and inference tensors are not cached
    kw = _inputs("cuda", dtype, 2, 16, 8, 8, 3)
    kw["weight"] = torch.nn.Parameter(kw["weight"], requires_grad=False)
    first = dw.depthwise_conv2d(**kw, impl="cuda")
    kw["weight"].mul_(2)
    torch.testing.assert_close(dw.depthwise_conv2d(**kw, impl="cuda"), first * 2, atol=tol * 8, rtol=tol)
    kw["weight"].data = kw["weight"].data * 2
    torch.testing.assert_close(dw.depthwise_conv2d(**kw, impl="cuda"), first * 4, atol=tol * 16, rtol=tol)
    with torch.inference_mode():
        w = kw["weight"] * 0.25
        torch.testing.assert_close(dw.depthwise_conv2d(kw["x"], w, impl="cuda"), first, atol=tol * 8, rtol=tol)


@pytest.mark.cuda
def test_cuda_kernel_in_a_cuda_graph():
    """Tuned on the warm-up call, then captured; the replay reads the new input."""
    kw = _inputs("cuda", torch.bfloat16, 8, 320, 14, 14, 7, EPILOGUES[2])
    static = kw["x"].clone()
    with torch.no_grad():
        dw.depthwise_conv2d(**{**kw, "x": static}, impl="cuda")
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = dw.depthwise_conv2d(**{**kw, "x": static}, impl="cuda")
        static.copy_(torch.randn_like(static))
        graph.replay()
        torch.testing.assert_close(out, dw.depthwise_conv2d(**{**kw, "x": static}, impl="cuda"), atol=0, rtol=0)
