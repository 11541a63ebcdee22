"""FFNet recipes: the paper's settings are in the configs, and two training iterations run on the samples."""
from pathlib import Path

import pytest
import torch

from visionattn.engine import build_runner, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "classification"


@pytest.mark.parametrize("name, dpr, mixup, crop", [
    ("ffnet_1", 0.1, 0.2, 0.9), ("ffnet_2", 0.15, 0.2, 0.9), ("ffnet_3", 0.35, 0.8, 0.95), ("ffnet_4", 0.4, 0.8, 0.95),
])
def test_recipe_settings(name, dpr, mixup, crop):
    cfg = load_config(str(CONFIGS / f"{name}.py"))
    assert cfg.model.network == name and cfg.model.network_kwargs.drop_path_rate == dpr
    assert cfg.model.mixup.mixup_alpha == mixup and cfg.model.mixup.cutmix_alpha == 1.0
    assert cfg.val_dataloader.dataset.transform.crop_pct == crop
    assert cfg.train_dataloader.dataset.transform.input_size == 256
    assert cfg.optim_wrapper.optimizer.lr == 1e-3 and cfg.train_dataloader.batch_size * 8 == 1024
    assert cfg.train_cfg.max_epochs == 320
    ema = [h for h in cfg.custom_hooks if h.type == "EMAHook"]
    assert len(ema) == 1 and abs(1 - ema[0].momentum - 0.9995) < 1e-12


def _two_iterations(cfg, tmp_path, samples_root):
    root = str(samples_root / "imagenet")
    cfg.work_dir = str(tmp_path)
    cfg.model.num_classes = 8
    cfg.train_dataloader.update(batch_size=4, num_workers=0)
    cfg.train_dataloader.dataset.update(root=root)
    cfg.train_dataloader.dataset.transform.update(input_size=64, auto_augment=None)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=2, val_interval=1000)
    cfg.param_scheduler = []
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=1000)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=1)
    cfg.custom_hooks = [h for h in cfg.custom_hooks if h.type == "EMAHook"]
    cfg.log_processor = dict(by_epoch=False)
    runner = build_runner(cfg)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    after = runner.model.state_dict()
    assert runner.iter == 2
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("head.weight"))
    return runner


def test_ffnet_1_trains_two_iterations_on_the_samples(tmp_path, samples_root):
    _two_iterations(load_config(str(CONFIGS / "ffnet_1.py")), tmp_path, samples_root)


def test_ffnet_1_distill_trains_two_iterations_with_a_teacher(tmp_path, samples_root):
    cfg = load_config(str(CONFIGS / "ffnet_1_distill.py"))
    assert cfg.model.type == "DistilledImageClassifier" and cfg.model.teacher == "regnety_160.deit_in1k"
    assert cfg.model.network_kwargs.drop_path_rate == 0.02 and cfg.model.distillation_type == "hard"
    cfg.model.update(teacher="resnet10t", teacher_pretrained=False)  # offline stand-in for RegNetY-160
    runner = _two_iterations(cfg, tmp_path, samples_root)
    assert not any("teacher" in k for k in runner.model.state_dict())  # the teacher is not checkpointed


@pytest.mark.parametrize("name", ["ffnet_1", "ffnet_2", "ffnet_3", "ffnet_4", "ffnet_1_distill", "ffnet_2_distill",
                                  "ffnet_3_distill"])
def test_recipes_sync_batchnorm_when_distributed(name):
    """FFNet has BatchNorm: its ImageNet recipes ask mmengine's Runner for SyncBN (``cfg.sync_bn``)."""
    assert load_config(str(CONFIGS / f"{name}.py")).sync_bn == "torch"


def test_sync_bn_keeps_the_checkpoint_keys_and_is_dropped_on_cpu_ddp():
    from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm

    import visionattn

    net = visionattn.create_model("ffnet_1")
    keys = list(net.state_dict())
    synced = convert_sync_batchnorm(net, "torch")  # what the Runner does under DDP
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    assert list(synced.state_dict()) == keys  # DDP checkpoints load into plain BatchNorm
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in revert_sync_batchnorm(synced).modules())
    if not torch.cuda.is_available():  # gloo CPU runs: torch's SyncBatchNorm would refuse CPU tensors
        with pytest.warns(UserWarning, match="sync_bn='torch' is ignored"):
            cfg = load_config(str(CONFIGS / "ffnet_1.py"), launcher="pytorch")
        assert cfg.sync_bn is None
