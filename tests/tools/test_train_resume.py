"""A run killed with SIGKILL and restarted with --resume ends with the uninterrupted run's weights."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
MAX_ITERS = 12

# Every random stream of the DeiT recipe in play: RandAugment + random-resized crops (data
# workers), mixup/cutmix (numpy), random erasing (python + torch), drop-path (torch), EMA.
RANDOM_RECIPE = (
    "model = dict(network_kwargs=dict(drop_path_rate=0.1), label_smoothing=0.1,\n"
    "    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0),\n"
    "    data_preprocessor=dict(random_erasing=dict(probability=0.5, mode='pixel')))\n"
    "train_dataloader = dict(dataset=dict(transform=dict(auto_augment='rand-m9-mstd0.5-inc1')))\n"
    # a schedule that does not depend on max_iters: the killed run is started with a huge one
    "param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=6)]\n"
    f"train_cfg = dict(max_iters={MAX_ITERS}, val_interval=1000)\n"
    "default_hooks = dict(checkpoint=dict(interval=4, max_keep_ckpts=10))\n"
    "custom_hooks = [dict(type='EMAHook', momentum=0.1)]\n"
)


def _kill_after_first_checkpoint(cmd, work: Path, env, timeout=600) -> int:
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not (work / "last_checkpoint").is_file():
            if proc.poll() is not None:
                pytest.fail(f"training exited ({proc.returncode}) before its first checkpoint: "
                            f"{proc.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within the timeout")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data worker, mid-run
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_config, tmp_path, tool_env, load_tool):
    train = load_tool("train")
    cfg = tiny_config(RANDOM_RECIPE)
    killed, reference = tmp_path / "killed", tmp_path / "reference"

    cmd = [sys.executable, str(REPO / "tools" / "train.py"), str(cfg), "--work-dir", str(killed),
           "--cfg-options", "train_cfg.max_iters=1000000"]
    assert _kill_after_first_checkpoint(cmd, killed, tool_env) == -signal.SIGKILL
    resume_from = Path((killed / "last_checkpoint").read_text().strip())
    resumed_iter = int(resume_from.stem.split("_")[1])
    assert 0 < resumed_iter < MAX_ITERS, resume_from
    stamp = resume_from.stat().st_mtime_ns

    runner = train.main([str(cfg), "--work-dir", str(killed), "--resume"])
    assert runner.iter == MAX_ITERS
    assert resume_from.stat().st_mtime_ns == stamp  # continued from it, not retrained from scratch
    train.main([str(cfg), "--work-dir", str(reference)])

    a = torch.load(killed / f"iter_{MAX_ITERS}.pth")
    b = torch.load(reference / f"iter_{MAX_ITERS}.pth")
    for key in ("state_dict", "ema_state_dict"):
        assert a[key].keys() == b[key].keys()
        for name, value in b[key].items():
            torch.testing.assert_close(a[key][name], value, rtol=0, atol=1e-6, msg=f"{key}.{name}")
