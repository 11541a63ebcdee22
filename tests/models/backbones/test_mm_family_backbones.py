"""BiFormer / FFNet / GQAViT as mmdet/mmseg backbones by family name: arch, frozen_stages, init_cfg."""
import pytest
import timm

import torch

pytest.importorskip("mmdet", reason="the det extra (mmdet) is not installed")

from visionattn.engine.mm_backbone import BiFormer, FFNet, GQAViT, VisionAttnBackbone  # noqa: E402


def _biformer(**kwargs):
    """BiFormer-T's layout with one or two blocks per stage (the code paths of the full network, in seconds)."""
    return BiFormer(arch="tiny", n_win=2, depths=(1, 1, 2, 1), topks=(1, 2, 4, -1), **kwargs)


def test_family_names_in_mmdet_and_mmseg():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    for registry in (DET, SEG):
        for cfg, cls, name in [(dict(type="BiFormer", arch="tiny", n_win=2, depths=(1, 1, 1, 1)), BiFormer,
                                "biformer_tiny"),
                               (dict(type="FFNet", arch="1", depths=(1, 1, 1, 1)), FFNet, "ffnet_1"),
                               (dict(type="GQAViT", arch="small", attention="kdgqa", depth=2, out_indices=(1,)), GQAViT,
                                "vit_small_patch16_224_kdgqa")]:
            net = registry.build(cfg)
            assert type(net) is cls and net.model_name == name
    with pytest.raises(ValueError, match="arch='huge'"):
        BiFormer(arch="huge")
    with pytest.raises(ValueError, match="attention='flash'"):
        GQAViT(attention="flash")


def test_outputs_stage_norm_and_drop_path():
    net = _biformer(drop_path_rate=0.1).eval()
    feats = net(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    assert any("out_norm" in n or "norm" in n.split(".")[-2] for n, _ in net.named_parameters())
    rates = [m.drop_prob for m in net.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.1)
    vit = GQAViT(arch="small", depth=4, out_indices=(1, 3)).eval()  # any size: dynamic_img_size
    assert [tuple(f.shape) for f in vit(torch.randn(1, 3, 96, 64))] == [(1, 384, 6, 4)] * 2


@pytest.mark.parametrize("make,frozen_prefixes,trained_prefix", [
    (lambda: _biformer(frozen_stages=1), ("body.model.stem.", "body.model.stages.0."), "body.model.stages.1."),
    (lambda: FFNet(arch="1", depths=(1, 1, 1, 1), frozen_stages=0), ("body.model.stem.",), "body.model.stages.0."),
    (lambda: GQAViT(arch="small", depth=4, out_indices=(1, 3), frozen_stages=2), ("body.model.patch_embed.", "body.model.blocks.0.",
                                                     "body.model.blocks.1.", "body.model.cls_token",
                                                     "body.model.pos_embed"),
     "body.model.blocks.2."),
])
def test_frozen_stages(make, frozen_prefixes, trained_prefix):
    net = make().train()
    params = dict(net.named_parameters())
    frozen = {n for n, p in params.items() if not p.requires_grad}
    assert frozen == {n for n in params if n.startswith(frozen_prefixes)}
    assert all(p.requires_grad for n, p in params.items() if n.startswith(trained_prefix))
    # frozen modules stay in eval mode through train(); the others train
    for name, module in net.named_modules():
        if name.startswith(tuple(p.rstrip(".") for p in frozen_prefixes if not p.endswith("token"))):
            assert not module.training, name
        elif name.startswith(trained_prefix.rstrip(".")):
            assert module.training, name
    out = net(torch.randn(1, 3, 64, 64))
    sum(o.float().mean() for o in out).backward()
    assert all(params[n].grad is None for n in frozen)
    assert any(p.grad is not None for n, p in params.items() if n.startswith(trained_prefix))


def test_bad_frozen_stages_and_init_cfg():
    with pytest.raises(ValueError, match="frozen_stages=-2"):
        _biformer(frozen_stages=-2)
    with pytest.raises(ValueError, match="Kaiming"):
        _biformer(init_cfg=dict(type="Kaiming"))
    with pytest.raises(ValueError, match="map"):
        _biformer(init_cfg=dict(type="Pretrained", checkpoint="x.pth", map="cpu"))


def test_init_cfg_wrong_path_raises():
    net = _biformer(init_cfg=dict(type="Pretrained", checkpoint="/nonexistent/biformer_tiny.pth"))
    with pytest.raises(FileNotFoundError, match="/nonexistent/biformer_tiny.pth"):
        net.init_weights()
    with pytest.raises(ValueError, match="zoo entry for 'ffnet_1'"):  # a zoo name of another network
        _biformer(init_cfg=dict(type="Pretrained", checkpoint="ffnet_1.in1k")).init_weights()


def test_init_cfg_pretrained_loads_the_file(tmp_path):
    full = timm.create_model("biformer_tiny", n_win=2, depths=(1, 1, 2, 1), topks=(1, 2, 4, -1))
    with torch.no_grad():
        for p in full.parameters():
            p.normal_()
    torch.save({"state_dict": full.state_dict()}, tmp_path / "in1k.pth")
    net = _biformer(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "in1k.pth")))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.init_weights()
    after = net.state_dict()
    ref = full.state_dict()
    params = [k for k, _ in net.named_parameters() if "out_norm" not in k]
    assert params and all(not torch.equal(before[k], after[k]) for k in params)  # every weight changed
    for key, value in after.items():
        if "out_norm" not in key:  # the dense-only output norms keep their init
            torch.testing.assert_close(value, ref[key.replace("body.model.", "", 1)])
    assert net.is_init


def test_init_cfg_prefix_loads_a_detector_checkpoint(tmp_path):
    src = _biformer().eval()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    torch.save({"state_dict": {**{f"backbone.{k}": v for k, v in src.state_dict().items()},
                               "neck.conv.weight": torch.zeros(1)}}, tmp_path / "det.pth")
    net = _biformer(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "det.pth"), prefix="backbone."))
    net.init_weights()
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(net.eval()(x), src(x)):
        torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError, match="prefix 'detector.'"):
        _biformer(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "det.pth"),
                                prefix="detector.")).init_weights()


def test_detector_init_weights_reaches_the_backbone(tmp_path):
    """mmdet's model.init_weights() (what the Runner calls) applies the backbone's init_cfg."""
    from mmdet.registry import MODELS

    cfg = dict(type="RetinaNet",
               data_preprocessor=dict(type="DetDataPreprocessor"),
               backbone=dict(type="BiFormer", arch="tiny", n_win=2, depths=(1, 1, 1, 1),
                             init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "missing.pth"))),
               neck=dict(type="FPN", in_channels=[64, 128, 256, 512], out_channels=32, num_outs=5,
                         start_level=1, add_extra_convs="on_input"),
               bbox_head=dict(type="RetinaHead", num_classes=2, in_channels=32, feat_channels=32,
                              anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                                    scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                                                    strides=[8, 16, 32, 64, 128]),
                              bbox_coder=dict(type="DeltaXYWHBBoxCoder")))
    import mmdet.models  # noqa: F401  (registers RetinaNet)
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet")
    model = MODELS.build(cfg)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        model.init_weights()


def test_layer_decay_with_family_backbone():
    import torch.nn as nn
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    import visionattn.engine.layer_decay_optim  # noqa: F401

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = _biformer(frozen_stages=0)
            self.head = nn.Linear(4, 4)

    model = Detector()
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type="LayerDecayOptimWrapperConstructor",
        optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.05)),
        paramwise_cfg=dict(decay_rate=0.5, num_layers=6)))
    groups = constructor(model).optimizer.param_groups
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    body = model.backbone.body.model
    assert id(body.stem[0].weight) not in lr_of  # frozen: not given to the optimiser
    assert lr_of[id(body.stages[1].blocks[0].mlp.fc1.weight)] == pytest.approx(1e-4 * 0.5 ** (7 - 2))
    assert lr_of[id(body.stages[3].blocks[0].mlp.fc1.weight)] == pytest.approx(1e-4 * 0.5 ** 1)
    assert lr_of[id(model.head.weight)] == pytest.approx(1e-4)
    assert isinstance(model.backbone, VisionAttnBackbone)


def test_mmdet_decay_type_settings():
    """mmdet's LearningRateDecayOptimizerConstructor paramwise_cfg works with our constructor."""
    import torch.nn as nn
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    import visionattn.engine.layer_decay_optim  # noqa: F401

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = _biformer()

    def lrs(**paramwise_cfg):
        model = Detector()
        constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
            type="LayerDecayOptimWrapperConstructor",
            optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1.0)),
            paramwise_cfg=paramwise_cfg))
        lr_of = {id(p): g["lr"] for g in constructor(model).optimizer.param_groups for p in g["params"]}
        body = model.backbone.body.model
        return [lr_of[id(p)] for p in (body.stem[0].weight, body.stages[3].blocks[0].mlp.fc1.weight)]

    assert lrs(decay_rate=0.5, num_layers=6, decay_type="layer_wise") == lrs(decay_rate=0.5, num_layers=6)
    assert lrs(decay_rate=0.5, num_layers=6) == [pytest.approx(0.5 ** 7), pytest.approx(0.5 ** 1)]  # stage 3 -> 6
    stem, stage3 = lrs(decay_rate=0.5, num_layers=6, decay_type="stage_wise")
    assert (stem, stage3) == (pytest.approx(0.5 ** 7), pytest.approx(0.5 ** (7 - 4)))  # stem 0, stage 3 -> 4
    with pytest.raises(ValueError, match="decay_type='block_wise'"):
        lrs(decay_rate=0.5, num_layers=6, decay_type="block_wise")
