"""convex_upsample: the Triton kernel (interpreter on CPU, CUDA) against the PyTorch formula."""
import os

import pytest
import torch

from visionattn.ops import convex_upsample as cu
from triton_interpreter import run_interpreted

# (B, h, w, D, factor, channels_last mask): a 1-pixel map, rows not a multiple of the block, x1/x2/x4
CASES = [(2, 3, 5, 2, 2, True), (1, 1, 1, 4, 4, False), (1, 4, 9, 1, 4, True), (2, 2, 3, 3, 1, False)]


def _inputs(device, dtype, B, h, w, D, factor, channels_last):
    g = torch.Generator().manual_seed(h * w + D)
    field = (4 * torch.randn(B, h, w, D, generator=g)).to(device, dtype)
    mask = (3 * torch.randn(B, 9 * factor * factor, h, w, generator=g)).to(device, dtype)
    return field, mask.contiguous(memory_format=torch.channels_last) if channels_last else mask


def _float64_formula(field, mask, f):
    """Each fine pixel written out as the sum over its 9 neighbours, independently of the reference."""
    field, mask = field.double(), mask.double()
    B, h, w, D = field.shape
    padded = torch.nn.functional.pad(field, (0, 0, 1, 1, 1, 1))  # zeros around the map
    out = torch.zeros(B, f * h, f * w, D, dtype=torch.float64)
    logits = mask.view(B, 9, f, f, h, w)
    weights = logits.softmax(dim=1)
    for k in range(9):
        dy, dx = k // 3 - 1, k % 3 - 1
        nb = padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] * f  # (B, h, w, D)
        for u in range(f):
            for v in range(f):
                out[:, u::f, v::f] += weights[:, k, u, v, :, :, None] * nb
    return out


def _compare(device, dtype, case, tol):
    field, mask = _inputs(device, dtype, *case)
    f = case[4]
    ref = _float64_formula(field.cpu(), mask.cpu(), f).to(device)
    out = cu.convex_upsample(field, mask, f, impl="triton")
    assert out.shape == ref.shape and out.dtype == dtype and out.is_contiguous()
    assert (out.double() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item()), (case, dtype)
    leaves = [field.detach().requires_grad_(), mask.detach().requires_grad_()]
    gy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    grads = torch.autograd.grad(cu.convex_upsample(*leaves, f, impl="triton"), leaves, gy)  # the reference's
    ref_grads = torch.autograd.grad(cu.convex_upsample_reference(*leaves, f), leaves, gy)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("case", CASES)
def test_triton_interpreter_cases(case):
    _compare("cpu", torch.float32, case, 1e-5)


def test_triton_interpreter():
    pytest.importorskip("triton")
    run_interpreted(__file__, "-k", "test_triton_interpreter_cases", expect=f"{len(CASES)} passed", timeout=600)


@pytest.mark.parametrize("case", CASES)
def test_reference_is_the_formula(case):
    field, mask = _inputs("cpu", torch.float64, *case)
    torch.testing.assert_close(cu.convex_upsample(field, mask, case[4]), _float64_formula(field, mask, case[4]))


def test_contract_errors_name_the_fix():
    field, mask = _inputs("cpu", torch.float32, 1, 3, 4, 2, 2, False)
    with pytest.raises(ValueError, match=r"9\*factor\*\*2"):
        cu.convex_upsample(field, mask, 4)
    with pytest.raises(ValueError, match="factor"):
        cu.convex_upsample(field, mask, 0)
    with pytest.raises(ValueError, match=r"\(B, h, w, D\)"):
        cu.convex_upsample(field[0], mask, 2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 4e-3), (torch.bfloat16, 2e-2)])
def test_triton_cuda(dtype, tol):
    for case in CASES + [(2, 68, 120, 2, 4, True), (2, 34, 60, 4, 2, True)]:
        _compare("cuda", dtype, case, tol)
