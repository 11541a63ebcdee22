"""The GQA up-training recipes: every one parses; one trains 2 iterations on the CIFAR-100 samples."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs" / "classification" / "gqa").glob("vit_b_*.py"))
TINY_NET = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_kv_heads=2)


def test_all_recipes_present_and_paper_settings():
    names = {p.stem for p in RECIPES}
    for attn in ("gqa", "kdgqa", "dgqa", "pgqa"):
        for ds in ("cifar10", "cifar100", "food101", "tiny_imagenet"):
            assert f"vit_b_{attn}_{ds}" in names
    for path in RECIPES:
        cfg = Config.fromfile(str(path))
        assert cfg.model.network.startswith("vit_base_patch16_224_") and cfg.model.pretrained
        assert cfg.optim_wrapper.optimizer.lr == 1e-5 and cfg.train_cfg.max_epochs == 5
        assert cfg.train_dataloader.batch_size == 32 and cfg.model.data_preprocessor.mean == (0.5, 0.5, 0.5)


def test_dgqa_recipe_trains_two_iterations(samples_root, tmp_path):
    from visionattn.engine import build_runner, load_config

    options = {
        "model.pretrained": False,
        "model.network_kwargs": dict(TINY_NET, dgqa_mode="ema", window=300),
        "train_dataloader.dataset.root": str(samples_root / "cifar100"),
        "val_dataloader.dataset.root": str(samples_root / "cifar100"),
        "test_dataloader.dataset.root": str(samples_root / "cifar100"),
        "train_dataloader.dataset.transform.input_size": 32,
        "val_dataloader.dataset.transform.input_size": 32,
        "train_dataloader.batch_size": 6, "train_dataloader.num_workers": 0,
        "val_dataloader.batch_size": 6, "val_dataloader.num_workers": 0,
        "train_cfg.max_epochs": 1,
    }
    cfg = load_config(str(REPO / "configs/classification/gqa/vit_b_dgqa_cifar100.py"), work_dir=str(tmp_path), cfg_options=options)
    runner = build_runner(cfg)
    runner.train()
    attn = runner.model.network.blocks[0].attn
    assert int(attn.num_steps) == 2  # the module counted the 2 training steps (12 images / 6)
    assert attn.key_norm_stat.abs().sum() > 0  # re-allocated at the first step
    saved = torch.load(tmp_path / "epoch_1.pth", map_location="cpu", weights_only=False)["state_dict"]
    assert int(saved["network.blocks.0.attn.num_steps"]) == 2
    assert torch.equal(saved["network.blocks.1.attn.group_sizes_now"], runner.model.network.blocks[1].attn.group_sizes_now)
