"""Bi-level routing attention: reference vs an independent dense formula, triton path vs reference."""
import os
import warnings

import pytest
import torch

from visionattn.ops import bilevel_routing_attention as bra_mod
from visionattn.ops.bilevel_routing_attention import IMPLS, bilevel_routing_attention, example_inputs, route
from visionattn.ops.dispatch import use_impl
from triton_interpreter import run_interpreted

# (batch, H, W, C, heads, n_win, topk): square, non-square, batch 1, one region per side, 1-token regions.
GRID = [
    (2, 14, 14, 64, 2, 7, 4),
    (1, 12, 20, 32, 1, 4, 3),
    (2, 8, 12, 64, 4, 2, 2),
    (1, 6, 9, 32, 2, 3, 9),
    (1, 4, 4, 32, 1, 4, 5),
    (1, 10, 10, 16, 2, 1, 1),
]


def _inputs(b, h, w, c, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, w, c, generator=g).to(device, dtype) for _ in range(3)]


def _dense_masked(q, k, v, n_win, heads, topk, scale):
    """Independent formula: full attention over all tokens with a token mask from the routing."""
    b, h, w, c = q.shape
    rows = torch.arange(h).view(h, 1) // (h // n_win)
    cols = torch.arange(w).view(1, w) // (w // n_win)
    region = (rows * n_win + cols).reshape(-1)  # (H*W,) raster order -> region id
    idx = route(q, k, n_win, topk, scale)  # (B, R, topk)
    allowed = torch.zeros(b, n_win ** 2, n_win ** 2, dtype=torch.bool).scatter_(2, idx, True)
    mask = allowed[:, region][:, :, region]  # (B, HW, HW)
    qh, kh, vh = (t.reshape(b, h * w, heads, -1).transpose(1, 2) for t in (q, k, v))
    logits = (qh * scale) @ kh.transpose(-2, -1)
    logits = logits.masked_fill(~mask[:, None], float("-inf"))
    return (logits.softmax(-1) @ vh).transpose(1, 2).reshape(b, h, w, -1)


@pytest.mark.parametrize("shape", GRID)
def test_reference_equals_dense_masked_attention(shape):
    b, h, w, c, heads, n_win, topk = shape
    q, k, v = _inputs(b, h, w, c)
    out = bilevel_routing_attention(q, k, v, n_win, heads, topk, c ** -0.5, impl="reference")
    assert out.shape == (b, h, w, c)
    torch.testing.assert_close(out, _dense_masked(q, k, v, n_win, heads, topk, c ** -0.5), atol=1e-5, rtol=1e-5)


def _triton_vs_reference(shape, dtype=torch.float32, device="cpu", seed=3):
    """Forward + backward of the triton path on strided q/k/v views of one fused (B, H, W, 3C)
    projection (how the model calls it) against the reference; returns (out, ref, grads, ref grads)."""
    b, h, w, c, heads, n_win, topk = shape
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, h, w, 3 * c, generator=g).to(device, dtype).requires_grad_()
    q, k, v = qkv.chunk(3, dim=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # top-k clamp
        out = bilevel_routing_attention(q, k, v, n_win, heads, topk, c ** -0.5, impl="triton")
        ref = bilevel_routing_attention(q, k, v, n_win, heads, topk, c ** -0.5, impl="reference")
    grad = torch.randn(out.shape, generator=g).to(device, dtype)
    return out, ref, torch.autograd.grad(out, qkv, grad)[0], torch.autograd.grad(ref, qkv, grad)[0]


interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")


@interpreter
# GRID minus its largest case (slow in the interpreter), + 100-token regions (7 tiles of 16), head dim 24.
@pytest.mark.parametrize("shape", GRID[1:] + [(1, 20, 20, 48, 2, 2, 2)])
def test_triton_equals_reference_forward_backward_interpreter(shape):
    out, ref, grad, grad_ref = _triton_vs_reference(shape)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(grad, grad_ref, atol=5e-6, rtol=1e-5)


@interpreter
def test_triton_half_precision_interpreter():
    """fp16 (the interpreter's bf16 dot is broken, bf16 runs in the cuda tests)."""
    out, ref, grad, grad_ref = _triton_vs_reference((2, 8, 12, 32, 1, 2, 3), dtype=torch.float16)
    for a, r in ((out, ref), (grad, grad_ref)):
        assert ((a.float() - r.float()).norm() / r.float().norm()) < 2e-3


def test_triton_interpreter():
    """The Triton kernels on CPU (fp32 grid + fp16) in a fresh process: Triton reads TRITON_INTERPRET
    when the kernels are defined."""
    run_interpreted(__file__, "-k", "interpreter and not test_triton_interpreter", expect="7 passed")


def test_topk_above_regions_clamps_with_warning_to_global_attention():
    q, k, v = _inputs(1, 6, 6, 32)
    with pytest.warns(UserWarning, match="topk=20 exceeds the 9 regions"):
        out = bilevel_routing_attention(q, k, v, 3, 2, 20, 0.2, impl="reference")
    qh, kh, vh = (t.reshape(1, 36, 2, 16).transpose(1, 2) for t in (q, k, v))
    full = (((qh * 0.2) @ kh.transpose(-2, -1)).softmax(-1) @ vh).transpose(1, 2).reshape(1, 6, 6, 32)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad,match", [
    (dict(n_win=4), "not a multiple of n_win=4"),
    (dict(topk=0), "topk must be >= 1"),
    (dict(num_heads=3), "num_heads=3"),
    (dict(impl="cuda"), "unknown impl 'cuda'"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    q, k, v = _inputs(1, 6, 6, 32)
    kwargs = dict(n_win=3, num_heads=2, topk=2, scale=0.2, impl="reference")
    kwargs.update(bad)
    with pytest.raises(ValueError, match=match):
        bilevel_routing_attention(q, k, v, **kwargs)


def test_routing_is_not_differentiated_but_attention_is():
    q, k, v = (t.requires_grad_() for t in _inputs(1, 8, 8, 32))
    out = bilevel_routing_attention(q, k, v, 2, 2, 2, 32 ** -0.5, impl="reference")
    gq, gk, gv = torch.autograd.grad(out.square().sum(), (q, k, v))
    # Gradients equal the dense masked formula with the routing held fixed (mask has no gradient).
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    dense = _dense_masked(q2, k2, v2, 2, 2, 2, 32 ** -0.5)
    for a, b in zip((gq, gk, gv), torch.autograd.grad(dense.square().sum(), (q2, k2, v2))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs triton on CPU")
def test_op_contract_and_auto_dispatch_on_cpu(monkeypatch):
    assert IMPLS == ("triton", "reference")
    kwargs = example_inputs(batch=1, size=14, channels=32, num_heads=1, n_win=7, topk=2)
    ref = bilevel_routing_attention(**kwargs, impl="reference")
    calls = []
    monkeypatch.setattr(bra_mod, "_reference", lambda *a: calls.append(1) or ref)
    assert bilevel_routing_attention(**kwargs) is ref and calls  # auto -> reference on CPU
    with use_impl("triton"):  # forcing an impl that cannot run on CPU falls back to the reference
        assert bilevel_routing_attention(**kwargs) is ref
    with pytest.raises(ValueError, match="does not support"):
        bilevel_routing_attention(**kwargs, impl="triton")


# --- CUDA: the Triton kernels, forward and backward --------------------------------------------------

# (shape, dtype): every dtype on stage-like and dense-like shapes.
CUDA_CASES = [
    ((2, 56, 56, 64, 2, 7, 1), torch.float32),     # BiFormer stage 1 at 224
    ((2, 14, 14, 256, 8, 7, 16), torch.bfloat16),  # stage 3 at 224 (4-token regions)
    ((1, 64, 96, 64, 2, 16, 1), torch.float16),    # dense, non-square (n_win 16)
    ((1, 32, 48, 128, 4, 16, 4), torch.bfloat16),
    ((3, 20, 28, 96, 3, 4, 5), torch.float32),     # odd heads, 35-token regions
    ((1, 28, 28, 128, 4, 7, 4), torch.float16),    # stage 2 at 224, batch 1
]


@pytest.mark.cuda
@pytest.mark.parametrize("shape,dtype", CUDA_CASES + [((1, 40, 60, 64, 2, 2, 3), torch.bfloat16),  # 600-token
                                                      ((1, 6, 9, 32, 2, 3, 12), torch.float32)])  # regions; clamp
def test_triton_matches_reference_cuda_forward_backward(shape, dtype):
    out, ref, grad, grad_ref = _triton_vs_reference(shape, dtype, "cuda")
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(grad, grad_ref, atol=1e-4, rtol=1e-4)
    else:  # both round differently (triton accumulates in fp32); compare relative error
        for a, r in ((out, ref), (grad, grad_ref)):
            rel = (a.float() - r.float()).norm() / r.float().norm()
            assert rel < 2e-2, rel


@pytest.mark.cuda
def test_triton_under_torch_compile_cuda():
    """The custom op traces (fake impl) and its autograd runs inside a compiled function."""
    shape = (2, 28, 28, 128, 4, 7, 4)
    b, h, w, c, heads, n_win, topk = shape
    qkv = torch.randn(b, h, w, 3 * c, device="cuda", requires_grad=True)

    def f(qkv):
        q, k, v = qkv.chunk(3, dim=-1)
        return bilevel_routing_attention(q, k, v, n_win, heads, topk, c ** -0.5, impl="triton").square().sum()

    eager = torch.autograd.grad(f(qkv), qkv)[0]
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(qkv), qkv)[0]
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
def test_auto_picks_triton_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(bra_mod, "_triton", lambda *a: calls.append(1) or bra_mod._reference(*a))
    kwargs = example_inputs(device="cuda", batch=1)
    bilevel_routing_attention(**kwargs)
    assert calls
