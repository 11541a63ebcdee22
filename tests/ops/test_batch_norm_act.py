"""batch_norm_act: act(BN_eval(x) + residual) — the Triton path (CPU interpreter, CUDA) against
nn.BatchNorm + add + ReLU, on (N, C) features and channels_last maps, and the LiDAR norms on it."""
import os

import pytest
import torch
import torch.nn as nn

from visionattn.ops import batch_norm_act as bna
from visionattn.ops._triton import interpreting
from triton_interpreter import run_interpreted

# (N, C) features and (B, C, H, W) maps: channels not a power of two, more channels than one tile
# (200 > 128), one row, no rows
SHAPES = [(37, 13), (5, 200), (1, 8), (0, 16), (2, 13, 5, 3), (1, 200, 2, 3), (3, 6, 1, 1)]


def _inputs(shape, dtype=torch.float32, device="cpu", residual=True, act="relu", seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[1]

    def features():
        t = torch.randn(*shape, generator=g).to(device, dtype)
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    return dict(x=features(), running_mean=torch.randn(C, generator=g).to(device),
                running_var=(torch.rand(C, generator=g) + 0.1).to(device),
                weight=torch.randn(C, generator=g).to(device), bias=torch.randn(C, generator=g).to(device),
                eps=1e-3, residual=features() if residual else None, act=act)


def _module_output(kw):
    """What the official networks run: an eval-mode nn.BatchNorm, the add, nn.ReLU."""
    x = kw["x"]
    bn = (nn.BatchNorm1d if x.dim() == 2 else nn.BatchNorm2d)(x.shape[1], eps=kw["eps"]).eval()
    with torch.no_grad():
        for name in ("running_mean", "running_var", "weight", "bias"):
            getattr(bn, name).copy_(kw[name])
    out = bn.to(x.device)(x.float())
    out = out if kw["residual"] is None else out + kw["residual"].float()
    return torch.relu(out) if kw["act"] == "relu" else out


def test_reference_is_batch_norm_add_relu():
    for shape in SHAPES[:3] + SHAPES[4:]:
        for residual, act in ((True, "relu"), (False, None), (True, None), (False, "relu")):
            kw = _inputs(shape, residual=residual, act=act)
            with torch.no_grad():
                torch.testing.assert_close(bna.batch_norm_act(**kw, impl="reference"), _module_output(kw))
    assert bna.IMPLS == ("triton", "reference")


def test_bad_inputs_name_the_value():
    kw = _inputs((4, 6))
    with pytest.raises(ValueError, match=r"running_var must have shape \(6,\)"):
        bna.batch_norm_act(**{**kw, "running_var": torch.ones(5)})
    with pytest.raises(TypeError, match="weight must be a"):
        bna.batch_norm_act(**{**kw, "weight": None})
    with pytest.raises(ValueError, match="residual must have x's shape"):
        bna.batch_norm_act(**{**kw, "residual": torch.ones(4, 5)})
    with pytest.raises(ValueError, match="act='gelu'"):
        bna.batch_norm_act(**{**kw, "act": "gelu"})
    with pytest.raises(ValueError, match=r"got shape \(4, 6, 2\)"):
        bna.batch_norm_act(**{**kw, "x": torch.ones(4, 6, 2), "residual": None})
    with pytest.raises(ValueError, match="eps"):
        bna.batch_norm_act(**{**kw, "eps": -1.0})


def _lidar_norms_match_pytorch(device):
    """The detection3d norms (BN + residual + ReLU in one op) equal nn.BatchNorm, +, nn.ReLU in eval and
    train mode, on whichever path ``auto`` takes on ``device``."""
    from visionattn.models.detection3d.norms import bn1d, bn2d

    for make, shape in ((bn1d, (50, 24)), (bn2d, (2, 24, 6, 5))):
        kw = _inputs(shape, device=device)
        for relu in (True, False):
            norm = make(shape[1], relu=relu).to(device)
            with torch.no_grad():
                for name in ("running_mean", "running_var", "weight", "bias"):
                    getattr(norm, name).copy_(kw[name])
            expected = _module_output({**kw, "eps": 1e-3, "act": "relu" if relu else None})
            with torch.no_grad():
                torch.testing.assert_close(norm.eval()(kw["x"], residual=kw["residual"]), expected,
                                           atol=1e-5, rtol=1e-5)
            train_out = norm.train()(kw["x"], residual=kw["residual"])  # batch statistics: PyTorch's
            plain = nn.functional.batch_norm(kw["x"], None, None, norm.weight, norm.bias, True, 0.0, 1e-3)
            plain = plain + kw["residual"]
            torch.testing.assert_close(train_out, plain.relu() if relu else plain)
    assert "relu=True" in repr(bn1d(4, relu=True))


def test_lidar_norms_cpu():
    _lidar_norms_match_pytorch("cpu")


def _triton_checks(device):
    for shape in SHAPES:
        for residual, act in ((True, "relu"), (False, None)):
            kw = _inputs(shape, device=device, residual=residual, act=act)
            out = bna.batch_norm_act(**kw, impl="triton")
            assert out.shape == kw["x"].shape and out.stride() == kw["x"].stride()  # layout kept
            torch.testing.assert_close(out, bna.batch_norm_act(**kw, impl="reference"), atol=1e-5, rtol=1e-5)
            # with gradients: the custom op, whose backward is the reference's
            grads = []
            for impl in ("triton", "reference"):
                leaves = {k: (v.detach().clone().requires_grad_(k in ("x", "weight", "bias", "residual"))
                              if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
                bna.batch_norm_act(**leaves, impl=impl).square().sum().backward()
                grads.append([leaves[k].grad for k in ("x", "weight", "bias", "residual") if leaves[k] is not None])
            for a, b in zip(*grads):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # bf16 features with float32 statistics: fp32 math, one rounding
    kw = _inputs((40, 200), dtype=torch.bfloat16, device=device)
    ref = bna.batch_norm_act(**{**kw, "x": kw["x"].float(), "residual": kw["residual"].float()}, impl="reference")
    torch.testing.assert_close(bna.batch_norm_act(**kw, impl="triton").float(), ref, rtol=2 ** -7, atol=1e-3)
    # the op traces: torch.compile without graph breaks
    kw = _inputs((2, 13, 5, 3), device=device)
    compiled = torch.compile(lambda x, r: bna.batch_norm_act(x, kw["running_mean"], kw["running_var"], kw["weight"],
                                                             kw["bias"], 1e-3, r, "relu", impl="triton"),
                             backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(kw["x"], kw["residual"]), bna.batch_norm_act(**kw, impl="reference"),
                               atol=1e-5, rtol=1e-5)
    _lidar_norms_match_pytorch(device)


def test_auto_takes_the_kernel_for_rows_only():
    kw = _inputs((2, 13, 5, 3))
    expected = "triton" if interpreting() else "reference"
    assert bna._triton_supports(kw["x"], kw["residual"]) == (expected == "triton")
    assert not bna._triton_supports(kw["x"].contiguous(), None)  # NCHW map: the reference
    assert not bna._triton_supports(kw["x"], kw["residual"].contiguous())  # layouts differ


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="run by test_triton_kernel_in_interpreter")
def test_triton_interpreter_cases():
    _triton_checks("cpu")


def test_triton_kernel_in_interpreter():
    """Kernel, autograd and the LiDAR norms on CPU via TRITON_INTERPRET=1 (a fresh process)."""
    pytest.importorskip("triton")
    run_interpreted(__file__, "-k", "test_triton_interpreter_cases or test_auto_takes", expect="2 passed",
                    timeout=600)


@pytest.mark.cuda
def test_triton_cuda():
    _triton_checks("cuda")
    kw = bna.example_inputs("cuda", torch.bfloat16)
    assert bna._triton_supports(kw["x"], kw["residual"])
    ref = bna.batch_norm_act(**{**kw, "x": kw["x"].float(), "residual": kw["residual"].float()}, impl="reference")
    torch.testing.assert_close(bna.batch_norm_act(**kw).float(), ref, rtol=2 ** -7, atol=1e-3)
