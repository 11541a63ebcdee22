"""benchmarks/ddp_scaling.py on CPU (gloo, tiny networks): the launches, files and checks it makes on GPUs."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from visionattn.engine import load_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "ddp_scaling.py"


@pytest.fixture(scope="module")
def ddp_scaling():
    spec = importlib.util.spec_from_file_location("ddp_scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(ddp_scaling, tmp_path, case, **kw):
    opts = dict(batch=64, max_iters=70, exact=False, sync_bn=False, ckpt_interval=None, log_interval=10,
                num_workers=2, cuda=True, length=10**6)
    opts.update(kw)
    path = tmp_path / f"{case}_{len(list(tmp_path.iterdir()))}.py"
    path.write_text(ddp_scaling.config_text(case, ddp_scaling.CASES[case], **opts))
    return load_config(str(path))


def test_generated_configs_are_the_recipes_on_synthetic_data(ddp_scaling, tmp_path):
    cfg = _write(ddp_scaling, tmp_path, "biformer_small")  # throughput: the recipe as it is
    assert cfg.model.network == "biformer_small" and cfg.model.cuda_graph is True
    assert cfg.model.mixup.mixup_alpha == 0.8 and cfg.model.network_kwargs.drop_path_rate == 0.15
    assert cfg.train_dataloader.batch_size == 64 and cfg.train_dataloader.dataset.type == "SyntheticClassification"
    assert "root" not in cfg.train_dataloader.dataset and cfg.val_dataloader is None
    assert cfg.optim_wrapper.optimizer.type == "AdamW" and cfg.optim_wrapper.dtype == "bfloat16"
    assert [h.type for h in cfg.custom_hooks] == ["EMAHook", "TrainSpeedHook"]
    assert cfg.train_cfg == dict(type="IterBasedTrainLoop", max_iters=70, val_interval=71) and cfg.sync_bn is None

    eq = _write(ddp_scaling, tmp_path, "biformer_small", batch=128, max_iters=50, exact=True, sync_bn=True,
                ckpt_interval=20, log_interval=1, length=1280)  # one GPU, the global batch, nothing random
    assert eq.model.mixup is None and eq.model.data_preprocessor.random_erasing is None
    assert eq.model.network_kwargs.drop_path_rate == 0.0 and eq.model.label_smoothing == 0.1
    assert [h.type for h in eq.custom_hooks] == ["TrainSpeedHook"] and eq.sync_bn == "torch"
    assert eq.train_dataloader.batch_size == 128 and eq.train_dataloader.dataset.length == 1280
    assert eq.default_hooks.checkpoint.interval == 20 and eq.default_hooks.logger.interval == 1

    st = _write(ddp_scaling, tmp_path, "matchstereo_tiny", batch=8)
    assert st.model.type == "StereoMatcher" and st.model.cuda_graph is True and st.model.loss.occ_weight == 0.2
    assert st.train_dataloader.dataset.type == "SyntheticStereo" and tuple(st.train_dataloader.dataset.crop_size) == (320, 736)
    assert "dtype" not in st.optim_wrapper  # the SceneFlow recipe trains in fp32


def test_summaries(ddp_scaling):
    def rank(times, samples=4, checksum=1.0):
        return dict(start_time=0.0, weights_sum=checksum, weights_norm=2.0,
                    records=[dict(iter=i, time=t, samples=samples, loss=1.0) for i, t in enumerate(times)])

    s = ddp_scaling.speed_summary([rank([5.0, 6.0, 7.0, 8.0]), rank([5.0, 6.0, 7.5, 9.0])], warmup=1)
    assert s["images_per_s"] == pytest.approx(2 * 3 * 4 / 4.0)  # all ranks' images over the slowest rank's time
    assert s["measured_iters"] == 3 and s["step_ms_median"] == pytest.approx(1000.0)
    assert s["weights_identical_on_all_ranks"]
    assert not ddp_scaling.speed_summary([rank([1, 2, 3]), rank([1, 2, 3], checksum=1.5)], 1)["weights_identical_on_all_ranks"]
    with pytest.raises(RuntimeError, match="warm-up"):
        ddp_scaling.speed_summary([rank([1.0, 2.0])], warmup=2)

    a = {"w": torch.ones(3), "n": torch.tensor(5)}
    assert ddp_scaling.compare_states(a, dict(a))["exact"]
    d = ddp_scaling.compare_states({"w": torch.tensor([1.0, 1.0, 1.5]), "n": torch.tensor(5)}, a)
    assert not d["exact"] and d["max_abs"] == 0.5 and d["max_abs_key"] == "w"
    assert d["rel_l2"] == pytest.approx(0.5 / 3 ** 0.5)
    assert not ddp_scaling.compare_states({"w": torch.ones(3)}, a)["same_keys"]


def test_bad_options_are_refused(ddp_scaling, tmp_path):
    base = ["--device", "cpu", "--out", str(tmp_path)]
    for extra, message in [(["--kill-at", "60"], "kill-at"), (["--cases", "nope"], "unknown cases"),
                           (["--stages", "speed"], "unknown stages")]:
        with pytest.raises(SystemExit):
            ddp_scaling.parse_args(base + extra)
    args = ddp_scaling.parse_args(base)
    assert args.cases == ["test_vit"] and args.kill_at == 30 and args.num_workers == 0


def _run(out, work, *extra, gpus=2):
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--gpus", str(gpus), "--out", str(out),
           "--work-root", str(work), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "ddp_scaling.json").read_text()), proc.stdout


def test_throughput_of_one_process_and_reuse_of_recorded_runs(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    args = ("--stages", "throughput", "--warmup", "1", "--iters", "3")
    state, _ = _run(out, work, *args, gpus=1)
    entry = state["throughput"]["test_vit"]
    row = entry["runs"]["1"]
    assert row["ok"] and row["world_size"] == 1 and row["batch_per_gpu"] == 4 and row["measured_iters"] == 3
    assert row["images_per_s"] > 0 and Path(row["command"].split()[0]).name.startswith("python")
    assert "torch.distributed.run" not in row["command"] and "speedup" not in entry  # one GPU: plain tools/train.py
    assert state["environment"]["env"]["NCCL_NVLS_ENABLE"] == "0"
    assert "| test_vit (fp32) | 1 | 4 |" in (out / "ddp_scaling.md").read_text()
    assert (out / "configs" / "throughput_test_vit_1gpu.py").is_file() and (out / "logs" / "throughput_test_vit_1gpu.log").is_file()
    _, stdout = _run(out, work, *args, gpus=1)  # recorded: not run again
    assert "recorded earlier, reused" in stdout


@pytest.mark.slow
def test_every_stage_on_two_cpu_processes(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    state, _ = _run(out, work, "--warmup", "2", "--iters", "3", "--eq-iters", "12", "--eq-ckpt-interval", "4",
                    "--kill-at", "6", "--cases", "test_vit,matchstereo_tiny_shallow")
    stereo = state["throughput"]["matchstereo_tiny_shallow"]["runs"]
    assert stereo["1"]["ok"] and stereo["2"]["ok"] and stereo["2"]["weights_identical_on_all_ranks"]
    entry = state["throughput"]["test_vit"]
    assert entry["runs"]["1"]["ok"] and entry["runs"]["2"]["ok"] and entry["runs"]["2"]["world_size"] == 2
    assert "--launcher pytorch" in entry["runs"]["2"]["command"] and "--nproc_per_node=2" in entry["runs"]["2"]["command"]
    assert entry["runs"]["2"]["weights_identical_on_all_ranks"]
    assert entry["speedup"] == pytest.approx(entry["runs"]["2"]["images_per_s"] / entry["runs"]["1"]["images_per_s"])
    eq = state["equivalence"]
    assert eq["global_batch"] == 8 and len(eq["losses_1gpu"]) == len(eq["losses_ngpu"]) == 12
    assert eq["losses_within_tolerance"] and eq["loss_rel_diff_first"] < 1e-6 and eq["weights_identical_on_all_ranks"]
    assert eq["loss_first_last_1gpu"][1] < eq["loss_first_last_1gpu"][0]  # it trains
    assert eq["weights_final"]["rel_l2"] < 1e-4
    ck = state["checkpoint"]
    assert ck["keys_with_module_prefix"] == 0 and ck["cpu"]["weights_equal_checkpoint"]
    kr = state["kill_resume"]
    assert kr["returncode"] not in (0, None) and kr["stopped_cleanly"] and kr["leftover_processes"] == 0
    assert kr["message_names_rank"] and kr["message_names_signal"]
    assert kr["resumed_from"] in ("iter_4.pth", "iter_8.pth") and kr["resume_ok"] and kr["same_weights"]
    assert kr["weights_final_vs_uninterrupted"]["exact"]
    md = (out / "ddp_scaling.md").read_text()
    assert "SIGKILL" in md and "bit-identical" in md
