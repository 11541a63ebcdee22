"""The LiDAR recipes: the official Waymo numbers, and their datasets and pipelines built on the sample sets."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from visionattn.datasets.lidar import lidar_collate
from visionattn.registry import DATASETS, FUNCTIONS

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "detection3d"


def _load(name):
    return Config.fromfile(str(CONFIGS / name), import_custom_modules=False)


def _moved(node, old, new):
    """``node`` with every string starting with ``old`` (a dataset root) pointed at ``new``."""
    if isinstance(node, dict):
        return {k: _moved(v, old, new) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_moved(v, old, new) for v in node)
    return str(new) + node[len(old):] if isinstance(node, str) and node.startswith(old) else node


def test_waymo_recipe_is_the_official_one():
    cfg = _load("scatterformer_waymo.py")
    opt = cfg.optim_wrapper
    assert opt.optimizer.type == "AdamW" and opt.optimizer.lr == 0.006 and opt.optimizer.weight_decay == 0.05
    assert opt.clip_grad.max_norm == 10
    onecycle = cfg.param_scheduler[0]
    assert (onecycle.type, onecycle.eta_max, onecycle.pct_start, onecycle.div_factor, onecycle.end) == \
        ("OneCycleLR", 0.006, 0.1, 100, 24)
    assert cfg.train_cfg.max_epochs == 24 and cfg.custom_hooks == [dict(type="GTSamplingOffHook", last_epochs=4)]
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert pipeline[0].type == "GTSampling" and pipeline[0].sample_groups == dict(Vehicle=15, Pedestrian=10, Cyclist=10)
    assert [t.type for t in pipeline[1:5]] == ["RandomWorldFlip", "GlobalRotation", "GlobalScaling", "GlobalTranslation"]
    assert cfg.model.network.name == "scatterformer_waymo" and cfg.train_dataloader.collate_fn.type == "lidar_collate"
    assert cfg.train_dataloader.persistent_workers is False
    assert [t.type for t in cfg.val_dataloader.dataset.pipeline] == ["PointsRangeFilter"]  # no randomness in eval


@pytest.mark.parametrize("name,old,sample", [("scatterformer_waymo.py", "datasets/waymo", "waymo"),
                                             ("scatterformer_kitti.py", "datasets/kitti3d", "kitti3d"),
                                             ("scatterformer_synthetic_demo.py", "datasets/samples/kitti3d", "kitti3d")])
def test_recipe_datasets_build_on_the_samples(name, old, sample, samples_root):
    cfg = _load(name)
    for key in ("train_dataloader", "val_dataloader"):
        loader = _moved(cfg[key].to_dict(), old, samples_root / sample)
        dataset = DATASETS.build(loader["dataset"])
        frames = [dataset[i] for i in range(2)]
        batch = FUNCTIONS.get(loader["collate_fn"]["type"])(frames)
        assert batch["inputs"]["batch_size"] == 2 and batch["inputs"]["points"].shape[1] == 1 + frames[0]["points"].shape[1]
        assert all(s["gt_boxes"].dtype == torch.float32 for s in batch["data_samples"])
    assert FUNCTIONS.get("lidar_collate") is lidar_collate


def test_the_hook_finds_the_recipes_gt_sampling(samples_root):
    from visionattn.engine.hooks.gt_sampling_off import gt_sampling_transforms

    cfg = _load("scatterformer_synthetic_demo.py")
    dataset = DATASETS.build(_moved(cfg.train_dataloader.dataset.to_dict(), "datasets/samples/kitti3d",
                                    samples_root / "kitti3d"))
    found = gt_sampling_transforms(dataset)
    assert len(found) == 1 and found[0].enabled and found[0] is dataset.pipeline.transforms[0]
