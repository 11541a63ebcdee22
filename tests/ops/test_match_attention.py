"""MatchAttention op: reference vs a per-query loop, gradients, and the Triton path vs the reference."""
import os

import pytest
import torch

from visionattn.ops import match_attention as ma
from visionattn.ops.dispatch import use_impl
from triton_interpreter import ptx_for_hopper, run_interpreted


def _inputs(B, H, W, h, d, dtype=torch.float32, device="cpu", seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    N = H * W
    q, k, v = (torch.randn(B, N, h * d, generator=g).to(device, dtype) for _ in range(3))
    # centres spread past the borders so clamping is exercised on every side
    c = torch.rand(B, N, h, 2, generator=g) * torch.tensor([W + 2 * spread, H + 2 * spread]) - spread
    return q, k, v, c.to(device)


def _loop_reference(q, k, v, c, H, W, r):
    """Literal per-query / per-head / per-sub-window formula from the paper."""
    B, N, C = q.shape
    h = c.shape[2]
    d = C // h
    out = torch.zeros(B, N, C, dtype=torch.float64)
    for b in range(B):
        for i in range(N):
            for hh in range(h):
                x = min(max(c[b, i, hh, 0].item(), r), W - 1 - r - 1e-3)
                y = min(max(c[b, i, hh, 1].item(), r), H - 1 - r - 1e-3)
                mx, my = int(x // 1), int(y // 1)
                fx, fy = x - mx, y - my
                sl = slice(hh * d, (hh + 1) * d)
                qi = q[b, i, sl].double()
                acc = torch.zeros(d, dtype=torch.float64)
                for (ox, oy), w in zip(((0, 0), (1, 0), (0, 1), (1, 1)),
                                       ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)):
                    js = [(my + oy + dy) * W + (mx + ox + dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
                    logit = torch.stack([-(qi - k[b, j, sl].double()).abs().sum() * d ** -0.5 for j in js])
                    alpha = logit.softmax(0)
                    acc += w * sum(a * v[b, j, sl].double() for a, j in zip(alpha, js))
                out[b, i, sl] = acc
    return out


@pytest.mark.parametrize("radius", [1, 2])
def test_reference_matches_per_query_formula(radius):
    H, W = 7, 8
    q, k, v, c = _inputs(1, H, W, 2, 3)
    out, attn = ma.match_attention(q, k, v, c, (H, W), radius, return_attn=True, impl="reference")
    expected = _loop_reference(q, k, v, c, H, W, radius)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    assert attn.shape == (1, H * W, 2, (2 * radius + 2) ** 2)
    torch.testing.assert_close(attn.sum(-1), torch.ones(1, H * W, 2))


def test_integer_centre_is_plain_window_softmax():
    H, W, r = 6, 6, 1
    q, k, v, _ = _inputs(1, H, W, 1, 4)
    c = torch.tensor([2.0, 3.0]).view(1, 1, 1, 2).expand(1, H * W, 1, 2)
    _, attn = ma.match_attention(q, k, v, c, (H, W), r, return_attn=True, impl="reference")
    # all mass in the top-left 3x3 of the 4x4 window
    grid = attn[0, 0, 0].view(4, 4)
    assert grid[3].abs().max() == 0 and grid[:, 3].abs().max() == 0


def test_gradcheck_float64():
    H, W, r = 4, 5, 1
    q, k, v, c = _inputs(1, H, W, 2, 2, dtype=torch.float64, spread=0.0)
    # keep centres off the clamp bounds and off integers, where the op has kinks
    c = (1.1 + 0.8 * c.double() / 5).requires_grad_()
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def f(q, k, v, c):
        return ma.match_attention(q, k, v, c, (H, W), r, return_attn=True, impl="reference")

    assert torch.autograd.gradcheck(f, (q, k, v, c), atol=1e-6, fast_mode=True)


def test_centre_gradient_is_nonzero_and_clamped():
    H, W, r = 6, 6, 1
    q, k, v, _ = _inputs(1, H, W, 1, 4)
    c = torch.tensor([[2.3, 2.6], [100.0, -50.0]]).view(1, 1, 2, 2).expand(1, H * W, 2, 2).contiguous()
    q2 = torch.cat([q, q], -1)
    c.requires_grad_()
    out = ma.match_attention(q2, torch.cat([k, k], -1), torch.cat([v, v], -1), c, (H, W), r, impl="reference")
    (g,) = torch.autograd.grad(out.square().sum(), c)
    assert g[0, :, 0].abs().sum() > 0  # inside: gradient through the bilinear weights
    assert g[0, :, 1].abs().sum() == 0  # clamped on both axes: no gradient


def test_bad_inputs_raise():
    q, k, v, c = _inputs(1, 3, 3, 1, 4)
    with pytest.raises(ValueError, match="smaller than"):
        ma.match_attention(q, k, v, c, (3, 3), 1)
    with pytest.raises(ValueError, match="size"):
        ma.match_attention(q, k, v, c, (2, 5), 0)
    with pytest.raises(ValueError, match="unknown impl"):
        ma.match_attention(q, k, v, c, (3, 3), 0, impl="cuda")


def test_example_inputs_contract():
    kwargs = ma.example_inputs(height=8, width=10, head_dim=4)
    out, attn = ma.match_attention(**kwargs, impl="reference")
    assert out.shape == kwargs["q"].shape and "reference" in ma.IMPLS and ma.IMPLS[0] == "triton"
    with use_impl("reference"):
        assert torch.equal(ma.match_attention(**kwargs)[0], out)


# (B, H, W, heads, head_dim, radius): radii 1-4, head dims not powers of two, maps barely larger
# than the window so most centres sit at the borders. The forward covers the window and the head
# dim with two power-of-two ranges each: 36 = 32 + 4 positions, head dim 5 = 4 + 1, 20 = 16 + 4;
# 100 = 64 + 36 positions and head dim 7 = 4 + 3 leave the second range partly masked.
GRID = [(2, 6, 7, 2, 4, 1), (1, 8, 9, 2, 5, 2), (1, 9, 10, 1, 8, 3), (1, 4, 12, 4, 2, 1), (1, 8, 9, 2, 20, 2),
        (1, 11, 12, 1, 7, 4)]
FUSED_GRID = [(2, 6, 7, 2, 4, 1), (4, 7, 8, 2, 3, 2)]


def _compare(impl_device, dtype, case, atol, fused=False):
    """Triton vs reference: outputs and the gradients of q, k, v and the centres.

    ``fused``: q/k/v are column slices of one (B, N, 3C) projection, the centres are shared by
    the heads (a stride-0 expand) and keys/values come from the other half of the batch
    (``kv_batch_shift = B // 2``), as in the model's cross attention.
    """
    B, H, W, h, d, r = case
    q, k, v, c = _inputs(B, H, W, h, d, dtype=dtype, device=impl_device, seed=sum(case))
    shift = 0
    if fused:
        qkv = torch.cat((q, k, v), -1)
        c = c[:, :, :1]
        shift = B // 2
    leaves = [t.detach().requires_grad_() for t in ((qkv, c) if fused else (q, k, v, c))]
    results = {}
    for impl in ("reference", "triton"):
        ins = [t.float().detach().requires_grad_() for t in leaves] if impl == "reference" else \
            [t.detach().requires_grad_() for t in leaves]
        if fused:
            args = (*ins[0].split(h * d, -1), ins[1].expand(B, H * W, h, 2))
        else:
            args = ins
        out, attn = ma.match_attention(*args, (H, W), r, return_attn=True, impl=impl, kv_batch_shift=shift)
        g = torch.Generator().manual_seed(1)
        go = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
        ga = torch.randn(attn.shape, generator=g).to(out.device, out.dtype)
        grads = torch.autograd.grad((out * go).float().sum() + (attn * ga).float().sum(), ins)
        results[impl] = [out, attn, *grads]
    names = ["out", "attn", "dqkv", "dcenter"] if fused else ["out", "attn", "dq", "dk", "dv", "dcenter"]
    errs = {}
    for name, ref, tri in zip(names, results["reference"], results["triton"]):
        err = (ref.float() - tri.float()).abs().max().item()
        errs[name] = err
        scale = max(1.0, ref.float().abs().max().item())
        assert err <= atol * scale, f"{name}: max error {err} (scale {scale}) for {case} {dtype}"
    return errs


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("case", GRID)
def test_triton_interpreter_grid(case):
    """The Triton kernels on CPU through the interpreter (forward and backward)."""
    _compare("cpu", torch.float32, case, atol=1e-5)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("case", FUSED_GRID)
def test_triton_interpreter_fused_layout(case):
    _compare("cpu", torch.float32, case, atol=1e-5, fused=True)


def _gated_into_buffer(impl, case, dtype, device):
    """The cross attention's inference call: gate from a fused (B, N, 4C) projection, [output, weights]
    written into a buffer two channels wider than they need (the spare channels must stay untouched)."""
    B, H, W, h, d, r = case
    q, k, v, c = _inputs(B, H, W, h, d, dtype=dtype, device=device, seed=sum(case))
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    qkvg = torch.cat((q, k, v, g), -1)
    C, width = h * d, h * d + h * (2 * r + 2) ** 2
    buf = torch.full((B, H * W, width + 2), 7.0, device=device, dtype=dtype)
    with torch.no_grad():
        out, attn = ma.match_attention(*qkvg.split(C, -1)[:3], c[:, :, :1].expand(B, H * W, h, 2), (H, W), r,
                                       return_attn=True, impl=impl, kv_batch_shift=B // 2,
                                       gate=qkvg[..., 3 * C:], out=buf)
    assert out.data_ptr() == buf.data_ptr() and attn.shape == (B, H * W, h, (2 * r + 2) ** 2)
    assert (buf[..., width:] == 7).all()
    return buf[..., :width]


def _compare_gated(device, dtype, case, atol):
    """Triton's gated forward written into a buffer against the reference's."""
    ref = _gated_into_buffer("reference", case, torch.float32, device)
    tri = _gated_into_buffer("triton", case, dtype, device)
    assert (ref - tri.float()).abs().max() <= atol * max(1.0, ref.abs().max().item())


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("case", [GRID[0], GRID[4], GRID[5]])
def test_triton_interpreter_gated_into_buffer(case):
    _compare_gated("cpu", torch.float32, case, atol=1e-5)


def test_gate_and_out_follow_their_formula():
    B, H, W, h, d, r = 2, 6, 7, 2, 4, 1
    q, k, v, c = _inputs(B, H, W, h, d)
    g = torch.randn(q.shape)
    o, attn = ma.match_attention(q, k, v, c, (H, W), r, return_attn=True, impl="reference", kv_batch_shift=1)
    gated = ma.match_attention(q, k, v, c, (H, W), r, impl="reference", kv_batch_shift=1, gate=g)
    torch.testing.assert_close(gated, torch.nn.functional.silu(g) * o)
    buf = torch.zeros(B, H * W, h * d + h * 16)
    with torch.no_grad():
        ma.match_attention(q, k, v, c, (H, W), r, impl="reference", kv_batch_shift=1, gate=g, out=buf)
    torch.testing.assert_close(buf, torch.cat((gated, attn.flatten(2)), -1))


def test_gate_and_out_reject_bad_buffers():
    q, k, v, c = _inputs(1, 4, 4, 1, 4)
    call = dict(size=(4, 4), radius=1, impl="reference")
    with pytest.raises(ValueError, match="gate must have q's shape"):
        ma.match_attention(q, k, v, c, gate=q[..., :2], **call)
    with pytest.raises(ValueError, match=r"out must be a contiguous \(1, 16, >= 20\)"):
        ma.match_attention(q, k, v, c, out=torch.zeros(1, 16, 19), **call)
    with pytest.raises(ValueError, match="contiguous"):
        ma.match_attention(q, k, v, c, out=torch.zeros(1, 16, 40)[..., ::2], **call)
    with pytest.raises(ValueError, match="torch.no_grad"):
        ma.match_attention(q.requires_grad_(), k, v, c, out=torch.zeros(1, 16, 20), **call)


@pytest.mark.parametrize("radius,head_dim", [(2, 80), (2, 128), (1, 32), (4, 7)])
def test_forward_compiles_for_hopper(radius, head_dim):
    """The forward kernel compiles to PTX for sm_90 without a GPU with the settings it launches with: two
    window ranges and two head-dim ranges (MatchStereo-B's 1/16 level), two window ranges and one head-dim
    range (B's 1/32), one of each (B's 1/4 level, two warps), masked second ranges (untimed settings)."""
    from visionattn.ops import _match_attention_triton as kernels

    j1, j2, d1, d2, block_n, warps = kernels._fwd_cfg(radius, head_dim)
    ptrs = dict.fromkeys(["q_ptr", "k_ptr", "v_ptr"], "*fp16")
    ints = dict.fromkeys(["H", "W", "N", "NB", "kv_shift", "stride_qb", "stride_qn", "stride_kb", "stride_kn",
                          "stride_cb", "stride_cn", "stride_ch"], "i32")
    out_strides = dict.fromkeys(["stride_gb", "stride_gn", "stride_o", "stride_a"], "i32")
    signature = {**ptrs, "c_ptr": "*fp32", "g_ptr": "*fp16", "o_ptr": "*fp16", "a_ptr": "*fp16", **ints,
                 "hi_x": "fp32", "hi_y": "fp32", "scale": "fp32", **out_strides}
    for gate in (False, True):  # plain, and gated (the cross attention's inference path)
        constexprs = dict(C=4 * head_dim, NH=4, D=head_dim, D1=d1, D2=d2, R=radius, J1=j1, J2=j2,
                          BLOCK_N=block_n, GATE=gate)
        assert ".entry" in ptx_for_hopper(kernels._fwd_kernel, signature, constexprs, num_warps=warps)


def test_backward_compiles_for_hopper():
    """The backward (one padded tile, helpers shared with the forward) compiles to sm_90 PTX without a GPU."""
    from visionattn.ops import _match_attention_triton as kernels

    MP, DP, block_n, warps = kernels._bwd_cfg(2, 80)
    ptrs = dict.fromkeys(["q_ptr", "k_ptr", "v_ptr", "go_ptr", "ga_ptr", "dq_ptr"], "*fp16")
    ints = dict.fromkeys(["H", "W", "N", "NB", "kv_shift", "stride_qb", "stride_qn", "stride_kb", "stride_kn",
                          "stride_cb", "stride_cn", "stride_ch"], "i32")
    signature = {**ptrs, "c_ptr": "*fp32", "dk_ptr": "*fp32", "dv_ptr": "*fp32", "dc_ptr": "*fp32", **ints,
                 "hi_x": "fp32", "hi_y": "fp32", "scale": "fp32"}
    constexprs = dict(C=320, NH=4, D=80, DP=DP, R=2, MP=MP, BLOCK_N=block_n)
    assert ".entry" in ptx_for_hopper(kernels._bwd_kernel, signature, constexprs, num_warps=warps)


def _compare_steep(device, dtype, case, atol):
    """Forward on logits hundreds apart inside a window (queries and keys scaled by 100): many sub-windows'
    largest logits lie far below their window's, where the kernel's shared softmax shift would underflow
    and its tiles must take the exact form; outputs and weights against the reference."""
    B, H, W, h, d, r = case
    q, k, v, c = _inputs(B, H, W, h, d, device=device, seed=sum(case))
    q, k = q * 100, k * 100
    with torch.no_grad():
        ref = ma.match_attention(q, k, v, c, (H, W), r, return_attn=True, impl="reference")
        tri = ma.match_attention(q.to(dtype), k.to(dtype), v.to(dtype), c, (H, W), r, return_attn=True,
                                 impl="triton")
    for name, a, b in zip(("out", "attn"), ref, tri):
        assert torch.isfinite(b).all(), name
        err = (a - b.float()).abs().max().item()
        assert err <= atol * max(1.0, a.abs().max().item()), f"{name}: max error {err} for {case} {dtype}"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("case", [GRID[0], GRID[1], GRID[5]])
def test_triton_interpreter_steep_logits(case):
    _compare_steep("cpu", torch.float32, case, atol=1e-4)


@pytest.mark.skipif(not ma.triton_available(), reason="triton not installed")
def test_triton_interpreter():
    # Triton reads TRITON_INTERPRET when the kernels are defined, hence a fresh interpreter.
    run_interpreted(__file__, "-k", "test_triton_interpreter_grid or test_triton_interpreter_fused_layout or "
                                    "test_triton_interpreter_gated_into_buffer or test_triton_interpreter_steep_logits")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("case", GRID)
def test_triton_cuda_matches_reference(case, dtype, atol):
    _compare("cuda", dtype, case, atol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("case", FUSED_GRID)
def test_triton_cuda_fused_layout(case, dtype, atol):
    _compare("cuda", dtype, case, atol, fused=True)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
@pytest.mark.parametrize("case", GRID)
def test_triton_cuda_gated_into_buffer(case, dtype, atol):
    _compare_gated("cuda", dtype, case, atol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
@pytest.mark.parametrize("case", GRID)
def test_triton_cuda_steep_logits(case, dtype, atol):
    _compare_steep("cuda", dtype, case, atol)


@pytest.mark.cuda
def test_triton_cuda_compiles():
    kwargs = ma.example_inputs(device="cuda", height=16, width=20)
    f = torch.compile(lambda **kw: ma.match_attention(**kw, impl="triton"), fullgraph=True)
    out, attn = f(**kwargs)
    ref, ref_attn = ma.match_attention(**kwargs, impl="reference")
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_low_precision_centres_stay_inside_the_map():
    """bf16 rounds 309.999 to 310: the window must still fit (centres are used in float32)."""
    H, W, r = 4, 312, 1
    q, k, v, _ = _inputs(1, H, W, 1, 4, dtype=torch.bfloat16)
    c = torch.full((1, H * W, 1, 2), 400.0, dtype=torch.bfloat16)
    out, attn = ma.match_attention(q, k, v, c, (H, W), r, return_attn=True, impl="reference")
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    # all the weight sits on the last three columns of the map (centre x = W - 2 - 1e-3)
    assert attn.float().view(-1, 4, 4)[:, :, 0].abs().max() < 0.02
