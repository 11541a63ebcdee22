"""Every detection config builds, trains one iteration and runs inference + COCO metric on the sample set."""
import math

import pytest
import timm

pytest.importorskip("mmdet", reason="the det extra (mmdet) is not installed")

# A 0.2M-parameter timm ConvNeXt stands in for the real backbone in the plumbing tests.
TINY = {"model.backbone.model_name": "test_convnext", "model.backbone.model_kwargs": dict(_delete_=True, drop_path_rate=0.1),
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
    _, scalars = run_config(f"det/{config}", samples_root / "coco", cfg_options=TINY)
    _check(scalars, metric)
