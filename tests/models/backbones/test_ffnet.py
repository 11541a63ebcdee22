"""FFNet: re-parameterisation, MetaMixer, official checkpoint conversion, features, FLOPs."""
import copy
import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils.model import reparameterize_model

import visionattn  # noqa: F401  (registers ffnet_*)
from visionattn.hub import load_checkpoint
from visionattn.models.backbones.ffnet import ConvFFN, FFNet, MetaMixer, PatchMerging, PointwiseConv, RepDWConv

KEYS = Path("/work/shared/reference/keys")
if not KEYS.is_dir():  # CI copy of the listings
    KEYS = Path(__file__).resolve().parents[2] / "data" / "reference_keys"

# A small FFNet that still has every unit: plain and RepVGG depthwise convs, conv-BN and
# RepVGG channel mixers, patch merging with channel multiplier 2, layer scale.
TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), ffn_kernels=(3, 7, 3, 7), token_kernels1=(3, 3, 7, 7),
            token_kernels2=(3, 7, 5, 7), stem_chs=8, layer_scale_init_value=0.5, num_classes=10)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics/affines and layer scales so folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("gamma"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return model.eval()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- re-parameterisation ---------------------------------------------------------------------

def test_fuse_matches_unfused_and_leaves_no_batchnorm_in_blocks():
    model = _randomize(FFNet(**TINY))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        fused = copy.deepcopy(model).fuse()
        out = fused(x)
    assert (out - ref).abs().max() <= 1e-5
    # only the final norm stays a BatchNorm (as in the official deploy model)
    bns = [n for n, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == ["norm"]
    assert not any(isinstance(m, RepDWConv) for m in fused.modules())


def _plain_convs(model: nn.Module) -> nn.Module:
    """A copy whose 1x1 convs are plain ``nn.Conv2d`` (same tensors): no GEMM path, no bias folds."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, PointwiseConv):
                plain = nn.Conv2d(child.in_channels, child.out_channels, 1, bias=child.bias is not None)
                plain.load_state_dict(child.state_dict())
                setattr(module, name, plain)
    return model


@pytest.mark.parametrize("channels_last", [True, False])
def test_deploy_fast_path_bias_folds_and_gemms_do_not_change_the_output(channels_last):
    """The fused model's eager fast path (1x1 convs as GEMMs on the NHWC view, depthwise biases folded
    into the following 1x1 conv at call time, layer scale + residual in one addcmul) computes the same
    function as the plain fused conv graph and as the unfused model; fails if a fold is wrong."""
    model = _randomize(FFNet(**TINY))
    fused = copy.deepcopy(model).fuse()
    plain = _plain_convs(fused)
    assert fused.state_dict().keys() == plain.state_dict().keys() and _params(fused) == _params(plain)
    x = torch.randn(2, 3, 64, 96)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        fused, plain, model = (m.to(memory_format=torch.channels_last) for m in (fused, plain, model))
    with torch.no_grad():
        out, ref_plain, ref_unfused = fused(x), plain(x), model(x)
        feats = fused.forward_intermediates(x, intermediates_only=True)
    assert (out - ref_plain).abs().max() <= 1e-5
    assert (out - ref_unfused).abs().max() <= 1e-5
    assert all(f.is_contiguous(memory_format=torch.channels_last) == channels_last for f in feats)
    # the folds are live: a depthwise bias that reaches the output only through a fold changes it
    with torch.no_grad():
        fused.stages[1].blocks[0].channel_mixer.query.bias.add_(1.0)
        fused.stages[2].downsample.conv.bias.add_(1.0)
        assert (fused(x) - out).abs().max() > 1e-3


def test_channels_last_deploy_path_splits_the_multiplier_and_adds_residuals_in_the_gemm(monkeypatch):
    """On channels_last maps the fused model runs each patch merging as one depthwise conv per multiplier
    index (cuDNN has no channels_last kernel for a channel multiplier) and, without autograd, adds each
    channel mixer's residual inside its second GEMM, the second conv's bias carried by a constant column
    of the hidden map. Both are taken (counted) and leave the output and the gradients unchanged."""
    calls = {"split": 0, "add_into": 0}

    def counted(name, method):
        def run(self, *args, **kwargs):
            calls[name] += 1
            return method(self, *args, **kwargs)
        return run
    monkeypatch.setattr(PatchMerging, "_forward_by_multiplier", counted("split", PatchMerging._forward_by_multiplier))
    monkeypatch.setattr(ConvFFN, "add_into", counted("add_into", ConvFFN.add_into))
    model = _randomize(FFNet(**TINY))  # every bias and the layer scales nonzero
    fused = copy.deepcopy(model).fuse().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref, out = model(x), fused(x.contiguous(memory_format=torch.channels_last))
    assert calls == {"split": 3, "add_into": sum(TINY["depths"])}
    assert (out - ref).abs().max() <= 1e-5
    # under autograd: the split (differentiable) but no in-place residual; same gradients as unfused
    xa, xb = x.clone().requires_grad_(), x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    model(xa).square().sum().backward()
    fused(xb).square().sum().backward()
    assert calls == {"split": 6, "add_into": sum(TINY["depths"])}
    assert (xa.grad - xb.grad).abs().max() <= 1e-5 * xa.grad.abs().max()
    # a forward hook that keeps a token mixer's output keeps it as returned: that block adds out of place
    kept = []
    fused.stages[0].blocks[0].token_mixer.register_forward_hook(lambda module, args, y: kept.append(y.clone()) or None)
    fused.stages[0].blocks[0].token_mixer.register_forward_hook(lambda module, args, y: kept.append(y) or None)
    with torch.no_grad():
        assert (fused(x.contiguous(memory_format=torch.channels_last)) - out).abs().max() <= 1e-5
    assert calls["add_into"] == 2 * sum(TINY["depths"]) - 1 and torch.equal(kept[0], kept[1])


def test_token_mixer_runs_each_depthwise_conv_with_its_epilogue_where_the_op_takes_it(monkeypatch):
    """Where the depthwise_conv2d op resolves to its CUDA kernel (inference on channels_last CUDA maps) a
    fused token mixer runs conv + bias + GELU, then conv + bias + layer scale + residual, as one op call
    each. Here the op's resolution is forced and its reference stands in for the kernel: the wiring (which
    conv gets GELU, the residual, the scale) must give the unfused model's output."""
    from visionattn.ops import depthwise_conv2d as dwc

    model = _randomize(FFNet(**TINY))
    fused = copy.deepcopy(model).fuse().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
    calls = []

    def reference_for_kernel(x, weight, bias=None, residual=None, scale=None, gelu=False, impl="auto"):
        calls.append((weight.shape[-1], gelu, residual is not None, scale is not None))
        return dwc.depthwise_conv2d_reference(x, weight, bias, residual, scale, gelu)
    monkeypatch.setattr(dwc, "resolve_impl", lambda *args, **kwargs: "cuda")
    monkeypatch.setattr(dwc, "depthwise_conv2d", reference_for_kernel)
    with torch.no_grad():
        out = fused(x.contiguous(memory_format=torch.channels_last))
    blocks = [i for i, n in enumerate(TINY["depths"]) for _ in range(n)]
    assert calls[0::2] == [(TINY["token_kernels1"][i], True, False, False) for i in blocks]  # bias + GELU
    assert calls[1::2] == [(TINY["token_kernels2"][i], False, True, True) for i in blocks]  # + scale, residual
    assert (out - ref).abs().max() <= 1e-5
    calls.clear()  # epilogue_impl="reference" keeps the modules
    with torch.no_grad():
        FFNet(**TINY, epilogue_impl="reference").fuse().to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last))
    assert calls == []


def test_deploy_fast_path_keeps_the_published_layout_and_loads_after_fuse():
    """Folds are computed from the parameters at each call: the fused state dict is the official deploy
    layout (param count as published), and a deploy state dict loaded *after* fuse() is used as is."""
    a, b = _randomize(FFNet(**TINY), seed=0).fuse(), _randomize(FFNet(**TINY), seed=1).fuse()
    a.load_state_dict(b.state_dict())  # strict
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    # gradients reach a folded depthwise bias (fine-tuning a fused model stays correct)
    a.train()
    a(x).sum().backward()
    assert a.stages[0].blocks[0].channel_mixer.query.bias.grad.abs().sum() > 0


def test_fused_channels_last_model_exports():
    model = _randomize(FFNet(**TINY)).fuse().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    program = torch.export.export(model, (x,), strict=False)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-6)
    assert any(n.target == torch.ops.aten.linear.default for n in program.graph.nodes)  # the GEMM path


def test_timm_reparameterize_model_fuses_a_wrapped_ffnet():
    wrapper = nn.Sequential(_randomize(FFNet(**TINY)))  # e.g. a task model holding the backbone
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = wrapper(x)
        fused = reparameterize_model(wrapper)
        out = fused(x)
    assert (out - ref).abs().max() <= 1e-5
    assert _params(fused) < _params(wrapper)


def test_repdwconv_fuse_with_stride_and_channel_multiplier():
    conv = _randomize(RepDWConv(4, 8, 7, stride=2))
    x = torch.randn(2, 4, 15, 16)
    with torch.no_grad():
        assert (conv.fuse()(x) - conv(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name, raw, fused", [
    ("ffnet_1", 13_775_656, 13_660_152),
    pytest.param("ffnet_3", 48_817_896, 48_330_632, marks=pytest.mark.slow),
])
def test_param_counts_raw_and_fused_match_the_paper(name, raw, fused):
    # fused counts are the published ones (13.66M / 48.33M), counted on the official deploy model
    model = timm.create_model(name)
    assert _params(model) == raw
    assert _params(model.eval().fuse()) == fused


def test_flops_of_fused_ffnet_1_at_256_match_the_paper():
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model("ffnet_1").eval().fuse()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, 256, 256))
    macs = counter.get_total_flops() / 2  # flop_counter counts a multiply-add as 2 FLOPs
    assert abs(macs / 1e9 - 2.985) < 0.01  # paper: 2.9G (sheet: 2.98G MACs)


# --- MetaMixer ---------------------------------------------------------------------------------

class DotProductKey(nn.Module):
    """Query–key interaction of self-attention: keys computed from the input. (B, N, C) -> (B, N, N)."""
    uses_input = True

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, q, x):
        return q @ self.proj(x).transpose(1, 2) / math.sqrt(q.shape[-1])


class WeightedValue(nn.Module):
    """Coefficient–value interaction of self-attention. (B, N, N), (B, N, C) -> (B, N, C)."""
    uses_input = True

    def __init__(self, dim):
        super().__init__()
        self.proj, self.out = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, a, x):
        return self.out(a @ self.proj(x))


def test_metamixer_self_attention_instance_equals_multihead_attention():
    dim = 16
    mixer = MetaMixer(nn.Linear(dim, dim), DotProductKey(dim), nn.Softmax(dim=-1), WeightedValue(dim))
    mha = nn.MultiheadAttention(dim, 1, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([mixer.query.weight, mixer.key.proj.weight, mixer.value.proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([mixer.query.bias, mixer.key.proj.bias, mixer.value.proj.bias]))
        mha.out_proj.weight.copy_(mixer.value.out.weight)
        mha.out_proj.bias.copy_(mixer.value.out.bias)
    x = torch.randn(2, 10, dim)
    with torch.no_grad():
        assert torch.allclose(mixer(x), mha(x, x, x, need_weights=False)[0], atol=1e-5)


def test_ffnified_attention_is_the_documented_composition():
    model = _randomize(FFNet(**TINY))
    mixer = model.stages[0].blocks[0].token_mixer  # k1 = k2 = 3: plain depthwise convs with bias
    x = torch.randn(2, 8, 12, 12)
    bn = mixer.query.bn
    q = F.batch_norm(F.conv2d(x, mixer.query.conv.weight), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                     eps=bn.eps)
    a = F.gelu(F.conv2d(q, mixer.key.weight, mixer.key.bias, padding=1, groups=8))
    y = F.conv2d(a, mixer.value.weight, mixer.value.bias, padding=1, groups=8)
    with torch.no_grad():
        assert torch.allclose(mixer(x), y, atol=1e-6)


# --- official checkpoints ------------------------------------------------------------------------

def _official_state_dict(variant: str, seed: int = 0):
    """Random tensors with the official names and shapes of keys/<variant>.txt."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for line in (KEYS / f"{variant}.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        shape = tuple(int(s) for s in re.findall(r"\d+", shape))
        sd[key] = (torch.randint(0, 100, shape, generator=g) if key.endswith("num_batches_tracked")
                   else torch.rand(shape, generator=g) + 0.5)
    return sd


# official -> ours, written out by hand for one of each kind of unit
SPOT_CHECKS = {
    "patch_embed.2.c.weight": "stem.2.conv.weight",
    "stages.0.1.token_mixer.0.main.conv1.weight": "stages.0.blocks.1.token_mixer.key.weight",
    "stages.0.1.token_mixer.0.main.conv2.bias": "stages.0.blocks.1.token_mixer.value.bias",
    "stages.1.0.proj.0.conv.c.weight": "stages.1.downsample.conv.large.conv.weight",
    "stages.1.0.proj.0.conv1.bn.running_var": "stages.1.downsample.conv.small.bn.running_var",
    "stages.1.0.proj.1.conv.bn.weight": "stages.1.downsample.proj.bn.weight",
    "stages.1.0.proj.1.conv.c.weight": "stages.1.downsample.proj.conv.weight",
    "stages.2.3.token_mixer.0.main.fc.bn.bias": "stages.2.blocks.2.token_mixer.query.bn.bias",
    "stages.2.3.token_mixer.0.main.conv1.conv1.c.weight": "stages.2.blocks.2.token_mixer.key.small.conv.weight",
    "stages.2.3.token_mixer.0.main.conv2.conv.bn.running_mean": "stages.2.blocks.2.token_mixer.value.large.bn.running_mean",
    "stages.3.1.channel_mixer.main.fc1.weight": "stages.3.blocks.0.channel_mixer.key.weight",
    "stages.3.1.channel_mixer.main.fc2.bias": "stages.3.blocks.0.channel_mixer.value.bias",
    "norm.running_mean": "norm.running_mean",
    "head.weight": "head.weight",
}
SPOT_FFNET_1 = {"stages.0.0.channel_mixer.main.conv.c.weight": "stages.0.blocks.0.channel_mixer.query.conv.weight"}
SPOT_FFNET_3 = {
    "stages.2.1.channel_mixer.main.conv.conv1.c.weight": "stages.2.blocks.0.channel_mixer.query.small.conv.weight",
    "stages.2.1.token_mixer.0.layer_scale": "stages.2.blocks.0.ls1.gamma",
    "stages.2.1.channel_mixer.layer_scale": "stages.2.blocks.0.ls2.gamma",
}


@pytest.mark.parametrize("variant, spots", [
    ("ffnet_1", SPOT_FFNET_1),
    ("ffnet_3", SPOT_FFNET_3),
    pytest.param("ffnet_2", {}, marks=pytest.mark.slow),
    pytest.param("ffnet_4", SPOT_FFNET_3, marks=pytest.mark.slow),
])
def test_official_state_dict_loads_strictly_and_every_tensor_lands(variant, spots):
    official = _official_state_dict(variant)
    model = timm.create_model(variant)
    load_checkpoint(model, {"state_dict": official, "epoch": 3}, family="ffnet")  # strict
    ours = model.state_dict()
    assert len(ours) == len(official)
    for src, dst in {**SPOT_CHECKS, **spots}.items():
        assert torch.equal(ours[dst].flatten(), official[src].flatten()), (src, dst)
    # every official tensor sits somewhere in ours, value for value (random values are unique)
    fingerprint = lambda t: (t.numel(), round(float(t.double().sum()), 6))  # noqa: E731
    assert sorted(map(fingerprint, official.values())) == sorted(map(fingerprint, ours.values()))


def test_converter_chooses_ema_weights_on_request():
    raw, ema = _official_state_dict("ffnet_1", seed=1), _official_state_dict("ffnet_1", seed=2)
    checkpoint = {"state_dict": raw, "state_dict_ema": ema, "epoch": 300}
    model = timm.create_model("ffnet_1")
    load_checkpoint(model, checkpoint, family="ffnet", ema=True)
    assert torch.equal(model.head.weight, ema["head.weight"])
    load_checkpoint(model, checkpoint, family="ffnet")
    assert torch.equal(model.head.weight, raw["head.weight"])
    with pytest.raises(RuntimeError, match="state_dict_ema"):
        load_checkpoint(model, {"state_dict": raw}, family="ffnet", ema=True)


def test_strict_load_rejects_a_checkpoint_of_another_variant():
    with pytest.raises(RuntimeError, match="another variant"):
        load_checkpoint(timm.create_model("ffnet_1"), {"state_dict": _official_state_dict("ffnet_3")},
                        family="ffnet")


# --- dense-prediction features -------------------------------------------------------------------

def test_features_only_gives_layernormed_stage_outputs():
    model = timm.create_model("ffnet_1", features_only=True, out_indices=(1, 2, 3)).eval()
    assert model.feature_info.channels() == [160, 320, 640]
    assert model.feature_info.reduction() == [8, 16, 32]
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        feats = model(x)
    assert [tuple(f.shape) for f in feats] == [(1, 160, 12, 16), (1, 320, 6, 8), (1, 640, 3, 4)]
    # each output is the stage output through a channels-first LayerNorm (eps 1e-6) over C
    net = model.model
    with torch.no_grad():
        raw = net.stages[1](net.stages[0](net.stem(x)))
    ln = F.layer_norm(raw.permute(0, 2, 3, 1), (160,), net.stage_norms[1].weight, net.stage_norms[1].bias, 1e-6)
    assert torch.allclose(feats[0], ln.permute(0, 3, 1, 2), atol=1e-5)
    assert not any(k.startswith("model.head") for k in model.state_dict())


def test_dense_official_backbone_keys_load_into_features_model():
    official = {f"backbone.{k}": v for k, v in _official_state_dict("ffnet_1").items()
                if not k.startswith(("head.", "norm."))}
    for i, c in enumerate((80, 160, 320, 640)):
        official[f"backbone.norm{i}.weight"] = torch.rand(c)
        official[f"backbone.norm{i}.bias"] = torch.rand(c)
    official["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)  # detector parts are skipped
    model = timm.create_model("ffnet_1", features_only=True)
    load_checkpoint(model, {"state_dict": official}, family="ffnet")  # strict
    assert torch.equal(model.model.stage_norms[2].bias, official["backbone.norm2.bias"])


def test_create_model_fuse_kwarg_gives_the_deploy_model():
    model = timm.create_model("ffnet_1", fuse=True)
    assert _params(model) == 13_660_152
    assert [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)] == ["norm"]


def test_builds_on_the_meta_device():
    """Parameter counting without allocation (tools/demo.py sizes every backbone this way)."""
    with torch.device("meta"):
        model = timm.create_model("ffnet_1")
    assert model.head.weight.is_meta and _params(model) == 13_775_656  # the unfused count (param_counts/ffnet.yaml)


def test_create_model_checkpoint_into_features_only_keeps_dense_norms_at_init(tmp_path):
    """An ImageNet checkpoint (no per-stage norms) loads strictly into the dense backbone form."""
    full = _randomize(FFNet(**TINY))
    torch.save({"state_dict": full.state_dict()}, tmp_path / "in1k.pth")
    feats = visionattn.create_model("ffnet_1", checkpoint=str(tmp_path / "in1k.pth"), features_only=True,
                                    **{k: v for k, v in TINY.items() if k != "num_classes"}, num_classes=10)
    source = full.state_dict()
    for key, value in feats.state_dict().items():
        plain = key[len("model."):]
        if plain.startswith("stage_norms."):
            assert (value == (1 if plain.endswith("weight") else 0)).all(), key  # LayerNorm init
        else:
            assert torch.equal(value, source[plain]), key


def test_copy_into_features_refuses_a_missing_tensor_of_an_existing_module():
    from visionattn.hub import copy_into_features

    full = FFNet(**TINY)
    feats = timm.create_model("ffnet_1", features_only=True, **{k: v for k, v in TINY.items() if k != "num_classes"})
    del full.stages[0].blocks[0].token_mixer.key.bias
    full.stages[0].blocks[0].token_mixer.key.bias = None
    with pytest.raises(RuntimeError, match="1 tensors without a counterpart.*token_mixer.key.bias"):
        copy_into_features(feats, full)
