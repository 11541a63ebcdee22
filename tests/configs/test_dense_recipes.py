"""The detection/segmentation configs state the official recipes (parsed only: no model is built)."""
from pathlib import Path

import pytest

pytest.importorskip("mmseg", reason="the det extra (mmdet, mmsegmentation) is not installed")

from mmengine.config import Config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# config: (backbone, n_win, drop path, optimiser lr, weight decay, epochs or iterations, batch per GPU)
RECIPES = {
    "detection/retinanet_biformer_s_1x_coco.py": ("biformer_small", 16, 0.2, 1e-4, 1e-4, 12, 2),
    "detection/retinanet_biformer_b_1x_coco.py": ("biformer_base", 16, 0.3, 1e-4, 1e-4, 12, 2),
    "detection/maskrcnn_biformer_s_1x_coco.py": ("biformer_small", 16, 0.2, 1e-4, 0.05, 12, 2),
    "detection/maskrcnn_biformer_b_1x_coco.py": ("biformer_base", 16, 0.3, 1e-4, 0.05, 12, 2),
    "detection/cascade_maskrcnn_ffnet_2_3x_coco.py": ("ffnet_2", None, 0.35, 1e-4, 0.05, 36, 2),
    "detection/cascade_maskrcnn_ffnet_3_3x_coco.py": ("ffnet_3", None, 0.6, 1e-4, 0.05, 36, 2),
    "segmentation/upernet_biformer_s_160k_ade20k.py": ("biformer_small", 8, 0.3, 6e-5, 0.01, 160000, 2),
    "segmentation/upernet_biformer_b_160k_ade20k.py": ("biformer_base", 8, 0.4, 6e-5, 0.01, 160000, 2),
    "segmentation/sfpn_biformer_s_80k_ade20k.py": ("biformer_small", 8, 0.15, 2e-4, 1e-4, 80000, 4),
    "segmentation/sfpn_biformer_b_80k_ade20k.py": ("biformer_base", 8, 0.3, 2e-4, 1e-4, 80000, 4),
    "segmentation/upernet_ffnet_2_160k_ade20k.py": ("ffnet_2", None, 0.2, 1e-4, 0.05, 160000, 2),
    "segmentation/upernet_ffnet_3_160k_ade20k.py": ("ffnet_3", None, 0.3, 1e-4, 0.05, 160000, 2),
}


def test_every_dense_config_is_listed():
    found = {str(p.relative_to(CONFIGS)) for d in ("detection", "segmentation") for p in (CONFIGS / d).glob("*.py")}
    assert found == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe(name):
    backbone, n_win, dpr, lr, wd, length, batch = RECIPES[name]
    cfg = Config.fromfile(str(CONFIGS / name))
    bb = cfg.model.backbone
    family, arch = backbone.split("_")
    arch = {"small": "small", "base": "base"}.get(arch, arch)
    assert bb.type == {"biformer": "BiFormer", "ffnet": "FFNet"}[family] and bb.arch == arch
    assert bb.out_indices == (0, 1, 2, 3) and bb.get("stage_norm", True)  # per-stage output norms
    assert bb.get("n_win") == n_win and bb.drop_path_rate == dpr
    assert bb.init_cfg == dict(type="Pretrained", checkpoint=f"{backbone}.in1k")  # the zoo's ImageNet weights
    assert cfg.optim_wrapper.optimizer.type == "AdamW"
    assert cfg.optim_wrapper.optimizer.lr == lr and cfg.optim_wrapper.optimizer.weight_decay == wd
    assert cfg.train_dataloader.batch_size == batch
    dataset = cfg.train_dataloader.dataset
    if name.startswith("detection/"):
        assert cfg.train_cfg.max_epochs == length and dataset.data_root == "datasets/coco/"
        assert cfg.val_evaluator.ann_file == "datasets/coco/annotations/instances_val2017.json"
        assert bb.norm_eval == backbone.startswith("biformer")  # BiFormer freezes BN stats, FFNet trains them
    else:
        assert cfg.train_cfg.max_iters == length and dataset.data_root == "datasets/ade20k"
        assert cfg.model.decode_head.num_classes == 150 and cfg.val_evaluator.type == "IoUMetric"
        assert cfg.model.data_preprocessor.size == (512, 512)
    if backbone.startswith("ffnet"):
        decay = {"detection/cascade_maskrcnn_ffnet_2_3x_coco.py": (0.8, 12), "detection/cascade_maskrcnn_ffnet_3_3x_coco.py": (0.8, 12),
                 "segmentation/upernet_ffnet_2_160k_ade20k.py": (1.0, 9), "segmentation/upernet_ffnet_3_160k_ade20k.py": (0.9, 12)}[name]
        assert cfg.optim_wrapper.constructor == "LayerDecayOptimWrapperConstructor"
        assert (cfg.optim_wrapper.paramwise_cfg.decay_rate, cfg.optim_wrapper.paramwise_cfg.num_layers) == decay
