import pytest
import torch

from visionattn.ops.dispatch import use_impl
from visionattn.ops.multi_head_cross_attention import IMPLS, example_inputs, multi_head_cross_attention


def _loop(q, k, v, heads):
    """Per-sample, per-head attention in float64 (independent of the op's code)."""
    d = q.shape[-1] // heads
    dv = v.shape[-1] // heads
    out = torch.empty(q.shape[0], q.shape[1], v.shape[-1], dtype=torch.float64)
    for b in range(q.shape[0]):
        for h in range(heads):
            qh = q[b, :, h * d:(h + 1) * d].double()
            kh = k[b, :, h * d:(h + 1) * d].double()
            vh = v[b, :, h * dv:(h + 1) * dv].double()
            w = torch.softmax(qh @ kh.T / d ** 0.5, dim=-1)
            out[b, :, h * dv:(h + 1) * dv] = w @ vh
    return out


def test_contract():
    assert IMPLS == ("sdpa", "reference")
    out = multi_head_cross_attention(**example_inputs(batch=1, tokens=16))
    assert out.shape == (1, 16, 256)


@pytest.mark.parametrize("nq,nk,c,cv,heads", [(16, 16, 32, 32, 4), (10, 23, 24, 24, 8), (7, 5, 16, 8, 2), (9, 9, 12, 12, 1)])
def test_impls_match_loop_fp32(nq, nk, c, cv, heads):
    g = torch.Generator().manual_seed(nq * nk)
    q, k, v = torch.randn(2, nq, c, generator=g), torch.randn(2, nk, c, generator=g), torch.randn(2, nk, cv, generator=g)
    expected = _loop(q, k, v, heads).float()
    for impl in IMPLS:
        torch.testing.assert_close(multi_head_cross_attention(q, k, v, heads, impl=impl), expected, atol=2e-6, rtol=1e-5)


def test_sdpa_equals_reference_on_map_views_and_custom_scale():
    """Token tensors flattened from NCHW maps (channel axis strided, as the model passes them)."""
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 32, 4, 6, generator=g) for _ in range(3)]
    q, k, v = (m.flatten(2).transpose(1, 2) for m in maps)  # (B, 24, 32), stride(-1) = 24
    assert q.stride(-1) != 1
    for scale in (None, 0.05):
        ref = multi_head_cross_attention(q, k, v, 4, scale=scale, impl="reference")
        fast = multi_head_cross_attention(q, k, v, 4, scale=scale, impl="sdpa")
        torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-5)
    # the default scale is the head width's, (C / heads) ** -0.5
    torch.testing.assert_close(multi_head_cross_attention(q, k, v, 4, scale=8 ** -0.5, impl="reference"),
                               multi_head_cross_attention(q, k, v, 4, impl="reference"))


def test_gradients_match_reference():
    inputs = example_inputs(batch=2, tokens=12, kv_tokens=20, channels=16, num_heads=4)
    grads = {}
    for impl in IMPLS:
        q, k, v = (inputs[n].clone().requires_grad_() for n in "qkv")
        out = multi_head_cross_attention(q, k, v, 4, impl=impl)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[impl] = (out.detach(), q.grad, k.grad, v.grad)
    for a, b in zip(grads["sdpa"], grads["reference"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_use_impl_forces_reference(monkeypatch):
    from visionattn.ops import multi_head_cross_attention as mod

    called = []
    original = mod._reference
    monkeypatch.setattr(mod, "_reference", lambda *a: called.append(1) or original(*a))
    inputs = example_inputs(batch=1, tokens=4, channels=8, num_heads=2)
    multi_head_cross_attention(**inputs)
    assert not called
    with use_impl("reference"):
        multi_head_cross_attention(**inputs)
    assert called


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_close_to_fp32(dtype):
    inputs = example_inputs(batch=1, tokens=64, channels=32, num_heads=4)
    ref = multi_head_cross_attention(**inputs, impl="reference")
    low = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    out = multi_head_cross_attention(**low, impl="sdpa")
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_bad_inputs_name_the_problem():
    q = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="token tensors"):
        multi_head_cross_attention(q.view(1, 4, 2, 4), q, q, 2)
    with pytest.raises(ValueError, match="num_heads=3"):
        multi_head_cross_attention(q, q, q, 3)
    with pytest.raises(ValueError, match="do not fit"):
        multi_head_cross_attention(q, torch.randn(1, 5, 8), torch.randn(1, 6, 8), 2)
    with pytest.raises(ValueError, match="dtype"):
        multi_head_cross_attention(q, q.double(), q, 2)
    with pytest.raises(ValueError, match="unknown impl"):
        multi_head_cross_attention(q, q, q, 2, impl="triton")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_sdpa_matches_reference(dtype):
    inputs = example_inputs(device="cuda", dtype=dtype, batch=2, tokens=1024, channels=256, num_heads=4)
    ref = multi_head_cross_attention(**{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()},
                                     impl="reference")
    out = multi_head_cross_attention(**inputs, impl="sdpa")
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
