"""Restore-RWKV: Omni-Shift re-parameterisation, forward contract, official-checkpoint conversion
(any-size and tiled inference: tests/test_inference.py)."""
import re
from pathlib import Path

import pytest
import torch

import visionattn
from visionattn.hub import load_checkpoint
from visionattn.models.restoration.restore_rwkv import Block, OmniShift, RestoreRWKV, Stage

KEYS = Path("/work/shared/reference/keys/restore_rwkv.txt")
TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)


def tiny(**kw):
    torch.manual_seed(0)
    return RestoreRWKV(**{**TINY, **kw})


def test_omni_shift_reparam_equals_branches_and_is_never_stale():
    torch.manual_seed(0)
    m = OmniShift(6).double()
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    train_out = m.train()(x)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), train_out)
        # new weights through load_state_dict: the cached fused kernel must not be reused
        other = OmniShift(6).double()
        m.load_state_dict(other.state_dict())
        torch.testing.assert_close(m(x), other.train()(x))
        # in-place edit (optimiser step) also invalidates it
        m.alpha.add_(1.0)
        expected = m.alpha[0] * x + m.alpha[1] * m.conv1x1(x) + m.alpha[2] * m.conv3x3(x) + m.alpha[3] * m.conv5x5(x)
        torch.testing.assert_close(m(x), expected)
    # eval with autograd on: gradients reach the branch weights
    m(x).sum().backward()
    assert m.conv3x3.weight.grad is not None and m.alpha.grad.abs().sum() > 0
    assert "conv5x5_reparam.weight" not in m.state_dict()


def test_state_dict_with_or_without_fused_weight_loads():
    m = OmniShift(4)
    sd = m.state_dict()
    m.load_state_dict(sd)  # ours: no derived weight
    m.load_state_dict({**sd, "conv5x5_reparam.weight": torch.randn(4, 1, 5, 5)})  # official: ignored


def test_forward_contract_and_channels():
    m = tiny().eval()
    rgb = tiny(in_chans=3, out_chans=3).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 1, 16, 24)).shape == (2, 1, 16, 24)
        assert rgb(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="1 channel"):
        tiny()(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="multiples of 8.*restore_image"):
        tiny()(torch.rand(1, 1, 13, 16))
    # tiling is an inference setting now: the old constructor arguments name the new place
    with pytest.raises(ValueError, match="restore_image"):
        tiny(tile=32)
    with pytest.raises(TypeError, match="unexpected"):
        tiny(tiles=32)


def _block_formula(b, x):
    """The block as the paper writes it, on (B, T, C) transposed views of an NCHW image."""
    B, C, H, W = x.shape
    t = x.flatten(2).transpose(1, 2)
    t = t + b.gamma1 * b.att(b.ln1(t), (H, W))
    t = t + b.gamma2 * b.ffn(b.ln2(t), (H, W))
    return t.transpose(1, 2).reshape(B, C, H, W)


def test_stage_fusions_equal_the_block_formula():
    """Stage (residual adds fused into the next LayerNorm, tokens as channels_last views) and the
    eval-mode layer scales folded into the projections: the paper's block formula, in float64."""
    torch.manual_seed(0)
    stage = Stage(*[Block(6) for _ in range(3)]).double()
    for p in stage.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    expected = x
    for b in stage:
        expected = _block_formula(b, expected)
    for train in (True, False):
        stage.train(train)
        with torch.set_grad_enabled(train):
            out = stage(x)
            torch.testing.assert_close(out, expected.detach(), rtol=1e-12, atol=1e-12)
            assert out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(stage[0](x), _block_formula(stage[0], x).detach(), rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the folded weights follow in-place parameter changes
        stage[1].gamma1.mul_(2.0)
        stage[2].gamma2.add_(0.5)
        expected = x
        for b in stage:
            expected = _block_formula(b, expected)
        torch.testing.assert_close(stage(x), expected, rtol=1e-12, atol=1e-12)


def test_output_is_nchw_contiguous():
    m = tiny(in_chans=3, out_chans=3).eval()
    with torch.no_grad():
        assert m(torch.rand(1, 3, 16, 16)).is_contiguous()


def test_train_step_gradients_flow():
    m = tiny().train()
    x = torch.rand(2, 1, 16, 16)
    loss = (m(x) - x).abs().mean()
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_model_triton_matches_reference_cuda(dtype):
    """Whole network on the GPU: Triton Bi-WKV vs the exact reference, eval outputs and train gradients."""
    from visionattn.ops.dispatch import use_impl

    m = tiny(dim=16).cuda().to(dtype)
    x = torch.rand(2, 1, 40, 56, device="cuda", dtype=dtype)
    outs, grads = {}, {}
    for impl in ("triton", "reference"):
        # cuDNN's TF32 off: the reference's depthwise convolutions are cuDNN's, the fast path's are
        # fp32 Triton kernels; with TF32 the reference alone rounds its products (~3e-4 relative)
        with use_impl(impl), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            m.train().zero_grad()
            (m(x) - x).square().mean().backward()
            grads[impl] = [p.grad.clone() for p in m.parameters()]
            with torch.no_grad():
                outs[impl] = m.eval()(x)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    scale = outs["reference"].abs().max()
    assert (outs["triton"] - outs["reference"]).abs().max() <= tol * scale
    for a, b in zip(grads["triton"], grads["reference"]):
        assert (a - b).abs().max() <= 10 * tol * b.abs().max().clamp_min(1e-12)


@pytest.mark.cuda
def test_model_bfloat16_eval_cuda():
    """bfloat16 eval on the fast paths (Bi-WKV column scans reading bf16 k/v, Triton LayerNorm and
    depth-wise conv on channels_last) against the float64 reference network."""
    from visionattn.ops.dispatch import use_impl

    m = tiny(dim=16).cuda().eval()
    x = torch.rand(1, 1, 64, 48, device="cuda")
    with torch.no_grad():
        with use_impl("reference"):
            ref = m.double()(x.double())
        out = m.bfloat16()(x.bfloat16())
    assert out.dtype == torch.bfloat16 and out.is_contiguous()
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err < 2e-2, err


def official_state_dict(july_2024=False):
    """Random tensors with the official names/shapes from the key listing (July-2024: + att.dwconv)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for line in KEYS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")
        sd[name] = torch.randn(*eval(shape), generator=g)
        if july_2024 and name.endswith("att.spatial_decay"):
            c = sd[name].shape[1]
            sd[name.replace("spatial_decay", "dwconv.weight")] = torch.randn(c, 1, 3, 3, generator=g)
    return sd


@pytest.mark.skipif(not KEYS.exists(), reason="needs the key listing")
@pytest.mark.parametrize("july_2024", [False, True])
def test_converter_official_layouts(july_2024):
    official = official_state_dict(july_2024)
    assert len(official) == 1114 + (44 if july_2024 else 0)
    model = visionattn.create_model("restore_rwkv")
    load_checkpoint(model, official, family="restore_rwkv")
    ours = model.state_dict()
    dropped = [k for k in official if k not in ours]
    assert all(re.search(r"(conv5x5_reparam|att\.dwconv)\.weight$", k) for k in dropped)
    for key, value in ours.items():
        assert torch.equal(value, official[key]), key


def test_converter_via_file(tmp_path):
    m = tiny()
    sd = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
    sd["encoder_level1.0.att.omni_shift.conv5x5_reparam.weight"] = torch.randn(8, 1, 5, 5)
    torch.save(sd, tmp_path / "Generator_best.pth")
    load_checkpoint(m, tmp_path / "Generator_best.pth", family="restore_rwkv")
    assert torch.equal(m.patch_embed.weight, sd["patch_embed.weight"])
