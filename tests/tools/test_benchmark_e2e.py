"""tools/benchmark.py --mode train-e2e on CPU at a tiny size: both figures and the breakdown (timings never asserted)."""
import argparse
import json

import pytest
import torch

from visionattn.cli.benchmark_e2e import e2e_config, recipe_of

TINY = ["test_vit", "--mode", "train-e2e", "--config", "configs/classification/biformer_s.py", "--batch", "2",
        "--shape", "h=32", "w=32", "--model-kwargs", "img_size=32", "--workers", "0", "--device", "cpu"]


def test_train_e2e_reports_step_e2e_and_breakdown(load_tool, capsys, tmp_path):
    tool = load_tool("benchmark")
    rc = tool.main([*TINY, "--warmup", "1", "--iters", "2", "--detail-iters", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    step, e2e = report["results"]
    assert (step["impl"], e2e["impl"]) == ("train-step", "train-e2e")
    assert step["throughput"] > 0 and e2e["throughput"] > 0 and e2e["batch"] == 2
    assert e2e["of_step"] == pytest.approx(e2e["throughput"] / step["throughput"])
    # the recipe's EMA and optimiser ran, on the synthetic set
    assert e2e["config"]["train_dataloader"]["dataset"]["type"] == "SyntheticClassification"
    assert [h["type"] for h in e2e["config"]["custom_hooks"]] == ["EMAHook", "TrainBreakdownHook"]
    assert e2e["config"]["custom_hooks"][0]["ema_type"] == "ForeachExponentialMovingAverage"
    parts = e2e["breakdown"]["parts_ms"]
    for key in ("data_loader_wait", "data_preprocessor", "forward_and_loss", "optimizer.backward",
                "optimizer.step", "hook.EMAHook.after_train_iter", "hook.LoggerHook.after_train_iter", "other"):
        assert key in parts, sorted(parts)
    assert all(v >= 0 for k, v in parts.items() if k != "other")
    assert sum(parts.values()) == pytest.approx(e2e["breakdown"]["ms_per_iter"])
    # the host's own time per part in the end-to-end window: the same parts, adding up to its iteration
    host = e2e["host_breakdown"]
    assert list(host["parts_ms"])[:5] == list(parts)[:5] and "hook.EMAHook.after_train_iter" in host["parts_ms"]
    assert host["iters"] == 2 and host["ms_per_iter"] == pytest.approx(e2e["latency_ms"])
    assert host["parts_ms"]["forward_and_loss"] > 0 and host["parts_ms"]["optimizer.step"] > 0
    assert sum(host["parts_ms"].values()) == pytest.approx(host["ms_per_iter"])
    assert all(v >= 0 for k, v in host["parts_ms"].items() if k != "other")
    assert "train-step" in out and "train-e2e" in out and "optimizer.step" in out and "% of the --mode train step" in out
    assert "host, end to end" in out


def _args(**kw):
    base = dict(dtype="float32", warmup=2, iters=3, detail_iters=1, shape={}, model_kwargs={}, cuda_graph=True,
                batch=4, workers=None, config=None, cfg_options={})
    return argparse.Namespace(**{**base, **kw})


def test_e2e_config_keeps_the_recipe_and_swaps_the_data(tmp_path):
    cfg = e2e_config("matchstereo_tiny", _args(shape={"h": 192, "w": 224}), torch.device("cpu"), str(tmp_path))
    assert cfg.model.type == "StereoMatcher" and cfg.model.network == "matchstereo_tiny"
    assert cfg.model.cuda_graph is False  # CPU runs stay eager
    assert cfg.train_dataloader.dataset.type == "SyntheticStereo"
    assert tuple(cfg.train_dataloader.dataset.crop_size) == (192, 224)
    assert cfg.train_dataloader.num_workers == 4 and cfg.train_dataloader.batch_size == 4  # the recipe's workers
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=1.0)  # the recipe's optimiser
    assert "fused" not in cfg.optim_wrapper.optimizer  # fused AdamW only on CUDA
    assert cfg.train_cfg.max_iters == 6 and cfg.val_dataloader is None
    cfg = e2e_config("biformer_small", _args(cfg_options={"optim_wrapper.optimizer.lr": 1e-3}),
                     torch.device("cpu"), str(tmp_path))
    assert cfg.model.network_kwargs == dict(drop_path_rate=0.15) and cfg.optim_wrapper.optimizer.lr == 1e-3
    assert tuple(cfg.train_dataloader.dataset.input_size) == (224, 224)


def test_unknown_recipe_and_cpu_amp_are_refused(tmp_path):
    assert recipe_of("ffnet_3", None) == "configs/classification/ffnet_3.py"
    with pytest.raises(ValueError, match="--config"):
        recipe_of("resnet50", None)
    with pytest.raises(ValueError, match="needs CUDA"):
        e2e_config("biformer_small", _args(dtype="bfloat16"), torch.device("cpu"), str(tmp_path))
