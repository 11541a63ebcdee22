import os

import pytest
import torch

from visionattn.ops import grouped_query_attention as gqa_mod
from visionattn.ops._triton import triton_available
from visionattn.ops.dispatch import use_impl
from visionattn.ops.grouped_query_attention import IMPLS, example_inputs, grouped_query_attention, kv_head_index
from triton_interpreter import run_interpreted


def _mha(q, k, v, sizes):
    """Plain MHA on K/V repeated per query head (independent of the op's code)."""
    B, H = q.shape[:2]
    outs = []
    for b in range(B):
        s = sizes if sizes.dim() == 1 else sizes[b]
        idx = torch.repeat_interleave(torch.arange(len(s)), s)
        attn = (q[b] @ k[b, idx].transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
        outs.append(attn @ v[b, idx])
    return torch.stack(outs)


def test_contract():
    assert IMPLS[-1] == "reference" and set(IMPLS) == {"sdpa_gqa", "sdpa_expand", "sdpa_index", "reference"}
    out = grouped_query_attention(**example_inputs())
    assert out.shape == (2, 12, 197, 64)


@pytest.mark.parametrize("sizes", [[3, 3, 3, 3], [1, 5, 0, 6], [12, 0, 0, 0], [0, 0, 0, 12], [2, 4, 4, 2]])
def test_impls_agree_shared_sizes(sizes):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 12, 17, 8), torch.randn(2, 4, 17, 8), torch.randn(2, 4, 17, 8)
    s = torch.tensor(sizes)
    expected = _mha(q, k, v, s)
    for impl in ("reference", "sdpa_index"):
        torch.testing.assert_close(grouped_query_attention(q, k, v, s, impl=impl), expected, atol=1e-5, rtol=1e-5)


def test_per_sample_sizes_and_uniform_paths():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 6, 10, 16), torch.randn(3, 3, 10, 16), torch.randn(3, 3, 10, 16)
    s = torch.tensor([[2, 2, 2], [1, 0, 5], [4, 1, 1]])
    ref = grouped_query_attention(q, k, v, s, impl="reference")
    torch.testing.assert_close(ref, _mha(q, k, v, s), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grouped_query_attention(q, k, v, s, impl="sdpa_index"), ref, atol=1e-5, rtol=1e-5)
    uni = grouped_query_attention(q, k, v, None, impl="reference")
    for impl in ("sdpa_gqa", "sdpa_index"):
        torch.testing.assert_close(grouped_query_attention(q, k, v, None, impl=impl), uni, atol=1e-5, rtol=1e-5)
    # G = 1 (multi-query) and G = H (multi-head)
    torch.testing.assert_close(grouped_query_attention(q, k[:, :1], v[:, :1], impl="sdpa_gqa"),
                               _mha(q, k[:, :1], v[:, :1], torch.tensor([6])), atol=1e-5, rtol=1e-5)
    k6, v6 = torch.randn(3, 6, 10, 16), torch.randn(3, 6, 10, 16)
    torch.testing.assert_close(grouped_query_attention(q, k6, v6, impl="sdpa_gqa"),
                               torch.nn.functional.scaled_dot_product_attention(q, k6, v6), atol=1e-6, rtol=1e-6)


def test_gradients_match_reference():
    torch.manual_seed(0)
    inputs = example_inputs(batch=1, heads=4, kv_heads=2, tokens=9, head_dim=8)
    grads = {}
    for impl in ("reference", "sdpa_index"):
        q, k, v = (inputs[n].clone().requires_grad_() for n in "qkv")
        grouped_query_attention(q, k, v, inputs["group_sizes"], impl=impl).square().sum().backward()
        grads[impl] = [t.grad for t in (q, k, v)]
    for a, b in zip(*grads.values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_kv_head_index():
    assert kv_head_index(torch.tensor([2, 0, 1]), 3).tolist() == [0, 0, 2]
    assert kv_head_index(torch.tensor([[1, 2], [3, 0]]), 3).tolist() == [[0, 1, 1], [0, 0, 0]]


def test_auto_dispatch(monkeypatch):
    inputs = example_inputs(batch=1, heads=4, kv_heads=2, tokens=5, head_dim=8)
    calls = []
    monkeypatch.setattr(gqa_mod, "_reference", lambda *a: calls.append("reference") or a[0])
    grouped_query_attention(**inputs)  # uneven sizes: auto must not pick sdpa_gqa
    with use_impl("reference"):
        grouped_query_attention(**inputs)
    assert calls == ["reference"]


def test_bad_inputs():
    q, k = torch.randn(1, 4, 5, 8), torch.randn(1, 3, 5, 8)
    with pytest.raises(ValueError, match="uniformly"):
        grouped_query_attention(q, k, k)
    with pytest.raises(ValueError, match="sum to"):
        grouped_query_attention(q, k, k, [1, 1, 1])
    with pytest.raises(ValueError, match="shape"):
        grouped_query_attention(q, k, k, [2, 2])
    with pytest.raises(ValueError, match="does not support"):
        grouped_query_attention(q, k, k, [2, 1, 1], impl="sdpa_gqa")


def _check_expand(device, dtype):
    """sdpa_expand against the reference: per-image and shared sizes (empty groups included), K/V
    as strided views into one fused projection (as the ViTs pass them), forward and gradients."""
    torch.manual_seed(0)
    B, H, G, N, d = 3, 6, 3, 11, 16
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    for sizes in (torch.tensor([[2, 2, 2], [1, 0, 5], [4, 1, 1]]), torch.tensor([0, 6, 0])):
        outs, grads = {}, {}
        data = torch.randn(B, N, (H + 2 * G) * d, device=device).to(dtype)
        for impl in ("sdpa_expand", "reference"):
            qkv = data.clone().requires_grad_()
            q, k, v = qkv.split([H * d, G * d, G * d], dim=-1)
            q, k, v = (t.view(B, N, -1, d).transpose(1, 2) for t in (q, k, v))
            if impl == "reference":  # the reference runs in fp32
                q, k, v = q.float(), k.float(), v.float()
            out = grouped_query_attention(q, k, v, sizes.to(device), impl=impl)
            out.float().square().sum().backward()
            outs[impl], grads[impl] = out.float(), qkv.grad.float()
        torch.testing.assert_close(outs["sdpa_expand"], outs["reference"], **tol)
        torch.testing.assert_close(grads["sdpa_expand"], grads["reference"], **tol)
        with torch.no_grad():  # inference launches the kernel without the op dispatcher
            q, k, v = (t.view(B, N, -1, d).transpose(1, 2) for t in data.split([H * d, G * d, G * d], dim=-1))
            out = grouped_query_attention(q, k, v, sizes.to(device), impl="sdpa_expand")
        torch.testing.assert_close(out.float(), outs["sdpa_expand"], atol=0, rtol=0)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
def test_triton_interpreter_cases():
    _check_expand("cpu", torch.float32)


@pytest.mark.skipif(not triton_available(), reason="triton not installed")
def test_triton_interpreter():
    run_interpreted(__file__, "-k", "test_triton_interpreter_cases")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_expand_matches_reference(dtype):
    _check_expand("cuda", dtype)
    inputs = example_inputs(device="cuda", dtype=dtype, batch=4)
    per_sample = torch.stack([inputs["group_sizes"], inputs["group_sizes"].flip(0)] * 2)
    args = {**inputs, "group_sizes": per_sample}
    torch.testing.assert_close(grouped_query_attention(**args, impl="sdpa_expand"),
                               grouped_query_attention(**args, impl="sdpa_index"), atol=0, rtol=0)
    f = torch.compile(lambda q, k, v, s: grouped_query_attention(q, k, v, s, impl="sdpa_expand"), fullgraph=True)
    torch.testing.assert_close(f(**{"q": args["q"], "k": args["k"], "v": args["v"], "s": per_sample}),
                               grouped_query_attention(**args, impl="sdpa_index"), atol=0, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_fast_paths_match_reference(dtype):
    inputs = example_inputs(device="cuda", dtype=dtype, batch=3)
    ref = grouped_query_attention(**{**inputs, "q": inputs["q"].float(), "k": inputs["k"].float(),
                                     "v": inputs["v"].float()}, impl="reference")
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(grouped_query_attention(**inputs, impl="sdpa_index").float(), ref, atol=tol, rtol=tol)
    per_sample = torch.stack([inputs["group_sizes"], inputs["group_sizes"].flip(0), inputs["group_sizes"]])
    torch.testing.assert_close(grouped_query_attention(**{**inputs, "group_sizes": per_sample}, impl="sdpa_index"),
                               grouped_query_attention(**{**inputs, "group_sizes": per_sample}, impl="reference"),
                               atol=tol, rtol=tol)
    uni = example_inputs(device="cuda", dtype=dtype, uniform=True)
    torch.testing.assert_close(grouped_query_attention(**uni, impl="sdpa_gqa"),
                               grouped_query_attention(**uni, impl="sdpa_index"), atol=tol, rtol=tol)
