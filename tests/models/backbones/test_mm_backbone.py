"""VisionAttnBackbone: any timm/visionattn backbone as an mmdet/mmseg backbone."""
from unittest import mock

import pytest
import timm
import torch

pytest.importorskip("mmdet", reason="the det extra (mmdet) is not installed")

from visionattn.engine.mm_backbone import VisionAttnBackbone  # noqa: E402


def _tiny(**kwargs):
    return VisionAttnBackbone("test_convnext", **kwargs)


def test_registered_in_mmdet_and_mmseg():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    for registry in (DET, SEG):
        net = registry.build(dict(type="VisionAttnBackbone", model_name="test_convnext", out_indices=(1, 3)))
        assert isinstance(net, VisionAttnBackbone)


def test_feature_maps_and_out_norm():
    net = _tiny(out_indices=(0, 1, 2, 3), out_norm="layernorm2d").eval()
    feats = net(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 24, 16, 24), (2, 32, 8, 12), (2, 48, 4, 6), (2, 64, 2, 3)]
    assert net.out_channels == [24, 32, 48, 64] and net.strides == [4, 8, 16, 32]
    # Channels-first LayerNorm with fresh affine: zero mean, unit variance over channels at every pixel.
    f = feats[1]
    torch.testing.assert_close(f.mean(1), torch.zeros_like(f.mean(1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(f.var(1, unbiased=False), torch.ones_like(f.mean(1)), atol=1e-3, rtol=0)
    raw = _tiny(out_indices=(1,)).eval()
    raw.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("out_norms")}, strict=False)
    assert not torch.allclose(raw(torch.randn(1, 3, 64, 64))[0].mean(1), torch.zeros(1, 8, 8), atol=1e-3)


def test_bad_out_norm():
    with pytest.raises(ValueError, match="out_norm"):
        _tiny(out_norm="batchnorm")


def test_checkpoint_loads_strictly_into_feature_extractor(tmp_path):
    full = timm.create_model("test_convnext")
    torch.save({"state_dict": full.state_dict()}, tmp_path / "ours.pth")
    net = _tiny(checkpoint=str(tmp_path / "ours.pth"))
    net.init_weights()
    # timm renames stages.0 -> stages_0 in its feature wrapper; every tensor still arrives.
    # Reference: timm loads the file into the whole network before wrapping it.
    torch.save(full.state_dict(), tmp_path / "plain.pth")
    ref = timm.create_model("test_convnext", features_only=True, out_indices=(0, 1, 2, 3), pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(tmp_path / "plain.pth")))
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(net.eval()(x), ref.eval()(x)):
        torch.testing.assert_close(a, b)
    assert net.is_init


def test_checkpoint_of_another_model_is_an_error(tmp_path):
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "resnet.pth")
    net = _tiny(checkpoint=str(tmp_path / "resnet.pth"))
    with pytest.raises(RuntimeError):
        net.init_weights()
    with pytest.raises(FileNotFoundError):
        _tiny(checkpoint=str(tmp_path / "missing.pth")).init_weights()


def test_norm_eval_freezes_batchnorm_statistics():
    net = VisionAttnBackbone("test_resnet", norm_eval=True).train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = bns[0].running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(bns[0].running_mean, before)
    assert all(m.training for m in VisionAttnBackbone("test_resnet").train().modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def test_layer_ids_follow_stages_and_blocks():
    """Stage and block come from the network's timm group_matcher (ConvNeXt rule on top)."""
    net = _tiny(out_norm="layernorm2d")
    ids = {n: net.layer_id(n, num_layers=12) for n, _ in net.named_parameters()}
    assert ids["body.stem_0.weight"] == 0
    assert net.layer_id("body.stem_0.weight", 12, rule="ffnet") == 13
    assert ids["body.stages_0.blocks.0.conv_dw.weight"] == 1
    assert ids["body.stages_1.downsample.1.weight"] == 2
    assert ids["body.stages_1.blocks.0.conv_dw.weight"] == 2
    assert ids["body.stages_3.blocks.0.conv_dw.weight"] == 12
    assert ids["out_norms.0.weight"] == 13
    with pytest.raises(ValueError, match="rule"):
        net.layer_id("body.stem_0.weight", 12, rule="swin")


def test_layer_ids_of_a_deep_stage_and_the_ffnet_rule():
    # BiFormer-T: stage 2 has 8 blocks; it advances one layer every 3 blocks (ConvNeXt rule).
    net = VisionAttnBackbone("biformer_tiny")
    assert net.layer_id("body.stages_2.downsample.0.weight", 12) == 3
    assert net.layer_id("body.stages_2.blocks.7.mlp.fc1.weight", 12) == 5
    # FFNet's official grouping: patch merging is block 0 of its stage, so block j counts as j + 1.
    assert net.layer_id("body.stages_2.downsample.0.weight", 12, rule="ffnet") == 3
    assert net.layer_id("body.stages_2.blocks.1.mlp.fc1.weight", 12, rule="ffnet") == 3
    assert net.layer_id("body.stages_2.blocks.2.mlp.fc1.weight", 12, rule="ffnet") == 4
    assert net.layer_id("body.stages_2.blocks.2.mlp.fc1.weight", 12) == 3
    # ViTs: one ordinal per block
    vit = VisionAttnBackbone("vit_small_patch16_224_gqa", out_indices=(11,))
    assert vit.layer_id("body.model.patch_embed.proj.weight", 12) == 0
    assert vit.layer_id("body.model.blocks.4.attn.qkv.weight", 12) == 5


def test_layer_ids_need_a_group_matcher():
    net = VisionAttnBackbone("test_resnet")
    assert net.layer_id("body.conv1.0.weight", 12) == 0  # timm's ResNet matcher: stem
    net.model_name = "no_matcher"
    net._matcher = None
    with mock.patch("visionattn.engine.mm_backbone.create_model", return_value=torch.nn.Linear(2, 2)):
        with pytest.raises(ValueError, match="group_matcher"):
            net.layer_id("body.conv1.0.weight", 12)


@pytest.mark.parametrize("name,model_kwargs,feature_kwargs", [
    ("biformer_tiny", dict(n_win=8), dict(out_norm=True)),
    ("ffnet_1", {}, dict(stage_norm=True)),
])
def test_imagenet_checkpoint_into_dense_backbone(tmp_path, name, model_kwargs, feature_kwargs):
    """Classification weights (no per-stage norms) load strictly; only the dense-only norms keep their init."""
    if not timm.is_model(name):
        pytest.skip(f"backbone {name!r} is not registered in this checkout")
    full = timm.create_model(name, **model_kwargs)
    torch.save(full.state_dict(), tmp_path / "in1k.pth")
    net = VisionAttnBackbone(name, checkpoint=str(tmp_path / "in1k.pth"), model_kwargs=model_kwargs,
                             feature_kwargs=feature_kwargs)
    net.init_weights()
    source = full.state_dict()
    loaded = kept = 0
    for key, value in net.body.state_dict().items():
        plain = key[len("model."):] if key.startswith("model.") else key
        if plain in source:
            torch.testing.assert_close(value, source[plain], rtol=0, atol=0)
            loaded += 1
        else:
            assert "norm" in plain and (value == 0).all() or (value == 1).all(), key
            kept += 1
    assert loaded > 100 and kept == 8  # 4 stages x (weight, bias)
    with pytest.raises(ValueError, match="both"):
        VisionAttnBackbone(name, model_kwargs=dict(feature_kwargs), feature_kwargs=feature_kwargs)
