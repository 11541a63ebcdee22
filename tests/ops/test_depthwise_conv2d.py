"""depthwise_conv2d: the channels_last Triton kernel (interpreter on CPU, CUDA) against F.conv2d, with
and without the fused epilogue (bias, GELU, layer scale, residual)."""
import copy
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from visionattn.ops import depthwise_conv2d as dw
from visionattn.ops.dispatch import use_impl
from triton_interpreter import run_interpreted

# (B, C, H, W, K): maps narrower/shorter than the kernel, channels not a multiple of the block
CASES = [(2, 5, 7, 9, 5), (1, 3, 2, 3, 5), (1, 70, 6, 5, 3), (2, 4, 5, 11, 1)]
# FFNet's epilogues: token mixer key (bias + GELU), value (bias [+ layer scale] + residual); plain residual
EPILOGUES = [dict(bias=True, gelu=True), dict(bias=True, residual=True, scale=True), dict(bias=True, residual=True),
             dict(residual=True), dict(scale=True, gelu=True)]
EPILOGUE_CASES = [(2, 5, 7, 9, 3), (1, 80, 3, 4, 7), (2, 3, 4, 3, 5)]  # 80: channel blocks without masks


def _inputs(device, dtype, B, C, H, W, K, bias=False, residual=False, scale=False, gelu=False):
    g = torch.Generator().manual_seed(C + K)
    nhwc = lambda: torch.randn(B, C, H, W, generator=g).to(device, dtype).contiguous(  # noqa: E731
        memory_format=torch.channels_last)
    return dict(x=nhwc(), weight=torch.randn(C, 1, K, K, generator=g).to(device, dtype),
                bias=torch.randn(C, generator=g).to(device, dtype) if bias else None,
                residual=nhwc() if residual else None,
                scale=(torch.rand(C, generator=g) + 0.5).to(device, dtype) if scale else None, gelu=gelu)


def _formula(x, weight, bias, residual, scale, gelu):
    """The module docstring's formula in float64."""
    d = lambda t: None if t is None else t.double()  # noqa: E731
    y = F.conv2d(x.double(), weight.double(), d(bias), padding=weight.shape[-1] // 2, groups=x.shape[1])
    y = F.gelu(y) if gelu else y
    y = y if scale is None else y * scale.double().view(1, -1, 1, 1)
    return y if residual is None else y + residual.double()


def _compare(device, dtype, case, tol, **epilogue):
    kw = _inputs(device, dtype, *case, **epilogue)
    leaves = {k: v.detach().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    y = dw.depthwise_conv2d(**leaves, impl="triton")
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    ref = _formula(**kw)
    assert (y.double() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item()), (case, epilogue, dtype)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    wrt = [v for v in leaves.values() if isinstance(v, torch.Tensor)]
    grads = torch.autograd.grad(y, wrt, gy)  # the reference's gradients
    ref_grads = torch.autograd.grad(dw.depthwise_conv2d(**leaves, impl="reference"), wrt, gy)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("case", CASES)
def test_triton_interpreter_cases(case):
    _compare("cpu", torch.float32, case, 1e-5)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("case", EPILOGUE_CASES)
def test_triton_interpreter_epilogues(case, epilogue):
    _compare("cpu", torch.float32, case, 1e-5, **epilogue)


def _tiny_ffnet_checks(device):
    """A fused FFNet with ``depthwise_impl="auto"`` runs its blocks' depthwise convs through the kernel
    (token mixers with the fused epilogues, channel mixers without bias) and equals the unfused model,
    the fused model on its current path, and itself with the op forced to its reference."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models" / "backbones"))
    from test_ffnet import TINY, _randomize
    from visionattn.models.backbones.ffnet import FFNet

    model = _randomize(FFNet(**TINY)).to(device, memory_format=torch.channels_last)
    current = copy.deepcopy(model).fuse()
    fused = _randomize(FFNet(**TINY, depthwise_impl="auto")).to(device, memory_format=torch.channels_last).fuse()
    x = torch.randn(2, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    calls = []
    with torch.no_grad():
        launch = dw._depthwise_conv2d_triton.depthwise_conv2d_launch
        dw._depthwise_conv2d_triton.depthwise_conv2d_launch = lambda *a: calls.append(a[2:]) or launch(*a)
        try:
            out = fused(x)
        finally:
            dw._depthwise_conv2d_triton.depthwise_conv2d_launch = launch
        # 5 blocks: 2 token-mixer convs (bias + GELU; bias + layer scale + residual) and 1 channel-mixer conv each
        assert len(calls) == 15
        assert sum(gelu for *_, gelu in calls) == 5 and sum(r is not None and s is not None for _, r, s, _ in calls) == 5
        with use_impl("depthwise_conv2d:reference"):
            assert (fused(x) - out).abs().max() <= 1e-5
        ref, ref_current = model(x), current(x)
    assert (out - ref).abs().max() <= 1e-5
    assert (out - ref_current).abs().max() <= 1e-5
    # the custom op traces: torch.compile without graph breaks; torch.export keeps one node per conv (CPU:
    # on CUDA export's fake convolutions report NCHW strides, see test_channel_bias_act, so the graph
    # takes the reference branch there)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(fused, backend="aot_eager", fullgraph=True)(x), out, atol=1e-5, rtol=0)
    program = torch.export.export(fused, (x,), strict=False)
    if device == "cpu":
        assert sum(n.target == torch.ops.visionattn.depthwise_conv2d.default for n in program.graph.nodes) == 15
    torch.testing.assert_close(program.module()(x), out, atol=1e-5, rtol=0)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_interpreter")
def test_triton_interpreter_ffnet():
    _tiny_ffnet_checks("cpu")


def test_triton_interpreter():
    pytest.importorskip("triton")
    n = len(CASES) + len(EPILOGUES) * len(EPILOGUE_CASES) + 1
    run_interpreted(__file__, "-k", "test_triton_interpreter_cases or test_triton_interpreter_epilogues or "
                    "test_triton_interpreter_ffnet", expect=f"{n} passed", timeout=600)


def test_reference_dispatch_and_contract():
    kw = dw.example_inputs(channels=4, height=9, width=8)
    out = dw.depthwise_conv2d(**kw)  # CPU without the interpreter: the reference
    torch.testing.assert_close(out, F.conv2d(kw["x"], kw["weight"], padding=2, groups=4))
    assert dw.IMPLS[-1] == "reference"
    assert dw.resolve_impl(kw["x"], kw["weight"]) == "reference"
    with pytest.raises(ValueError, match="K odd"):
        dw.depthwise_conv2d(kw["x"], torch.randn(4, 1, 4, 4))
    with pytest.raises(ValueError, match="weight"):
        dw.depthwise_conv2d(kw["x"], torch.randn(3, 1, 5, 5))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        dw.depthwise_conv2d(kw["x"], kw["weight"], bias=torch.randn(5))
    with pytest.raises(ValueError, match="residual must have x's shape"):
        dw.depthwise_conv2d(kw["x"], kw["weight"], residual=torch.randn(1, 4, 9, 7))


def test_reference_epilogue_is_the_formula():
    for epilogue in EPILOGUES:
        kw = _inputs("cpu", torch.float32, 2, 6, 5, 7, 3, **epilogue)
        out = dw.depthwise_conv2d(**kw, impl="reference")
        assert (out.double() - _formula(**kw)).abs().max() <= 1e-5, epilogue


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_triton_cuda(dtype, tol):
    for case in CASES + [(1, 48, 256, 256, 5), (1, 96, 64, 64, 5), (1, 384, 32, 32, 5)]:
        _compare("cuda", dtype, case, tol)
    # FFNet-1's shapes (224 input) with its epilogues
    for case in [(4, 80, 56, 56, 3), (4, 160, 28, 28, 3), (4, 320, 14, 14, 7), (4, 640, 7, 7, 7)] + EPILOGUE_CASES:
        for epilogue in EPILOGUES:
            _compare("cuda", dtype, case, tol, **epilogue)


@pytest.mark.cuda
def test_triton_cuda_ffnet():
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32 comparisons at 1e-5
        _tiny_ffnet_checks("cuda")
