"""tools/train.py and tools/test.py in-process on the sample data (a few iterations)."""
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def train(load_tool):
    return load_tool("train")


@pytest.fixture
def test(load_tool):
    return load_tool("test")


def test_train_then_test(train, test, tiny_config, tmp_path):
    cfg = tiny_config("train_cfg = dict(max_iters=3, val_interval=3)\n"
                      "default_hooks = dict(checkpoint=dict(interval=3))\n")
    work = tmp_path / "work"
    train.main([str(cfg), "--work-dir", str(work)])
    ckpt = work / "iter_3.pth"
    assert ckpt.is_file() and (work / "training_curves.png").is_file()
    state = torch.load(ckpt)  # weights_only load works (safe globals registered)
    assert state["meta"]["iter"] == 3 and "network.fc.weight" in state["state_dict"]
    assert state["meta"]["dataset_meta"]["classes"][0] == "bar_orange"
    metrics = test.main([str(cfg), str(ckpt), "--work-dir", str(tmp_path / "test")])
    assert 0 <= metrics["accuracy/top1"] <= 100 and metrics["accuracy/top5"] >= metrics["accuracy/top1"]


def test_deit_recipe_trains(train, tmp_path, samples_root):
    """The DeiT-style _base_ recipe (mixup, cutmix, smoothing, RandAugment, erasing, EMA, AdamW+cosine)."""
    base = REPO / "configs" / "_base_"
    cfg = tmp_path / "deit_tiny_test.py"
    root = str(samples_root / "imagenet")
    cfg.write_text(
        f"_base_ = [{str(base / 'models/deit.py')!r}, {str(base / 'datasets/imagenet.py')!r},\n"
        f"          {str(base / 'schedules/imagenet_300e.py')!r}, {str(base / 'runtime/default.py')!r}]\n"
        "model = dict(network='test_vit', num_classes=8, network_kwargs=dict(img_size=32))\n"
        f"train_dataloader = dict(batch_size=4, num_workers=0, dataset=dict(root={root!r}, transform=dict(input_size=32)))\n"
        f"val_dataloader = dict(batch_size=40, num_workers=0, dataset=dict(root={root!r}, transform=dict(input_size=32)))\n"
        "test_dataloader = val_dataloader\n"
        "train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2, val_interval=2)\n"
        "default_hooks = dict(checkpoint=dict(by_epoch=False, interval=2))\n")
    work = tmp_path / "work"
    train.main([str(cfg), "--work-dir", str(work)])
    state = torch.load(work / "iter_2.pth")
    assert "ema_state_dict" in state  # EMAHook
    # AdamW: weight decay 0.05 on weight matrices, none on norms, biases, pos_embed, cls_token
    assert {g["weight_decay"] for g in state["optimizer"]["param_groups"]} == {0.0, 0.05}


def test_missing_dataset_root_is_a_clear_error(train, tiny_config, tmp_path, capsys):
    cfg = tiny_config()
    missing = tmp_path / "nowhere"
    assert train.main([str(cfg), "--work-dir", str(tmp_path / "w"), "--cfg-options",
                       f"train_dataloader.dataset.root={missing}"]) == 2
    err = capsys.readouterr().err
    assert "datasets/README.md" in err and str(missing / "train") in err and "Traceback" not in err


def test_cli_errors(train, test, tiny_config, tmp_path, capsys):
    assert train.main(["configs/no_such_config.py"]) == 2
    assert "configs/" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert train.main([str(tiny_config()), "--amp", "--work-dir", str(tmp_path / "w")]) == 2
        assert "--amp" in capsys.readouterr().err
    assert test.main([str(tiny_config()), str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="missing.pth"):  # --debug: the exception itself
        test.main([str(tiny_config()), str(tmp_path / "missing.pth"), "--debug"])


def test_deferred_scalars_match_mmengine(train, tiny_config, tmp_path):
    """tools/train.py reads the loss terms off the device only when something needs them; the logged
    history and the checkpoint's message hub equal those of mmengine's RuntimeInfoHook."""
    from mmengine.hooks import RuntimeInfoHook
    from visionattn.engine.hooks import DeferredRuntimeInfoHook

    common = ("train_cfg = dict(max_iters=6, val_interval=100)\n"
              "default_hooks = dict(checkpoint=dict(interval=5, max_keep_ckpts=3), logger=dict(interval=4){})\n")
    history, hooks = {}, {}
    for name, extra in (("deferred", ""), ("mmengine", ", runtime_info=dict(type='mmengine.RuntimeInfoHook')")):
        work = tmp_path / name
        runner = train.main([str(tiny_config(common.format(extra), name=f"{name}.py")), "--work-dir", str(work)])
        hooks[name] = [type(h) for h in runner.hooks]
        # iteration 5's checkpoint was written between two of the logger's flushes (iterations 4 and 8)
        hub = torch.load(work / "iter_5.pth")["message_hub"]
        history[name] = {k: list(v.data[0]) for k, v in hub["log_scalars"].items() if k.startswith("train/loss")}
    assert DeferredRuntimeInfoHook in hooks["deferred"] and RuntimeInfoHook in hooks["mmengine"]
    assert DeferredRuntimeInfoHook not in hooks["mmengine"]
    assert len(history["deferred"]["train/loss"]) == 5
    assert history["deferred"] == history["mmengine"]
