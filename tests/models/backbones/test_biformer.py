"""BiFormer backbone: official key layout, the three loading paths, dense features, n_win, errors."""
import re
from pathlib import Path

import pytest
import timm
import torch

import visionattn
from visionattn.hub import load_checkpoint
from visionattn.models.backbones.biformer import BiFormer, checkpoint_filter_fn
from visionattn.ops.dispatch import use_impl

# Official state-dict listings (key<TAB>shape), copied from the project's reference sheets.
KEYS = Path(__file__).resolve().parents[2] / "data" / "reference_keys"


def _listing(variant):
    """[(official key, shape)] from the reference key listing."""
    entries = []
    for line in (KEYS / f"biformer_{variant}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            entries.append((key, tuple(int(s) for s in re.findall(r"\d+", shape))))
    return entries


def _official_state_dict(variant, seed=0):
    """An official-format state dict with distinct random values per tensor."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in _listing(variant):
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g)
    return sd


def _expected_key(official):
    """Where each official tensor must land, written out per module kind (independent of the filter)."""
    parts = official.split(".")
    if parts[0] == "downsample_layers":
        stage, rest = int(parts[1]), ".".join(parts[2:])
        return f"stem.{rest}" if stage == 0 else f"stages.{stage}.downsample.{rest}"
    if parts[0] == "stages":
        stage, block, rest = parts[1], parts[2], ".".join(parts[3:])
        rest = {"pos_embed.weight": "cpe.weight", "pos_embed.bias": "cpe.bias",
                "attn.qkv.qkv.weight": "attn.qkv.weight", "attn.qkv.qkv.bias": "attn.qkv.bias",
                "attn.wo.weight": "attn.proj.weight", "attn.wo.bias": "attn.proj.bias",
                "mlp.0.weight": "mlp.fc1.weight", "mlp.0.bias": "mlp.fc1.bias",
                "mlp.3.weight": "mlp.fc2.weight", "mlp.3.bias": "mlp.fc2.bias"}.get(rest, rest)
        return f"stages.{stage}.blocks.{block}.{rest}"
    return official  # norm.*, head.*


def test_official_tiny_state_dict_lands_everywhere():
    official = _official_state_dict("tiny")
    model = timm.create_model("biformer_tiny")
    model.load_state_dict(checkpoint_filter_fn({"model": official}, model), strict=True)
    ours = model.state_dict()
    assert len(ours) == len(official) == 264
    for key, value in official.items():
        assert torch.equal(ours[_expected_key(key)], value), key
    # Stage 4 is plain attention without qkv bias; stages 1-3 BRA with bias (the strict-load pitfall).
    assert "stages.3.blocks.0.attn.qkv.bias" not in ours and "stages.2.blocks.0.attn.qkv.bias" in ours


@pytest.mark.parametrize("variant", ["small", "base"])
def test_official_key_layout_small_base(variant):
    with torch.device("meta"):
        model = timm.create_model(f"biformer_{variant}")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {_expected_key(k): s for k, s in _listing(variant)}
    assert ours == expected


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "biformer_tiny_official.pth"
    torch.save({"model": _official_state_dict("tiny", seed=3)}, path)
    return path


def test_three_loading_paths_agree(official_file):
    official = torch.load(official_file)["model"]
    x = torch.randn(1, 3, 64, 64)
    a = timm.create_model("biformer_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(official_file)))
    b = visionattn.create_model("biformer_tiny", checkpoint=str(official_file))
    c = load_checkpoint(timm.create_model("biformer_tiny"), {"model": official}, family="biformer")
    for m in (a, b, c):
        assert torch.equal(m.stages[3].blocks[1].attn.qkv.weight, official["stages.3.1.attn.qkv.weight"])
        assert torch.equal(m.head.bias, official["head.bias"])
    with torch.no_grad():
        ya, yb, yc = (m.eval()(x) for m in (a, b, c))
    assert torch.equal(ya, yb) and torch.equal(ya, yc)


def test_convert_checkpoint_cli_detects_tiny_and_takes_ema(official_file, tmp_path):
    from visionattn.cli import convert_checkpoint as cli  # visionattn-convert, tools/convert_checkpoint.py

    official = torch.load(official_file)["model"]
    assert cli.main(["biformer", str(official_file), str(tmp_path / "ours.pth")]) == 0
    model = visionattn.create_model("biformer_tiny", checkpoint=str(tmp_path / "ours.pth"))
    assert torch.equal(model.stages[2].blocks[7].mlp.fc2.weight, official["stages.2.7.mlp.3.weight"])
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in official.items()}
    torch.save({"model": official, "model_ema": ema}, tmp_path / "trainer.pth")
    assert cli.main(["biformer_tiny", str(tmp_path / "trainer.pth"), str(tmp_path / "ema.pth"), "--ema"]) == 0
    model = visionattn.create_model("biformer_tiny", checkpoint=str(tmp_path / "ema.pth"))
    assert torch.equal(model.head.weight, official["head.weight"] + 1)


@pytest.mark.filterwarnings("ignore:zoo entry")
def test_zoo_entry_takes_a_user_supplied_file(official_file, tmp_path, monkeypatch):
    """The official links are dead: the zoo error says where to put the file, and a file put there loads."""
    import shutil

    monkeypatch.setenv("VISIONATTN_HOME", str(tmp_path))
    monkeypatch.setenv("VISIONATTN_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="checkpoint=PATH"):
        visionattn.create_model("biformer_tiny", pretrained=True)
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    shutil.copy(official_file, tmp_path / "checkpoints" / "biformer_tiny.in1k.pth")
    model = visionattn.create_model("biformer_tiny", pretrained=True)
    assert torch.equal(model.stem[3].weight, torch.load(official_file)["model"]["downsample_layers.0.3.weight"])


def test_features_only_checkpoint_with_dense_norms(official_file):
    official = torch.load(official_file)["model"]
    model = visionattn.create_model("biformer_tiny", features_only=True, out_norm=True, n_win=4,
                                    checkpoint=str(official_file)).eval()
    inner = model.model
    assert torch.equal(inner.stages[1].blocks[0].attn.lepe.weight, official["stages.1.0.attn.lepe.weight"])
    assert torch.equal(inner.out_norms[2].weight, torch.ones(256))  # new layers keep their init
    assert all(b.attn.n_win == 4 for s in inner.stages[:3] for b in s.blocks)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 70, 99))  # not a multiple of 4 * n_win anywhere: padded inside
    assert [tuple(f.shape) for f in feats] == [(1, 64, 18, 25), (1, 128, 9, 13), (1, 256, 5, 7), (1, 512, 3, 4)]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    for f in feats:  # LayerNorm2d over channels with unit weight / zero bias
        torch.testing.assert_close(f.mean(1), torch.zeros_like(f.mean(1)), atol=1e-4, rtol=0)


def _tiny(**kwargs):
    return BiFormer(depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), num_classes=10, **kwargs)


def test_out_indices_and_auto_equals_reference_on_cpu():
    torch.manual_seed(0)
    model = _tiny(n_win=4).eval()
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        feats = model.forward_intermediates(x, indices=(1, 3), intermediates_only=True)
        assert [f.shape[1] for f in feats] == [64, 128]
        ref = model(x)
        with use_impl("reference"):
            assert torch.equal(model(x), ref)


def test_block_fused_norms_keep_the_reference_numerics():
    """The block's add + LayerNorm pairs go through the fused op; its reference path must give
    exactly the unfused x += cpe(x); x += attn(norm1(x)); x += mlp(norm2(x))."""
    torch.manual_seed(0)
    block = _tiny(n_win=2).stages[1].blocks[0].eval()
    x = torch.randn(2, block.norm1.normalized_shape[0], 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        h = x + block.cpe(x)
        h = h.permute(0, 2, 3, 1)
        h = h + block.attn(block.norm1(h))
        h = h + block.mlp(block.norm2(h))
        with use_impl("reference"):
            assert torch.equal(block(x), h.permute(0, 3, 1, 2))


def test_block_drop_path_in_the_adds_is_timm_s_drop_path():
    """Training with drop path: the adds apply its per-sample factors (the LayerNorm op's residual_scale,
    add_dropped_path); with the same seed the block gives exactly timm's DropPath formula and gradients,
    eagerly and under TorchScript."""
    from timm.layers import drop_path

    torch.manual_seed(0)
    block = _tiny(n_win=2, drop_path_rate=0.6).stages[1].blocks[0].train()
    p = block.drop_path.drop_prob
    x = torch.randn(8, block.norm1.normalized_shape[0], 8, 8).contiguous(memory_format=torch.channels_last)

    def written():
        h = x + block.cpe(x)
        h = h.permute(0, 2, 3, 1)
        h = h + drop_path(block.attn(block.norm1(h)), p, True)
        h = h + drop_path(block.mlp(block.norm2(h)), p, True)
        return h.permute(0, 3, 1, 2)

    results = []
    for fn in (written, block, torch.jit.script(block)):
        torch.manual_seed(5)
        with use_impl("reference"):
            out = fn() if fn is written else fn(x)
        grads = torch.autograd.grad(out.square().sum(), list(block.parameters()))
        results.append((out, grads))
    torch.manual_seed(5)  # the two draws of the block (nothing else in it is random)
    draws = [torch.empty(8).bernoulli_(1 - p) for _ in range(2)]
    assert all(0 < int(d.sum()) < 8 for d in draws)  # this seed drops some samples' paths and keeps others'
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))


def test_conv_biases_folded_keep_outputs_and_gradients(monkeypatch):
    """On CUDA LePE's bias joins the projection's bias (W b) and, without autograd, the positional conv's
    joins the fused add + LayerNorm; the model computes the same function and hands the same gradients
    to every parameter (here forced on CPU against the written formulas)."""
    from visionattn.models.backbones import biformer

    torch.manual_seed(0)
    model = _tiny(n_win=2).eval()
    x = torch.randn(2, 3, 64, 64)
    results = []
    for folded in (False, True):
        monkeypatch.setattr(biformer, "folds_conv_bias", lambda t, folded=folded: folded)
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.logsumexp(-1).sum().backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # without autograd the positional conv's bias goes into the add + LayerNorm too
        torch.testing.assert_close(model(x), results[0][0], atol=1e-5, rtol=1e-5)
    lepe_bias = [n for n in results[0][1] if n.endswith("attn.lepe.bias")]
    assert len(lepe_bias) == 4  # one per block: three routed stages and the global one
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.cuda
def test_triton_model_matches_reference_model_cuda():
    """The whole model (channels_last trunk, strided qkv views into the kernel, padded dense sizes),
    forward and parameter gradients, triton vs reference. fp32: in half precision the two paths' rounding
    can flip near-tied routing choices in later stages (the op tests cover fp16/bf16 with shared routing)."""
    torch.manual_seed(0)
    model = _tiny(n_win=4).cuda().eval()  # eval: BN on running stats (batch stats would flatten the logits)
    x = torch.randn(2, 3, 100, 136, device="cuda")  # stage maps not multiples of n_win: padded
    outs, grads = [], []
    for impl in ("triton", "reference"):
        model.zero_grad()
        with use_impl(impl):
            out = model(x)
        out.float().square().mean().backward()
        outs.append(out.float())
        grads.append(torch.cat([p.grad.float().flatten() for p in model.parameters()]))
    assert (outs[0] - outs[1]).norm() / outs[1].norm() < 1e-4
    assert (grads[0] - grads[1]).norm() / grads[1].norm() < 1e-3


@pytest.mark.cuda
def test_drop_path_in_the_fused_adds_matches_reference_cuda():
    """Training with drop path: the fused add + LayerNorm with drop path's factors and the addcmul
    against the reference ops, with the same draws (same seed). fp32, as in the test above (the op
    tests cover half precision)."""
    torch.manual_seed(0)
    model = _tiny(n_win=2, drop_path_rate=0.6).cuda().train()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    outs, grads = [], []
    for impl in ("auto", "reference"):
        model.zero_grad()
        torch.manual_seed(5)
        with use_impl(impl):
            out = model(x)
        out.logsumexp(-1).sum().backward()
        outs.append(out.float())
        grads.append(torch.cat([p.grad.float().flatten() for p in model.parameters()]))
    assert (outs[0] - outs[1]).norm() / outs[1].norm() < 1e-4
    assert (grads[0] - grads[1]).norm() / grads[1].norm() < 1e-3


def test_train_step_runs_and_routing_gets_no_gradient():
    model = _tiny(n_win=2, drop_path_rate=0.1).train()
    out = model(torch.randn(2, 3, 64, 64))
    out.logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="global_pool"):
        _tiny(global_pool="max")
    with pytest.raises(RuntimeError, match="does not fit|missing"):
        load_checkpoint(_tiny(), {"model": {"stem.0.weight": torch.zeros(16, 3, 3, 3)}}, family="biformer")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["biformer_tiny", "biformer_small", "biformer_base"])
def test_params_and_flops_match_the_paper(name):
    """FLOPs as the paper counts them: one multiply-add = one FLOP, i.e. FlopCounterMode's total / 2.

    torch's counter sees matmuls, convolutions and attention only; the official fvcore count
    (2.228/4.487/9.795 G) also counts normalisations, so ours is ~0.8% lower."""
    from torch.utils.flop_counter import FlopCounterMode

    from visionattn.models.backbones.biformer import PAPER_FLOPS, PAPER_PARAMS

    model = timm.create_model(name).eval()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(PAPER_PARAMS[name], rel=1e-3)
    with torch.no_grad(), use_impl("reference"), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 224, 224))
    assert counter.get_total_flops() / 2 == pytest.approx(PAPER_FLOPS[name], rel=0.015)


def test_group_matcher_and_grad_checkpointing_follow_timm():
    from timm.models import group_parameters

    model = timm.create_model("biformer_tiny", num_classes=10)
    groups = group_parameters(model, model.group_matcher(coarse=False))
    names = [n for _, group in sorted(groups.items()) for n in group]
    assert names[0].startswith("stem.")  # the stem is group 0; every parameter is grouped once
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 1 + 4 + 1  # stem, four stages, the classifier left over

    x = torch.randn(2, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in model.stages)
    torch.manual_seed(0)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-5, msg=n)
