"""LayerDecayOptimWrapperConstructor: lr scales per backbone layer, no weight decay on 1-D params."""
import pytest
import torch.nn as nn

pytest.importorskip("mmdet", reason="the det extra (mmdet) is not installed")

from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS  # noqa: E402

import visionattn.engine.layer_decay_optim  # noqa: E402,F401
from visionattn.engine.mm_backbone import VisionAttnBackbone  # noqa: E402


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = VisionAttnBackbone("test_convnext", out_norm="layernorm2d")
        self.head = nn.Conv2d(64, 8, 1)


def _build(paramwise_cfg, model=None):
    model = model or _Detector()
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type="LayerDecayOptimWrapperConstructor",
        optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.05)),
        paramwise_cfg=paramwise_cfg))
    return model, constructor(model).optimizer


def test_lr_scale_and_weight_decay_per_parameter():
    model, opt = _build(dict(decay_rate=0.8, num_layers=12))
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))

    def check(param, layer, decay):
        g = group_of[id(param)]
        assert g["lr"] == pytest.approx(1e-4 * 0.8 ** (13 - layer))
        assert g["weight_decay"] == (0.05 if decay else 0.0)

    body = model.backbone.body
    check(body.stem_0.weight, 0, True)
    check(body.stem_0.bias, 0, False)
    check(body.stages_0.blocks[0].conv_dw.weight, 1, True)
    check(body.stages_3.blocks[0].mlp.fc1.weight, 12, True)
    check(model.backbone.out_norms[0].weight, 13, False)
    check(model.head.weight, 13, True)


def test_bad_paramwise_cfg_and_model():
    with pytest.raises(ValueError, match="decay_rate"):
        _build(dict(num_layers=12))
    with pytest.raises(ValueError, match="layer_id"):
        _build(dict(decay_rate=0.9, num_layers=12), model=nn.Sequential(nn.Linear(2, 2)))


def _official_ffnet_layer_id(name: str, num_layers: int) -> int:
    """The official FFNet constructor's grouping, on official parameter names (``backbone.stages.S.B...``,
    patch merging at B = 0 of stages 1-3; anything not under ``backbone.stages`` gets the heads' id)."""
    parts = name.split(".")
    if name.startswith("backbone.stages."):
        stage, block = int(parts[2]), int(parts[3])
        return {0: 1, 1: 2, 2: 3 + block // 3}.get(stage, num_layers)
    return num_layers + 1


def test_ffnet_rule_matches_the_official_grouping():
    import re

    import timm

    if not timm.is_model("ffnet_2"):
        pytest.skip("backbone 'ffnet_2' is not registered in this checkout")
    net = VisionAttnBackbone("ffnet_2", feature_kwargs=dict(stage_norm=True))
    checked = 0
    for name, _ in net.named_parameters():
        key = name[len("body.model."):] if name.startswith("body.model.") else name
        m = re.match(r"stages\.(\d+)\.(downsample|blocks\.(\d+))", key)
        if m:  # our layout -> the official one
            stage = int(m.group(1))
            block = 0 if m.group(2) == "downsample" else int(m.group(3)) + (stage > 0)
            official = f"backbone.stages.{stage}.{block}.w"
        else:
            official = f"backbone.{key}"
        assert net.layer_id(name, 12, rule="ffnet") == _official_ffnet_layer_id(official, 12), name
        checked += 1
    assert checked > 500
