"""group_norm_act: act(GroupNorm(x + input_bias)) — the Triton path (CPU interpreter, CUDA) against
F.group_norm + F.silu, NCHW and channels_last, and RestoreFormer's blocks on the fused path."""
import os
import time

import pytest
import torch
import torch.nn.functional as F

from visionattn.ops import group_norm_act as gna
from visionattn.ops._triton import interpreting
from visionattn.ops.dispatch import use_impl
from triton_interpreter import ptx_for_hopper, run_interpreted

# (shape, groups): odd sizes, channels per group not a power of two (96 / 32 = 3), one pixel, C == G,
# groups larger than one tile (several tiles and splits per group under the interpreter's small tiles)
CASES = [((2, 12, 5, 7), 4), ((1, 96, 3, 5), 32), ((3, 6, 1, 1), 3), ((1, 8, 4, 4), 8), ((1, 64, 19, 13), 32)]


def _inputs(shape, groups, dtype=torch.float32, device="cpu", channels_last=False, affine=True, input_bias=True,
            offset=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    x = (torch.randn(*shape, generator=g) * 2 + offset).to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    kw = dict(x=x, num_groups=groups, eps=1e-6)
    if affine:
        kw["weight"] = (1 + 0.3 * torch.randn(C, generator=g)).to(device, dtype)
        kw["bias"] = (0.2 * torch.randn(C, generator=g)).to(device, dtype)
    if input_bias:
        kw["input_bias"] = torch.randn(C, generator=g).to(device, dtype)
    return kw


def _float64(kw):
    return {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def test_reference_is_the_formula():
    kw = _inputs((2, 12, 5, 7), 4)
    z = kw["x"] + kw["input_bias"].view(1, -1, 1, 1)
    zg = z.view(2, 4, -1)
    normed = ((zg - zg.mean(-1, keepdim=True)) / torch.sqrt(zg.var(-1, unbiased=False, keepdim=True) + 1e-6)).view_as(z)
    y = normed * kw["weight"].view(1, -1, 1, 1) + kw["bias"].view(1, -1, 1, 1)
    torch.testing.assert_close(gna.group_norm_act(**kw, act="silu", impl="reference"), y * torch.sigmoid(y))
    torch.testing.assert_close(gna.group_norm_act(**kw, impl="reference"), y)
    torch.testing.assert_close(gna.group_norm_act(**kw, act="gelu", impl="reference"), torch.nn.functional.gelu(y))
    assert gna.IMPLS == ("triton", "reference")
    assert gna.resolve_impl(kw["x"]) == ("triton" if interpreting() else "reference")


def test_bad_inputs_name_the_value():
    x = torch.randn(2, 12, 3, 3)
    with pytest.raises(ValueError, match="num_groups=5"):
        gna.group_norm_act(x, 5)
    with pytest.raises(ValueError, match=r"weight must have shape \(12,\)"):
        gna.group_norm_act(x, 4, torch.ones(6))
    with pytest.raises(ValueError, match=r"input_bias must have shape"):
        gna.group_norm_act(x, 4, input_bias=torch.ones(3))
    with pytest.raises(ValueError, match="act='relu'"):
        gna.group_norm_act(x, 4, act="relu")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        gna.group_norm_act(torch.randn(2, 12, 9), 4)
    if not interpreting():  # CPU tensors: the Triton path needs a GPU (or the interpreter)
        with pytest.raises(ValueError, match="does not support"):
            gna.group_norm_act(x, 4, impl="triton")


def _check_case(device, dtype, shape, groups, channels_last, act, affine, input_bias, grads=False):
    kw = _inputs(shape, groups, dtype, device, channels_last, affine, input_bias)
    out = gna.group_norm_act(**kw, act=act, impl="triton")
    assert out.dtype == dtype and out.shape == kw["x"].shape
    fmt = torch.contiguous_format if kw["x"].is_contiguous() else torch.channels_last  # the input's layout
    assert out.is_contiguous(memory_format=fmt), (shape, channels_last)
    exact = gna.group_norm_act(**_float64(kw), act=act, impl="reference")
    # fp32: statistics and math in fp32 (~1e-6); half types: one rounding of the output (2^-8 relative)
    tol = 2e-5 if dtype == torch.float32 else 2 ** -7
    err = ((out.double() - exact).abs() / (1 + exact.abs())).max().item()
    assert err <= tol, (shape, groups, dtype, channels_last, act, affine, input_bias, err)
    if grads:  # the backward recomputes the reference's gradients
        got, ref = [], []
        for impl, sink in (("triton", got), ("reference", ref)):
            leaves = {k: (v.detach().clone().requires_grad_() if isinstance(v, torch.Tensor) else v)
                      for k, v in kw.items()}
            y = gna.group_norm_act(**leaves, act=act, impl=impl)
            (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y).to(device)).sum().backward()
            sink.extend(v.grad for v in leaves.values() if isinstance(v, torch.Tensor))
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _interpreter_checks():
    for i, (shape, groups) in enumerate(CASES):
        for channels_last in (False, True):
            # rotate the options over the cases to keep the interpreter run short
            act = ("silu", None, "gelu")[i % 3]
            _check_case("cpu", torch.float32, shape, groups, channels_last, act, affine=i != 3,
                        input_bias=i % 3 != 2, grads=i in (0, 1))
    _check_case("cpu", torch.bfloat16, (2, 64, 5, 6), 32, True, "silu", True, True)
    _check_case("cpu", torch.float16, (2, 12, 5, 7), 4, False, None, True, False)
    # one group per channel, no affine, GELU: InstanceNorm2d + GELU (MatchStereo's stem)
    _check_case("cpu", torch.float32, (2, 16, 9, 11), 16, False, "gelu", affine=False, input_bias=True, grads=True)
    _matchstereo_stem_check()


def _matchstereo_stem_check():
    """MatchStereo-T's stem through the op (conv biases as input_bias) equals its modules; with autograd
    the modules run."""
    from unittest import mock

    import visionattn
    from visionattn.models.stereo.matchstereo import stem_forward

    torch.manual_seed(0)
    stem = visionattn.create_model("matchstereo_tiny").encoder.downsample_layers[0].eval()
    x = torch.randn(2, 3, 20, 28) * 2
    with mock.patch.object(gna._group_norm_act_triton, "group_norm_act_launch",
                           side_effect=gna._group_norm_act_triton.group_norm_act_launch) as spy:
        with torch.no_grad():
            out, ref = stem_forward(stem, x), stem(x)
        assert spy.call_count == 2
        stem_forward(stem, x)  # parameters require gradients: the modules
        assert spy.call_count == 2
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    # a large mean over the spread (offset 300 x std): Welford keeps the variance where E[x^2] - E[x]^2 would not
    kw = _inputs((1, 8, 32, 33), 2, offset=600.0)
    exact = gna.group_norm_act(**_float64(kw), impl="reference")
    assert (gna.group_norm_act(**kw, impl="triton").double() - exact).abs().max() < 1e-3
    # the custom op: schema, fake kernel, autograd registration
    kw = _inputs((2, 12, 3, 5), 4, channels_last=True)
    torch.library.opcheck(torch.ops.visionattn.group_norm_act.default,
                          (kw["x"], 4, kw["weight"], kw["bias"], 1e-6, "silu", kw["input_bias"]),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    # traced as one node
    fn = torch.compile(lambda t: gna.group_norm_act(t, 4, act="silu"), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(fn(kw["x"]), gna.group_norm_act(kw["x"], 4, act="silu", impl="reference"))
    _restoreformer_blocks_checks("cpu")


def _restoreformer_blocks_checks(device, size=(5, 6), dtype=torch.float32, atol=2e-5):
    """A ResnetBlock with a 1x1 shortcut and an MHCA block: the fused path (conv biases folded into
    the GroupNorm kernel and the residual pass) equals the official order of operations."""
    from visionattn.models.restoration.restoreformer import MultiHeadAttnBlock, ResnetBlock

    torch.manual_seed(0)
    block, attn = ResnetBlock(32, 64), MultiHeadAttnBlock(64, 4, cross=True)
    with torch.no_grad():
        for p in list(block.parameters()) + list(attn.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    block, attn = block.to(device, dtype), attn.to(device, dtype)
    x = torch.randn(2, 32, *size, device=device, dtype=dtype)
    y = torch.randn(2, 64, *size, device=device, dtype=dtype)
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        b, a = block.to(memory_format=fmt), attn.to(memory_format=fmt)
        xx, yy = x.contiguous(memory_format=fmt), y.contiguous(memory_format=fmt)
        with torch.no_grad():
            assert gna.resolve_impl(xx) == "triton"
            fused = a(b(xx), yy)
            with use_impl("reference"):
                ref = a(b(xx), yy)
        scale = max(1.0, ref.float().abs().max().item())
        assert (fused.float() - ref.float()).abs().max().item() <= atol * scale, channels_last


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_in_interpreter")
def test_triton_interpreter_cases():
    _interpreter_checks()


def test_triton_in_interpreter():
    """Kernels, custom-op contract and RestoreFormer's blocks on CPU via TRITON_INTERPRET=1 (fresh process)."""
    pytest.importorskip("triton")
    run_interpreted(__file__, "-k", "test_triton_interpreter_cases", expect="1 passed", timeout=900)


# --------------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_matches_reference(dtype, channels_last):
    """RestoreFormer++'s largest map (512x512, 128 channels, 4 per group: a million elements per
    group), its 64-channel one, batch 8 at 128x128, and odd sizes, against float64."""
    shapes = [((1, 128, 512, 512), 32), ((1, 64, 512, 512), 32), ((8, 256, 128, 128), 32), ((2, 512, 16, 16), 32),
              ((3, 96, 37, 53), 32), ((2, 12, 1, 1), 4), ((1, 40, 257, 129), 8), ((5, 48, 7, 300), 16)]
    for shape, groups in shapes:
        for act, affine, input_bias in (("silu", True, True), (None, True, False), ("silu", False, False),
                                        ("gelu", False, True)):
            _check_case("cuda", dtype, shape, groups, channels_last, act, affine, input_bias,
                        grads=dtype == torch.float32 and shape[0] * shape[1] * shape[2] * shape[3] < 2 ** 20)


@pytest.mark.cuda
def test_cuda_large_offset_and_huge_group():
    # 2048x2048 with 4 channels per group: 16.7 M elements per group, mean 100 x the spread
    kw = _inputs((1, 128, 2048, 2048), 32, torch.float32, "cuda", channels_last=True, offset=200.0)
    out = gna.group_norm_act(**kw, act="silu")
    ref = gna.group_norm_act(**_float64(kw), act="silu", impl="reference")
    assert (out.double() - ref).abs().max().item() < 1e-3


@pytest.mark.cuda
def test_cuda_restoreformer_blocks_and_model():
    torch.backends.cudnn.allow_tf32, saved = False, torch.backends.cudnn.allow_tf32
    try:
        _restoreformer_blocks_checks("cuda", size=(64, 48), atol=1e-5)
        import visionattn

        torch.manual_seed(0)
        model = visionattn.create_model("restoreformerpp").cuda().eval()
        x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)).cuda() * 2 - 1
        with torch.no_grad():
            with use_impl("reference"):
                ref = model(x)
            torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)  # fp32 NCHW, fused GroupNorm
            cl = model.to(memory_format=torch.channels_last)
            torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-4, rtol=1e-4)
            low = cl.to(torch.bfloat16)(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
        assert (low.float() - ref).abs().mean() < 0.2 * ref.abs().mean()  # random weights: a sanity bound
    finally:
        torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.cuda
def test_cuda_faster_than_pytorch():
    """bf16 channels_last 512x512x128 (batch 1): the fused op beats F.group_norm + F.silu (the
    figures print with -s)."""
    kw = gna.example_inputs("cuda", torch.bfloat16)
    times = {}
    for impl in ("triton", "reference"):
        fn = lambda: gna.group_norm_act(**kw, impl=impl)  # noqa: E731
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        times[impl] = (time.perf_counter() - start) / 50 * 1e6
    print(f"group_norm_act bf16 channels_last 1x128x512x512: triton {times['triton']:.0f} us, "
          f"F.group_norm + F.silu {times['reference']:.0f} us")
    assert times["triton"] < times["reference"]


def test_kernels_compile_for_hopper():
    """Every kernel compiles to PTX for sm_90 (no GPU needed): catches what the interpreter lets
    through (non-power-of-two blocks, type mismatches in compiled control flow)."""
    from visionattn.ops import _group_norm_act_triton as kernels

    apply_sig = {"x_ptr": "*bf16", "xb_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "mean_ptr": "*fp32",
                 "rstd_ptr": "*fp32", "out_ptr": "*bf16", "HW": "i32", "C": "i32", "G": "i32", "CPG": "i32",
                 "HAS_XB": "constexpr", "HAS_W": "constexpr", "HAS_B": "constexpr", "SILU": "constexpr",
                 "GELU": "constexpr"}
    flags = {"HAS_XB": True, "HAS_W": True, "HAS_B": True, "SILU": True, "GELU": True}  # both activations compile
    cases = [
        (kernels._stats_nchw_kernel, {"x_ptr": "*bf16", "part_ptr": "*fp32", "HW": "i32", "SPLITS": "i32",
                                      "chunk": "i32", "part_stride": "i32", "BLOCK": "constexpr"}, {"BLOCK": 2048}),
        (kernels._stats_nhwc_kernel, {"x_ptr": "*fp32", "part_ptr": "*fp32", "HW": "i32", "C": "i32", "SPLITS": "i32",
                                      "rows_per_split": "i32", "part_stride": "i32", "BLOCK_HW": "constexpr",
                                      "BLOCK_C": "constexpr"}, {"BLOCK_HW": 32, "BLOCK_C": 64}),
        (kernels._finalize_kernel, {"part_ptr": "*fp32", "xb_ptr": "*bf16", "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
                                    "G": "i32", "CPG": "i32", "K": "i32", "INNER": "i32", "stride_b": "i32",
                                    "stride_g": "i32", "stride_outer": "i32", "part_stride": "i32", "eps": "fp32",
                                    "CHANNEL_OUTER": "constexpr", "HAS_XB": "constexpr", "BLOCK_K": "constexpr"},
         {"CHANNEL_OUTER": False, "HAS_XB": True, "BLOCK_K": 1024}),
        (kernels._apply_nchw_kernel, {**apply_sig, "BLOCK": "constexpr"}, {**flags, "BLOCK": 2048}),
        (kernels._apply_nhwc_kernel, {**apply_sig, "BLOCK_HW": "constexpr", "BLOCK_C": "constexpr"},
         {**flags, "BLOCK_HW": 16, "BLOCK_C": 128}),
    ]
    for fn, signature, constexprs in cases:
        assert ".entry" in ptx_for_hopper(fn, signature, constexprs), fn.__name__
