"""The BiFormer ImageNet recipes: the exact config files, shrunk in batch/size only, train 2 iterations."""
import math
import os
from pathlib import Path

import pytest
from mmengine.config import Config

from visionattn.engine.launch import build_runner, load_config

CONFIGS = Path(os.environ.get("BIFORMER_CONFIGS", Path(__file__).resolve().parents[2] / "configs" / "classification"))


@pytest.mark.parametrize("name,network,drop_path", [("biformer_t", "biformer_tiny", 0.1),
                                                    ("biformer_s", "biformer_small", 0.15),
                                                    ("biformer_b", "biformer_base", 0.1)])
def test_recipe_is_the_paper_recipe(name, network, drop_path):
    cfg = Config.fromfile(str(CONFIGS / f"{name}.py"))
    assert cfg.model.network == network and cfg.model.network_kwargs.drop_path_rate == drop_path
    opt = cfg.optim_wrapper.optimizer
    assert opt.type == "AdamW" and opt.lr == pytest.approx(5e-4 * 1024 / 512) and opt.weight_decay == 0.05
    assert cfg.train_cfg.max_epochs == 300 and cfg.model.label_smoothing == 0.1
    assert cfg.model.mixup.mixup_alpha == 0.8 and cfg.model.mixup.cutmix_alpha == 1.0
    assert cfg.train_dataloader.dataset.transform.auto_augment.startswith("rand-m9")


@pytest.mark.slow  # builds the full BiFormer-S + EMA copy: ~1 min of CPU
def test_biformer_s_recipe_trains_two_iterations(samples_root, tmp_path):
    cfg = load_config(str(CONFIGS / "biformer_s.py"), work_dir=str(tmp_path), cfg_options={
        "train_dataloader.batch_size": 2, "train_dataloader.num_workers": 0,
        "train_dataloader.dataset.root": str(samples_root / "imagenet"),
        "train_dataloader.dataset.transform.input_size": 64,
        "val_dataloader.dataset.root": str(samples_root / "imagenet"), "val_dataloader.num_workers": 0,
        "test_dataloader.dataset.root": str(samples_root / "imagenet"), "test_dataloader.num_workers": 0,
        # two iterations instead of 300 epochs, no validation pass
        "train_cfg": dict(_delete_=True, type="IterBasedTrainLoop", max_iters=2, val_interval=100),
    })
    runner = build_runner(cfg)
    runner.train()
    assert runner.iter == 2
    loss = runner.message_hub.get_scalar("train/loss").current()
    assert math.isfinite(loss) and 0 < loss < 20
