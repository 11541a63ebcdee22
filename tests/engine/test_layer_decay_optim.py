"""LayerDecayOptimWrapperConstructor: lr scales per backbone layer, no weight decay on 1-D params."""
import pytest
import torch.nn as nn

pytest.importorskip("mmdet", reason="the det extra (mmdet) is not installed")

from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS  # noqa: E402

import visionattn.engine.layer_decay_optim  # noqa: E402,F401
from visionattn.models.backbones.mm_backbone_mm import VisionAttnBackbone  # noqa: E402


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
