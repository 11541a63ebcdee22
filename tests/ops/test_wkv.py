"""Bi-WKV / Re-WKV: reference and Triton kernel against the naive O(T^2) oracle."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from visionattn.ops import _wkv_triton, wkv
from visionattn.ops.dispatch import use_impl


def oracle(w, u, k, v, rows=None):
    """Naive O(T^2) Bi-WKV in float64: y_t = softmax_i(E_ti) @ v (rows: subset of t to evaluate)."""
    w, u, k, v = (x.double() for x in (w, u, k, v))
    T = k.shape[1]
    t = torch.arange(T, dtype=torch.float64) if rows is None else torch.as_tensor(rows, dtype=torch.float64)
    t = t.to(k.device)
    i = torch.arange(T, dtype=torch.float64, device=k.device)
    dist = (t[:, None] - i[None, :]).abs() - 1  # (R, T)
    e = -dist[None, :, :, None] * w + k[:, None, :, :]  # (B, R, T, C)
    diag = t[:, None] == i[None, :]
    e = torch.where(diag[None, :, :, None], (u + k)[:, t.long()][:, :, None, :].expand_as(e), e)
    return (torch.softmax(e, dim=2) * v[:, None]).sum(2)


def make(T, C, B=2, decay_scale=1.0, dtype=torch.float64, sign=None, seed=0, device="cpu", scaled=True):
    g = torch.Generator().manual_seed(seed)
    decay = torch.randn(C, generator=g) * decay_scale
    if sign is not None:
        decay = sign * decay.abs()
    first = torch.randn(C, generator=g)
    k = torch.randn(B, T, C, generator=g) * 2
    v = torch.randn(B, T, C, generator=g)
    div = T if scaled else 1
    return [x.to(device=device, dtype=dtype) for x in (decay / div, first / div, k, v)]


@pytest.mark.parametrize("T", [1, 2, 5, 16, 33])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_reference_matches_oracle(T, sign):
    w, u, k, v = make(T, 6, sign=sign, decay_scale=3.0)
    torch.testing.assert_close(wkv.bi_wkv(w, u, k, v, impl="reference"), oracle(w, u, k, v), rtol=1e-10, atol=1e-10)


def test_reference_unscaled_large_w_and_k():
    # large |w| (strong decay/growth) and large k: the log-domain evaluation must not overflow
    w, u, k, v = make(40, 4, decay_scale=4.0, scaled=False)
    k = k * 20
    torch.testing.assert_close(wkv.bi_wkv(w, u, k, v, impl="reference"), oracle(w, u, k, v), rtol=1e-9, atol=1e-9)


def test_reference_float32_long():
    w, u, k, v = make(4096, 8, B=1, dtype=torch.float32, decay_scale=5.0)
    rows = [0, 1, 2047, 4094, 4095]
    out = wkv.bi_wkv(w, u, k, v, impl="reference")[:, rows].double()
    ref = oracle(w, u, k, v, rows=rows)
    assert (out - ref).abs().max() / ref.abs().max() < 1e-5


def test_reference_gradcheck():
    w, u, k, v = make(7, 3, B=1, decay_scale=3.0)
    args = [x.clone().requires_grad_() for x in (w * 7, u * 7, k, v)]
    assert torch.autograd.gradcheck(lambda *a: wkv.bi_wkv_reference(*a), args)


def test_re_wkv_scan_orders():
    B, H, W, C = 1, 3, 4, 5
    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(B, H * W, C, generator=g, dtype=torch.float64), torch.randn(B, H * W, C, generator=g, dtype=torch.float64)
    decay, first = torch.randn(2, C, generator=g, dtype=torch.float64), torch.randn(2, C, generator=g, dtype=torch.float64)
    out = wkv.re_wkv(k, v, decay, first, (H, W), impl="reference")
    T = H * W
    v1 = oracle(decay[0] / T, first[0] / T, k, v)
    # vertical scan: tokens in column-major order, same K
    kc = k.view(B, H, W, C).transpose(1, 2).reshape(B, T, C)
    vc = v1.view(B, H, W, C).transpose(1, 2).reshape(B, T, C)
    v2 = oracle(decay[1] / T, first[1] / T, kc, vc).view(B, W, H, C).transpose(1, 2).reshape(B, T, C)
    torch.testing.assert_close(out, v2, rtol=1e-10, atol=1e-10)


def test_bad_shapes_and_impl():
    w, u, k, v = make(4, 3)
    with pytest.raises(ValueError, match="bi_wkv expects"):
        wkv.bi_wkv(w[:2], u, k, v)
    with pytest.raises(ValueError, match="unknown impl"):
        wkv.bi_wkv(w, u, k, v, impl="cuda_legacy")


def test_op_contract():
    assert wkv.IMPLS[-1] == "reference" and "triton" in wkv.IMPLS
    ex = wkv.example_inputs(tokens=64, channels=8)
    assert wkv.bi_wkv(**ex).shape == (1, 64, 8)
    with use_impl("reference"):
        assert wkv.bi_wkv(**ex, impl="auto").shape == (1, 64, 8)


def _triton_quick_check():
    """One case over 3 parallel segments of one 8-token chunk, float64, forward and backward
    (the default CPU test's share), and the single-segment path's forward."""
    w, u, k, v = make(19, 3, B=1, sign=-1.0, decay_scale=4.0)
    torch.testing.assert_close(wkv.bi_wkv(w, u, k, v, impl="triton"), oracle(w, u, k, v), rtol=1e-9, atol=1e-9)
    _wkv_triton._FORCE_SEG_LEN = 8
    args = [x.clone().requires_grad_() for x in (w, u, k, v)]
    y = wkv.bi_wkv(*args, impl="triton")
    torch.testing.assert_close(y, oracle(w, u, k, v), rtol=1e-9, atol=1e-9)
    gy = torch.randn_like(y)
    args_r = [x.detach().requires_grad_() for x in (w, u, k, v)]
    for a, b in zip(torch.autograd.grad(y, args, gy), torch.autograd.grad(wkv.bi_wkv_reference(*args_r), args_r, gy)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def _triton_quick_check_float32():
    """float32 (the fused combine kernel's path) against the float64 oracle, over segment carries."""
    _wkv_triton._FORCE_SEG_LEN = 8
    for T, C, sign in [(19, 3, -1.0), (5, 17, 1.0)]:
        w, u, k, v = make(T, C, B=2, sign=sign, decay_scale=4.0)
        y = wkv.bi_wkv(w.float(), u.float(), k.float(), v.float(), impl="triton")
        ref = oracle(w, u, k, v)
        assert y.dtype == torch.float32
        assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5, (T, C)


def _triton_span_check():
    """Both ways the scan sums a chunk, float32 and float64 against the oracle (values) and the
    reference (gradients). k within +-19 and a weak decay keep every chunk inside SPAN (plain prefix
    sums after one shift, at the edge of that range); a decay of 12-16 per token spreads an 8-token
    chunk's exponents over ~100 and forces the log-sum-exp scan (plain float32 sums would lose the
    early positions' terms to underflow there)."""
    _wkv_triton._FORCE_SEG_LEN = 16
    for wide in (False, True):
        for dtype, tol in [(torch.float32, 1e-5), (torch.float64, 1e-9)]:
            w, u, k, v = make(37, 6, B=2, decay_scale=2.0)
            if wide:
                w = torch.tensor([12.0, -13.0, 14.0, -15.0, 16.0, 12.5], dtype=w.dtype)
            else:
                k = (torch.rand(k.shape, generator=torch.Generator().manual_seed(1), dtype=k.dtype) * 2 - 1) * 19
            args = [x.to(dtype).requires_grad_() for x in (w, u, k, v)]
            y = wkv.bi_wkv(*args, impl="triton")
            ref = oracle(w, u, k, v)
            err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
            assert err < tol, (wide, dtype, err)
            gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
            args_r = [x.detach().double().requires_grad_() for x in args]
            for name, a, b in zip("wukv", torch.autograd.grad(y, args, gy.to(dtype)),
                                  torch.autograd.grad(wkv.bi_wkv_reference(*args_r), args_r, gy)):
                gerr = ((a.double() - b).abs().max() / b.abs().max()).item()
                # at 12-16 per token the float32 w gradient is a cancelling sum (8e-3 with either way)
                assert gerr < (1e-2 if wide and dtype == torch.float32 and name == "w" else 10 * tol), \
                    (wide, dtype, name, gerr)


def _triton_column_check(device="cpu", dtypes=(torch.float64,)):
    """Column-order scans (the grid addressed in place) == the reference on transposed copies:
    values and gradients, over segment carries (CPU: 8-token chunks, 16-token segments), and
    Re-WKV (one horizontal + one vertical recurrence) through both paths."""
    if device == "cpu":
        _wkv_triton._FORCE_SEG_LEN = 16
    for (H, W), dtype in [(hw, dt) for hw in [(5, 7), (8, 3), (1, 6), (4, 1)] for dt in dtypes]:
        tol = 1e-9 if dtype == torch.float64 else 1e-5
        w, u, k, v = make(H * W, 5, B=2, sign=-1.0 if H % 2 else 1.0, decay_scale=4.0, device=device)
        args = [x.to(dtype).requires_grad_() for x in (w, u, k, v)]
        y = wkv.bi_wkv(*args, impl="triton", columns=(H, W))
        args_r = [x.detach().double().requires_grad_() for x in (w, u, k, v)]
        y_r = wkv.bi_wkv(*args_r, impl="reference", columns=(H, W))
        torch.testing.assert_close(y.double(), y_r, rtol=tol, atol=tol)
        gy = torch.randn_like(y_r)
        grads = torch.autograd.grad(y, args, gy.to(dtype))
        for name, a, b in zip("wukv", grads, torch.autograd.grad(y_r, args_r, gy)):
            torch.testing.assert_close(a.double(), b, rtol=10 * tol, atol=10 * tol,
                                       msg=lambda m: f"{name} {(H, W)}: {m}")
        # re_wkv: horizontal then vertical recurrence
        decay, first = (torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(H)).to(device)
                        for _ in range(2))
        out = wkv.re_wkv(k.to(dtype), v.to(dtype), decay.to(dtype), first.to(dtype), (H, W), impl="triton")
        ref = wkv.re_wkv(k, v, decay, first, (H, W), impl="reference")
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def _triton_sequential_check():
    """The one-token-per-step scan kernel (a TILES BLOCK_T of 1): the quick, float32 and column checks."""
    _wkv_triton.TILES = {"fwd": [(None, (4, 1, 1, 1024))], "bwd": [(None, (2, 1, 1, 1024))]}
    _triton_quick_check()
    _triton_quick_check_float32()
    _triton_column_check()


def _triton_checks(device):
    """Triton kernel vs oracle (values) and vs the reference (gradients).

    On CPU it runs under the interpreter with 8-token chunks, so T > 8 crosses chunk carries;
    16-token segments (2 chunks each) run in parallel and exchange carries.
    """
    if device == "cpu":
        _wkv_triton._FORCE_SEG_LEN = 16
    cases = [(1, 3, 1.0), (19, 5, -1.0), (33, 3, 1.0)] if device == "cpu" else \
        [(1, 3, 1.0), (16, 5, 1.0), (33, 20, -1.0), (300, 17, 1.0), (1000, 3, -1.0)]
    for T, C, sign in cases:
        for dtype, tol in [(torch.float64, 1e-9), (torch.float32, 1e-4)]:
            w, u, k, v = make(T, C, B=2, sign=sign, decay_scale=4.0, dtype=dtype, device=device)
            args = [x.clone().requires_grad_() for x in (w, u, k, v)]
            y = wkv.bi_wkv(*args, impl="triton")
            ref = oracle(w, u, k, v)
            err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
            assert err < tol, (T, C, dtype, err)
            gy = torch.randn_like(y)
            grads = torch.autograd.grad(y, args, gy)
            args_r = [x.detach().double().requires_grad_() for x in (w, u, k, v)]
            grads_r = torch.autograd.grad(wkv.bi_wkv_reference(*args_r), args_r, gy.double())
            for name, a, b in zip("wukv", grads, grads_r):
                gerr = ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                assert gerr < tol * 10, (T, C, dtype, name, gerr)
    # strong per-token decay (unscaled w) and large k: every position keeps its own scale
    w, u, k, v = make(30, 2, B=1, decay_scale=3.0, scaled=False, device=device)
    ref = oracle(w, u, k * 10, v)
    y = wkv.bi_wkv(w, u, k * 10, v, impl="triton")
    assert ((y - ref).abs().max() / ref.abs().max()).item() < 1e-9
    # gradcheck on a tiny problem (crosses one chunk boundary on CPU)
    w, u, k, v = make(10, 2, B=1, decay_scale=3.0, device=device)
    args = [x.clone().requires_grad_() for x in (w * 10, u * 10, k, v)]
    assert torch.autograd.gradcheck(lambda *a: wkv.bi_wkv(*a, impl="triton"), args)


def _run_interpreted(fn):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = f"import runpy; runpy.run_path({str(Path(__file__))!r})[{fn!r}]('cpu')" if fn == "_triton_checks" else \
        f"import runpy; runpy.run_path({str(Path(__file__))!r})[{fn!r}]()"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def test_triton_kernel_in_interpreter_quick():
    """The Triton kernel (forward + backward) on CPU via TRITON_INTERPRET=1 (needs a fresh process)."""
    _run_interpreted("_triton_quick_check")


def test_triton_kernel_in_interpreter_float32():
    _run_interpreted("_triton_quick_check_float32")


def test_triton_chunk_sums_both_ways_in_interpreter():
    """Chunks within the exponent span take plain prefix sums, wider ones the log-sum-exp scan."""
    _run_interpreted("_triton_span_check")


def test_triton_sequential_scan_in_interpreter():
    _run_interpreted("_triton_sequential_check")


def test_triton_column_order_in_interpreter():
    """Vertical scans address the (h w) grid in place: same values and gradients as transposed copies."""
    _run_interpreted("_triton_column_check")


@pytest.mark.slow
def test_triton_kernel_in_interpreter_full():
    _run_interpreted("_triton_checks")


@pytest.mark.cuda
def test_triton_small_cuda():
    _triton_checks("cuda")


@pytest.mark.cuda
def test_triton_column_order_cuda():
    """The CUDA column-order path against the reference on transposed copies, float64/32 and bfloat16
    (bfloat16 k, v are read as such by the kernels, computed in float32)."""
    _triton_column_check("cuda", dtypes=(torch.float64, torch.float32))
    w, u, k, v = make(64 * 48, 96, B=1, decay_scale=3.0, dtype=torch.float32, device="cuda")
    for dtype in (torch.float32, torch.bfloat16):
        kk, vv = k.to(dtype), v.to(dtype)
        y = wkv.bi_wkv(w, u, kk, vv, impl="triton", columns=(64, 48))
        ref = wkv.bi_wkv(w.double(), u.double(), kk.double(), vv.double(), impl="reference", columns=(64, 48))
        err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
        assert y.dtype == dtype and err < (1e-5 if dtype == torch.float32 else 1e-2), (dtype, err)
        hw = (64, 48)
        decay, first = torch.randn(2, 96, device="cuda"), torch.randn(2, 96, device="cuda")
        out = wkv.re_wkv(kk, vv, decay, first, hw, impl="triton")
        ref = wkv.re_wkv(kk.double(), vv.double(), decay.double(), first.double(), hw, impl="reference")
        err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
        assert err < (1e-5 if dtype == torch.float32 else 2e-2), ("re_wkv", dtype, err)


@pytest.mark.cuda
@pytest.mark.parametrize("T", [16, 33, 64, 1024, 65536])
@pytest.mark.parametrize("C", [48, 96, 384])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_triton_grid_cuda(T, C, dtype, sign):
    w, u, k, v = make(T, C, B=1, sign=sign, decay_scale=3.0, dtype=dtype, device="cuda")
    y = wkv.bi_wkv(w, u, k, v, impl="triton")
    rows = None if T <= 1024 else torch.linspace(0, T - 1, 64).long().tolist()
    if T <= 1024:
        ref = torch.cat([oracle(w[c:c + 16], u[c:c + 16], k[..., c:c + 16], v[..., c:c + 16]) for c in range(0, C, 16)], -1)
    else:
        ref = torch.cat([oracle(w[c:c + 16], u[c:c + 16], k[..., c:c + 16], v[..., c:c + 16], rows=rows) for c in range(0, C, 16)], -1)
        y = y[:, rows]
    err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    print(f"bi_wkv triton T={T} C={C} {dtype} sign={sign}: max rel err {err:.2e}")
    assert err < (1e-9 if dtype == torch.float64 else 1e-4)


def test_scan_kernels_compile_for_hopper():
    """Both scan kernels compile to PTX for sm_90 without a GPU, in the forward's passes (segment
    summaries; carried sums) and the backward's (distance sums)."""
    from triton_interpreter import ptx_for_hopper

    pointers = ["x_ptr", "v1_ptr", "v2_ptr", "w_ptr", "o1_ptr", "o2_ptr", "od1_ptr", "od2_ptr", "rho_ptr", "state_ptr"]
    signature = {p: ("*bf16" if p in ("x_ptr", "v1_ptr", "v2_ptr") else "*fp32") for p in pointers}
    signature.update({a: "i32" for a in ("T", "C", "SEG_LEN", "NSEG", "H", "W")})
    passes = [dict(SUMMARY=True, HAS_CARRY=False, DIST=False),
              dict(SUMMARY=False, HAS_CARRY=True, DIST=False),
              dict(SUMMARY=False, HAS_CARRY=True, DIST=True)]
    for kernel, blocks in ((_wkv_triton._causal_scan_kernel, dict(BLOCK_T=128, BLOCK_C=32)),
                           (_wkv_triton._sequential_scan_kernel, dict(BLOCK_C=32))):
        for flags in passes:
            constexprs = dict(COLS=True, V2_ONES=not flags["DIST"], **flags, **blocks)
            assert ".entry" in ptx_for_hopper(kernel, signature, constexprs), (kernel.__name__, flags)
