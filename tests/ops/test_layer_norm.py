"""LayerNorm op: the Triton path (interpreter on CPU, CUDA) against torch.nn.functional.layer_norm."""
import os

import pytest
import torch

from visionattn.ops import layer_norm as ln
from triton_interpreter import ptx_for_hopper, run_interpreted

# (shape, channel slice end or None, bias): odd widths, strided channel slices, rows not a multiple of the block
CASES = [((3, 5, 42), None, False), ((2, 4, 7, 36), 34, False), ((37, 130), 128, True), ((6, 522), None, True)]


def _compare(device, dtype, shape, cut, bias, atol, width=None):
    """Triton vs reference, output and gradients; ``width``: rows padded with zeros to that width."""
    g = torch.Generator().manual_seed(len(shape) + shape[-1])
    full = torch.randn(shape, generator=g).to(device, dtype)
    x = full[..., :cut] if cut else full
    D = x.shape[-1]
    w = (1 + 0.1 * torch.randn(D, generator=g)).to(device, dtype)
    b = (0.1 * torch.randn(D, generator=g)).to(device, dtype) if bias else None
    outs = {}
    for impl in ("reference", "triton"):
        leaves = [t.detach().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
        y = ln.layer_norm(leaves[0], leaves[1], leaves[2] if bias else None, 1e-5, impl=impl, width=width)
        assert y.shape[-1] == (width or D)
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


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("shape,cut,width", [((3, 5, 42), None, 48), ((2, 4, 7, 36), 34, 40), ((6, 5), None, 72)])
def test_triton_interpreter_cases_width(shape, cut, width):
    _compare("cpu", torch.float32, shape, cut, False, 1e-5, width=width)


# fused residual form: (shape, slice end of x or None, bias, dtype of r, which outputs the loss uses)
ADD_CASES = [((3, 5, 42), None, True, torch.float32, "ys"), ((2, 4, 7, 36), 34, False, torch.float32, "ys"),
             ((37, 130), 128, True, torch.float32, "y"), ((6, 64), None, True, torch.float32, "s"),
             ((70, 64), None, True, torch.float16, "ys")]


def _compare_add(device, dtype, shape, cut, bias, r_dtype, use, atol, rbias=False, rscale=False):
    """Triton vs reference, outputs and gradients; ``rbias``: a per-channel residual bias (no gradient);
    ``rscale``: drop path's per-sample factors on the residual (0 or 1 / 0.7, no gradient)."""
    g = torch.Generator().manual_seed(len(shape) + shape[-1])
    full = torch.randn(shape, generator=g).to(device, dtype)
    x = full[..., :cut] if cut else full
    D = x.shape[-1]
    r = torch.randn(x.shape, generator=g).to(device, r_dtype)
    w = (1 + 0.1 * torch.randn(D, generator=g)).to(device, dtype)
    b = (0.1 * torch.randn(D, generator=g)).to(device, dtype) if bias else None
    gy = torch.randn(x.shape, generator=g).to(device)
    gs = torch.randn(x.shape, generator=g).to(device)
    rb = torch.randn(D, generator=g).to(device, r_dtype) if rbias else None
    k = None
    if rscale:  # both values present: a dropped sample and kept ones
        k = (torch.arange(shape[0]) % 3 != 1).to(device, r_dtype).div_(0.7)
    outs = {}
    for impl in ("reference", "triton"):
        leaves = [t.detach().requires_grad_() for t in (x, r, w) + ((b,) if bias else ())]
        y, s = ln.layer_norm(leaves[0], leaves[2], leaves[3] if bias else None, 1e-6, impl=impl, residual=leaves[1],
                             residual_bias=rb, residual_scale=k)
        loss = (y.float() * gy).sum() * ("y" in use) + (s.float() * gs).sum() * ("s" in use)
        outs[impl] = [y, s, *torch.autograd.grad(loss, leaves)]
    t = outs["triton"]
    assert t[0].is_contiguous() and t[1].is_contiguous() and t[0].dtype == t[1].dtype == torch.promote_types(dtype, r_dtype)
    assert [g.dtype for g in t[2:]] == [dtype, r_dtype, dtype] + ([dtype] if bias else [])
    for name, ref, got in zip(("y", "s", "dx", "dr", "dw", "db"), outs["reference"], t):
        scale = max(1.0, ref.float().abs().max().item())
        # an output stored in a half type may round the two paths' float32 values to neighbouring steps
        tol = max(atol, 2 * torch.finfo(got.dtype).eps)
        err = (ref.float() - got.float()).abs().max().item()
        assert err <= tol * scale, (name, shape, dtype, r_dtype, use, err)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("shape,cut,bias,r_dtype,use", ADD_CASES)
def test_triton_interpreter_add_cases(shape, cut, bias, r_dtype, use):
    _compare_add("cpu", torch.float32, shape, cut, bias, r_dtype, use, 2e-5)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("shape,cut,bias,r_dtype,use", ADD_CASES[:2] + ADD_CASES[4:])
def test_triton_interpreter_add_cases_residual_bias(shape, cut, bias, r_dtype, use):
    _compare_add("cpu", torch.float32, shape, cut, bias, r_dtype, use, 2e-5, rbias=True)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("shape,cut,bias,r_dtype,use", ADD_CASES)
def test_triton_interpreter_add_cases_residual_scale(shape, cut, bias, r_dtype, use):
    _compare_add("cpu", torch.float32, shape, cut, bias, r_dtype, use, 2e-5, rscale=True)


def test_add_residual_scale_is_the_multiply_then_the_add():
    """``residual_scale``: ``x + r * k`` with k per sample, as timm's DropPath multiplies (k of shape
    (N, 1, ..., 1)); bad factors are refused with the fix."""
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g).requires_grad_()
    w, k = torch.randn(6, generator=g), torch.tensor([0.0, 1 / 0.7, 1 / 0.7])
    y, s = ln.layer_norm(x, w, None, 1e-6, residual=r, residual_scale=k, impl="reference")
    assert torch.equal(s, x + r * k.view(3, 1, 1, 1))
    assert torch.equal(y, torch.nn.functional.layer_norm(s, (6,), w, None, eps=1e-6))
    s.sum().backward()
    assert torch.equal(r.grad, k.view(3, 1, 1, 1).expand_as(r))  # the dropped sample's branch gets none
    with pytest.raises(ValueError, match=r"residual_scale of shape \(3, 1, 1, 1\) must be \(3,\)"):
        ln.layer_norm(x, w, residual=r, residual_scale=k.view(3, 1, 1, 1))
    with pytest.raises(ValueError, match=r"residual's dtype.*residual_scale.to\(residual\)"):
        ln.layer_norm(x, w, residual=r, residual_scale=k.double())
    with pytest.raises(ValueError, match="do not combine"):
        ln.layer_norm(x, w, residual=r, residual_scale=k, residual_bias=torch.zeros(6))
    with pytest.raises(ValueError, match="pass residual= too"):
        ln.layer_norm(x, w, residual_scale=k)


def test_add_reference_is_the_add_then_layer_norm():
    kw = ln.example_inputs(tokens=10, dim=6, residual=1)
    y, s = ln.layer_norm(**kw, impl="reference")
    assert torch.equal(s, kw["x"] + kw["residual"])
    assert torch.equal(y, torch.nn.functional.layer_norm(s, (6,), kw["weight"], kw["bias"], eps=1e-6))
    with pytest.raises(ValueError, match="residual of shape"):
        ln.layer_norm(kw["x"], kw["weight"], residual=kw["residual"][:5])
    # a residual bias is added to the residual first; with a gradient it runs (and differentiates) as written
    c = torch.randn(6, requires_grad=True)
    y, s = ln.layer_norm(**kw, residual_bias=c)
    assert torch.equal(s, kw["x"] + (kw["residual"] + c))
    s.sum().backward()
    torch.testing.assert_close(c.grad, torch.full((6,), 10.0))
    with pytest.raises(ValueError, match="residual_bias of shape"):
        ln.layer_norm(**kw, residual_bias=torch.randn(5))
    with pytest.raises(ValueError, match="pass residual= too"):
        ln.layer_norm(kw["x"], kw["weight"], residual_bias=torch.randn(6))
    # the residual bias takes the residual's dtype (a half residual's bias may also be float32), not x's
    r16 = kw["residual"].half()
    y, s = ln.layer_norm(kw["x"], kw["weight"], kw["bias"], 1e-6, residual=r16, residual_bias=c.detach().half())
    assert torch.equal(s, kw["x"] + (r16 + c.detach().half()))
    with pytest.raises(ValueError, match=r"residual_bias has dtype float64.*residual_bias.to\(float16\)"):
        ln.layer_norm(kw["x"], kw["weight"], residual=r16, residual_bias=c.detach().double())
    # width=: the norm, then zeros
    y = ln.layer_norm(kw["x"], kw["weight"], kw["bias"], 1e-6, width=8)
    assert torch.equal(y[..., 6:], torch.zeros(10, 2))
    assert torch.equal(y[..., :6], torch.nn.functional.layer_norm(kw["x"], (6,), kw["weight"], kw["bias"], eps=1e-6))
    with pytest.raises(ValueError, match="width"):
        ln.layer_norm(kw["x"], kw["weight"], width=5)
    with pytest.raises(ValueError, match="does not combine with residual"):
        ln.layer_norm(**kw, width=8)


@pytest.mark.skipif(not ln.triton_available(), reason="triton not installed")
def test_triton_interpreter():
    run_interpreted(__file__, "-k", "test_triton_interpreter_cases or test_triton_interpreter_add_cases")


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


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("shape,cut,bias,r_dtype,use", ADD_CASES)
def test_triton_cuda_add(shape, cut, bias, r_dtype, use, dtype, atol):
    # a residual of another dtype only with float32 x and weights: the reference (PyTorch's LayerNorm)
    # takes no float32 sum with half-precision weights
    _compare_add("cuda", dtype, shape, cut, bias, r_dtype if dtype == torch.float32 else dtype, use, atol)
    _compare_add("cuda", dtype, shape, cut, bias, r_dtype if dtype == torch.float32 else dtype, use, atol, rbias=True)
    _compare_add("cuda", dtype, shape, cut, bias, r_dtype if dtype == torch.float32 else dtype, use, atol, rscale=True)


@pytest.mark.cuda
def test_triton_cuda_add_autocast_and_compile():
    kw = ln.example_inputs(device="cuda", tokens=1000, dim=64, residual=1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, s = ln.layer_norm(**kw, impl="triton")
        y_ref, s_ref = ln.layer_norm(**kw, impl="reference")
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    torch.testing.assert_close(s, s_ref)
    torch.testing.assert_close(y, y_ref.to(torch.bfloat16), atol=2e-2, rtol=2e-2)
    f = torch.compile(lambda **k: ln.layer_norm(**k, impl="triton"), fullgraph=True)
    for a, b in zip(f(**kw), ln.layer_norm(**kw, impl="reference")):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_kernels_compile_for_hopper():
    """The kernels compile to PTX for sm_90 without a GPU: the plain form with padded rows (two column
    ranges and one), the residual form with the residual bias, drop path's factors or neither, and the
    residual form's backward."""
    from visionattn.ops import _layer_norm_triton as kernels

    plain = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "y_ptr": "*bf16", "rows": "i32", "stride_x": "i32",
             "eps": "fp32"}
    for d1, d2 in ((32, 16), (64, 0)):  # two column ranges (42 channels in 48), one
        assert ".entry" in ptx_for_hopper(kernels._layer_norm_fwd, plain,
                                          dict(D=42, D1=d1, D2=d2, OUT_W=48, BLOCK_M=64, HAS_BIAS=False))
    residual = {"x_ptr": "*bf16", "r_ptr": "*bf16", "rb_ptr": "*bf16", "rs_ptr": "*bf16", "w_ptr": "*bf16",
                "b_ptr": "*bf16", "y_ptr": "*bf16", "s_ptr": "*bf16", "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
                "rows": "i32", "stride_x": "i32", "stride_r": "i32", "rows_per_scale": "i32", "eps": "fp32"}
    for rbias, rscale in ((False, False), (True, False), (False, True)):
        constexprs = dict(D=64, DP=64, BLOCK_M=64, HAS_BIAS=True, HAS_RBIAS=rbias, HAS_RSCALE=rscale)
        assert ".entry" in ptx_for_hopper(kernels._add_layer_norm_fwd, residual, constexprs)
    backward = {"s_ptr": "*bf16", "w_ptr": "*bf16", "mean_ptr": "*fp32", "rstd_ptr": "*fp32", "dy_ptr": "*bf16",
                "ds_ptr": "*bf16", "dx_ptr": "*bf16", "rs_ptr": "*bf16", "dr_ptr": "*bf16", "dw_ptr": "*fp32",
                "db_ptr": "*fp32", "rows": "i32", "tiles_per_prog": "i32", "rows_per_scale": "i32"}
    for rscale in (False, True):  # the backward, with drop path's factors and without
        constexprs = dict(D=64, DP=64, BLOCK_M=64, HAS_DS=True, HAS_RSCALE=rscale)
        assert ".entry" in ptx_for_hopper(kernels._layer_norm_bwd, backward, constexprs)
