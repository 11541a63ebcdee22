"""Every detection config builds, trains one iteration and runs inference + COCO metric on the sample set."""
import math

import pytest
import timm

pytest.importorskip("mmdet", reason="the det extra (mmdet) is not installed")

# A 0.2M-parameter timm ConvNeXt stands in for the real backbone in the plumbing tests.
TINY = {"model.backbone": dict(_delete_=True, type="VisionAttnBackbone", model_name="test_convnext",
                               model_kwargs=dict(drop_path_rate=0.1)),
        "model.neck.in_channels": [24, 32, 48, 64]}


def _check(scalars, metric):
    losses = {k: v.current() for k, v in scalars.items() if k.startswith("train/loss")}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert f"val/{metric}" in scalars, sorted(scalars)


@pytest.mark.parametrize("config,metric", [
    ("retinanet_biformer_s_1x_coco.py", "coco/bbox_mAP"),
    ("cascade_maskrcnn_ffnet_2_3x_coco.py", "coco/segm_mAP"),
])
def test_plumbing_with_tiny_backbone(run_config, samples_root, config, metric):
    """The recipes' heads, data pipeline and optimiser constructor work around any timm backbone."""
    _, scalars = run_config(f"detection/{config}", samples_root / "coco", cfg_options=TINY)
    _check(scalars, metric)


def _real(config, model_name, metric, slow=False):
    marks = [pytest.mark.skipif(not timm.is_model(model_name),
                                reason=f"backbone {model_name!r} is not registered in this checkout")]
    if slow:
        marks.append(pytest.mark.slow)
    return pytest.param(config, metric, marks=marks, id=config)


@pytest.mark.parametrize("config,metric", [
    _real("maskrcnn_biformer_s_1x_coco.py", "biformer_small", "coco/segm_mAP"),
    _real("cascade_maskrcnn_ffnet_2_3x_coco.py", "ffnet_2", "coco/segm_mAP"),
    _real("retinanet_biformer_s_1x_coco.py", "biformer_small", "coco/bbox_mAP", slow=True),
    _real("retinanet_biformer_b_1x_coco.py", "biformer_base", "coco/bbox_mAP", slow=True),
    _real("maskrcnn_biformer_b_1x_coco.py", "biformer_base", "coco/segm_mAP", slow=True),
    _real("cascade_maskrcnn_ffnet_3_3x_coco.py", "ffnet_3", "coco/segm_mAP", slow=True),
])
def test_config_with_its_backbone(run_config, samples_root, config, metric):
    """The exact recipe (backbone included, random init): one training iteration + inference + COCO metric."""
    _, scalars = run_config(f"detection/{config}", samples_root / "coco")
    _check(scalars, metric)


def test_tools_test_out_and_show_dir(shrunk_config, samples_root, tmp_path):
    """tools/test.py --out --show-dir on a detection recipe (mmdet CocoMetric): predictions file and pictures."""
    from pathlib import Path

    from mmengine.runner import Runner

    from visionattn.cli.test import apply_test_options
    from visionattn.evaluation.dump_predictions import load_predictions

    name = "detection/retinanet_biformer_s_1x_coco.py"
    cfg = shrunk_config(name, samples_root / "coco", cfg_options=TINY)
    assert cfg.test_evaluator.type == "CocoMetric"
    with pytest.raises(ValueError, match="retinanet_biformer_s_1x_coco.py"):  # mmdet's COCO base defines no TTA
        apply_test_options(cfg.copy(), name, tta=True)
    apply_test_options(cfg, name, out=tmp_path / "r.pkl", show_dir=str(tmp_path / "show"), show_score_thr=0.0)
    metrics = Runner.from_cfg(cfg).test()
    assert "coco/bbox_mAP" in metrics
    (pred,) = load_predictions(tmp_path / "r.pkl")
    boxes = pred["pred_instances"]["bboxes"]
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) == len(pred["pred_instances"]["scores"])
    assert [p.stem for p in (tmp_path / "show").glob("*.png")] == [Path(pred["img_path"]).stem]
