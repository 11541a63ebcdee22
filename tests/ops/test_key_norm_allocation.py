"""key_norm_allocation: the one-launch Triton kernel (interpreter on CPU, CUDA) against the PyTorch reference."""
import os

import pytest
import torch

from visionattn.ops import key_norm_allocation as kna
from visionattn.ops._triton import triton_available
from triton_interpreter import run_interpreted


def _cases(device, dtype):
    """(k, num_heads, min_queries): strided views of a qkv projection, odd sizes, G = 1, ties, minq 2."""
    g = torch.Generator().manual_seed(0)
    out = []
    for B, N, H, G, d, minq in [(3, 17, 12, 6, 8, 1), (2, 5, 8, 3, 6, 2), (2, 9, 4, 1, 4, 1), (4, 33, 16, 4, 16, 1)]:
        qkv = torch.randn(B, N, (H + 2 * G) * d, generator=g)
        qkv[..., H * d:(H + G) * d] *= torch.rand(G, generator=g).repeat_interleave(d) * 2 + 0.1
        k = qkv.to(device, dtype)[..., H * d:(H + G) * d].view(B, N, G, d).transpose(1, 2)
        out.append((k, H, minq))
    tied = torch.ones(2, 3, 4, 8, device=device, dtype=dtype)  # equal norms: uniform split
    out.append((tied, 9, 1))
    return out


def _check(device, dtype):
    for k, H, minq in _cases(device, dtype):
        ref = kna.key_norm_allocation(k, H, minq, impl="reference")
        got = kna.key_norm_allocation(k, H, minq, impl="triton")
        assert got.dtype == torch.long and got.shape == ref.shape
        assert (got.sum(-1) == H).all() and (got >= minq).all()
        assert torch.equal(got.cpu(), ref.cpu()), (tuple(k.shape), H, minq, got.tolist(), ref.tolist())


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
def test_triton_interpreter_cases():
    _check("cpu", torch.float32)


@pytest.mark.skipif(not triton_available(), reason="triton not installed")
def test_triton_interpreter():
    run_interpreted(__file__, "-k", "test_triton_interpreter_cases")


def test_reference_and_contract():
    kw = kna.example_inputs(batch=2, tokens=5)
    sizes = kna.key_norm_allocation(**kw, impl="reference")
    assert sizes.shape == (2, 6) and (sizes.sum(-1) == 12).all()
    assert kna.IMPLS == ("triton", "reference")
    with pytest.raises(ValueError, match="query heads"):
        kna.key_norm_allocation(kw["k"], 4)
    with pytest.raises(ValueError, match=r"\(B, G, N, d\)"):
        kna.key_norm_allocation(kw["k"][0], 12)
    # a float64 model's keys: the norms summed in float64, then float32 (the allocation is the same)
    norms = kna.key_head_norms(kw["k"].double())
    assert norms.dtype == torch.float32
    torch.testing.assert_close(norms, kna.key_head_norms(kw["k"]))
    assert torch.equal(kna.key_norm_allocation(kw["k"].double(), 12, impl="reference"), sizes)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_cuda(dtype):
    _check("cuda", dtype)
    kw = kna.example_inputs(device="cuda", dtype=dtype)
    assert torch.equal(kna.key_norm_allocation(**kw, impl="triton"), kna.key_norm_allocation(**kw, impl="reference"))
    f = torch.compile(lambda k: kna.key_norm_allocation(k, 12, impl="triton"), fullgraph=True)
    assert torch.equal(f(kw["k"]), kna.key_norm_allocation(**kw, impl="reference"))
