"""Every segmentation config builds, trains one iteration and runs inference + mIoU on the ADE20K sample set."""
import math

import pytest
import timm

pytest.importorskip("mmseg", reason="the det extra (mmsegmentation) is not installed")

# A 0.2M-parameter timm ConvNeXt stands in for the real backbone in the plumbing tests.
TINY_BACKBONE = {"model.backbone": dict(_delete_=True, type="VisionAttnBackbone", model_name="test_convnext",
                                        model_kwargs=dict(drop_path_rate=0.1))}
TINY = {
    "upernet": {**TINY_BACKBONE, "model.decode_head.in_channels": [24, 32, 48, 64],
                "model.auxiliary_head.in_channels": 48},
    "sfpn": {**TINY_BACKBONE, "model.neck.in_channels": [24, 32, 48, 64]},
}


def _check(scalars):
    losses = {k: v.current() for k, v in scalars.items() if k.startswith("train/") and "loss" in k}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    miou = scalars["val/mIoU"].current()
    assert 0.0 <= miou <= 100.0 and "val/aAcc" in scalars


@pytest.mark.parametrize("config", ["upernet_ffnet_2_160k_ade20k.py", "sfpn_biformer_s_80k_ade20k.py"])
def test_plumbing_with_tiny_backbone(run_config, samples_root, config):
    """The recipes' heads, pipeline, optimiser constructor and mmseg IoUMetric work around any timm backbone."""
    _, scalars = run_config(f"segmentation/{config}", samples_root / "ade20k", cfg_options=TINY[config.split("_")[0]])
    _check(scalars)


def _real(config, model_name, slow=False):
    marks = [pytest.mark.skipif(not timm.is_model(model_name),
                                reason=f"backbone {model_name!r} is not registered in this checkout")]
    if slow:
        marks.append(pytest.mark.slow)
    return pytest.param(config, marks=marks, id=config)


@pytest.mark.parametrize("config", [
    _real("upernet_biformer_s_160k_ade20k.py", "biformer_small"),
    _real("upernet_ffnet_2_160k_ade20k.py", "ffnet_2"),
    _real("sfpn_biformer_s_80k_ade20k.py", "biformer_small", slow=True),
    _real("sfpn_biformer_b_80k_ade20k.py", "biformer_base", slow=True),
    _real("upernet_biformer_b_160k_ade20k.py", "biformer_base", slow=True),
    _real("upernet_ffnet_3_160k_ade20k.py", "ffnet_3", slow=True),
])
def test_config_with_its_backbone(run_config, samples_root, config):
    """The exact recipe (backbone included, random init): one training iteration + inference + mIoU."""
    _, scalars = run_config(f"segmentation/{config}", samples_root / "ade20k")
    _check(scalars)


def test_tools_test_options_tta_out_show_dir(shrunk_config, samples_root, tmp_path):
    """tools/test.py --tta --out --show-dir on a segmentation recipe: mmseg's TTA model and pipeline from the
    ADE20K base, mmseg's IoUMetric, the predictions file and one picture per image."""
    from pathlib import Path

    from mmengine.runner import Runner

    from visionattn.cli.test import apply_test_options
    from visionattn.evaluation.dump_predictions import load_predictions

    name = "segmentation/sfpn_biformer_s_80k_ade20k.py"
    cfg = shrunk_config(name, samples_root / "ade20k", cfg_options=TINY["sfpn"])
    assert cfg.test_evaluator.type == "IoUMetric"
    apply_test_options(cfg, name, out=tmp_path / "r.pkl", show_dir="show", tta=True)
    metrics = Runner.from_cfg(cfg).test()
    assert 0.0 <= metrics["mIoU"] <= 100.0 and "aAcc" in metrics
    (pred,) = load_predictions(tmp_path / "r.pkl")
    h, w = pred["ori_shape"]
    assert pred["pred_sem_seg"]["data"].shape == (1, h, w)  # merged over scales/flips, at the image's size
    (picture,) = (tmp_path / "work" / "show").glob("*.png")
    assert picture.stem == Path(pred["img_path"]).stem

