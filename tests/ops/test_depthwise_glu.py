"""depthwise_glu: the Triton kernel (interpreter on CPU, CUDA) against the PyTorch formula."""
import os

import pytest
import torch
import torch.nn.functional as F

from visionattn.ops import depthwise_glu as dg
from triton_interpreter import run_interpreted

# (B, H, W, C, K): maps narrower/shorter than the kernel, channels not a multiple of the block, K=1
CASES = [(2, 5, 7, 3, 3), (1, 2, 3, 5, 5), (1, 6, 5, 70, 3), (2, 4, 9, 4, 1)]


def _inputs(device, dtype, B, H, W, C, K):
    g = torch.Generator().manual_seed(C + K)
    h = torch.randn(B, H, W, 2 * C, generator=g).to(device, dtype)
    w = (torch.randn(C, 1, K, K, generator=g) / K).to(device, dtype)
    b = torch.randn(C, generator=g).to(device, dtype)
    return h, w, b


def _float64_formula(h, w, b):
    C, K = w.shape[0], w.shape[-1]
    y = F.conv2d(h[..., :C].double().permute(0, 3, 1, 2), w.double(), b.double(), padding=K // 2, groups=C)
    return h[..., C:].double() * F.gelu(y.permute(0, 2, 3, 1))


def _compare(device, dtype, B, H, W, C, K, tol):
    h, w, b = _inputs(device, dtype, B, H, W, C, K)
    ref = _float64_formula(h, w, b)
    scale = max(1.0, ref.abs().max().item())
    leaves = [t.detach().requires_grad_() for t in (h, w, b)]
    out = dg.depthwise_glu(*leaves, impl="triton")  # autograd: the functional custom op
    assert out.shape == (B, H, W, C) and out.dtype == dtype and out.is_contiguous()
    assert (out.double() - ref).abs().max().item() <= tol * scale, (B, H, W, C, K, dtype)
    gy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    grads = torch.autograd.grad(out, leaves, gy)  # the reference's gradients
    ref_grads = torch.autograd.grad(dg.depthwise_glu_reference(*leaves), leaves, gy)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r)
    # in place: the result lands in the gate half; the conv half is untouched
    h2 = h.clone()
    with torch.no_grad():
        view = dg.depthwise_glu(h2, w, b, inplace=True, impl="triton")
    assert view.data_ptr() == h2[..., C:].data_ptr()
    assert torch.equal(h2[..., :C], h[..., :C])
    assert torch.equal(view, out.detach())  # one kernel, one rounding: the same numbers either way


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("case", CASES)
def test_triton_interpreter_cases(case):
    _compare("cpu", torch.float32, *case, 1e-5)


def test_triton_interpreter():
    pytest.importorskip("triton")
    run_interpreted(__file__, "-k", "test_triton_interpreter_cases", expect=f"{len(CASES)} passed", timeout=600)


def test_reference_matches_the_formula_in_and_out_of_place():
    h, w, b = _inputs("cpu", torch.float64, 2, 5, 6, 4, 3)
    ref = _float64_formula(h, w, b)
    torch.testing.assert_close(dg.depthwise_glu(h, w, b), ref)  # CPU without the interpreter: the reference
    h2 = h.clone()
    out = dg.depthwise_glu(h2, w, b, inplace=True)
    torch.testing.assert_close(out, ref)
    assert out.data_ptr() == h2[..., 4:].data_ptr() and torch.equal(h2[..., :4], h[..., :4])


def test_contract_errors_name_the_fix():
    h, w, b = _inputs("cpu", torch.float32, 1, 4, 4, 4, 3)
    with pytest.raises(ValueError, match="K odd"):
        dg.depthwise_glu(h, torch.zeros(4, 1, 2, 2), b)
    with pytest.raises(ValueError, match=r"\(B, H, W, 2C\)"):
        dg.depthwise_glu(h[..., :6], w, b)
    with pytest.raises(ValueError, match="torch.no_grad"):
        dg.depthwise_glu(h.requires_grad_(), w, b, inplace=True)
    with pytest.raises(ValueError, match="contiguous"):
        dg.depthwise_glu(h.detach().transpose(1, 2), w, b, inplace=True)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 4e-3), (torch.bfloat16, 2e-2)])
def test_triton_cuda(dtype, tol):
    for case in CASES + [(2, 68, 120, 128, 3), (2, 17, 30, 320, 3)]:
        _compare("cuda", dtype, *case, tol)
