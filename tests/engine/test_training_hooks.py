import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from visionattn.engine import RandomStateHook, TrainingCurvesHook, TrainSpeedHook


def _draw():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_random_state_restored_only_on_resume():
    hook, ckpt = RandomStateHook(), {}
    hook.before_save_checkpoint(None, ckpt)
    expected = _draw()
    hook.after_load_checkpoint(SimpleNamespace(_resume=False), ckpt)  # load_from: no restore
    assert _draw() != expected
    hook.after_load_checkpoint(SimpleNamespace(_resume=True), ckpt)
    assert _draw() == expected


def test_training_curves_plot_and_checkpoint_round_trip(tmp_path):
    hook = TrainingCurvesHook(interval=2)
    runner = SimpleNamespace(work_dir=str(tmp_path), iter=0, max_iters=4, _resume=True)
    for it in range(4):
        runner.iter = it
        hook.after_train_iter(runner, it, outputs=dict(loss=torch.tensor(float(it), requires_grad=True)))
    assert hook.loss == [(2, 0.5), (4, 2.5)]  # means over each interval of 2 iterations
    hook.after_val_epoch(runner, dict(**{"accuracy/top1": 50.0}))
    png = tmp_path / "training_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = {}
    hook.before_save_checkpoint(runner, ckpt)
    restored = TrainingCurvesHook()
    restored.after_load_checkpoint(runner, ckpt)
    assert restored.loss == hook.loss and restored.metrics == [(3, {"accuracy/top1": 50.0})]


def test_train_speed_hook_writes_times_losses_and_checksums(tmp_path):
    import json

    model = torch.nn.Linear(2, 3)
    runner = SimpleNamespace(work_dir=str(tmp_path), iter=0, rank=1, world_size=2, model=model)
    hook = TrainSpeedHook()
    hook.before_train(runner)
    for it in range(3):
        runner.iter = it
        hook.after_train_iter(runner, it, data_batch=dict(inputs=torch.zeros(4, 2)),
                              outputs=dict(loss=torch.tensor(1.0 + it)))
    hook.after_train(runner)
    out = json.loads((tmp_path / "train_speed_rank1.json").read_text())
    assert out["rank"] == 1 and out["world_size"] == 2
    assert [r["loss"] for r in out["records"]] == [1.0, 2.0, 3.0] and {r["samples"] for r in out["records"]} == {4}
    times = [out["start_time"]] + [r["time"] for r in out["records"]]
    assert times == sorted(times)
    assert out["weights_sum"] == pytest.approx(float(sum(p.detach().sum() for p in model.parameters())))
    with pytest.raises(ValueError, match="rank"):
        TrainSpeedHook(filename="speed.json")


class _FakeCudaCounters:
    """torch.cuda's peak counters on a machine without a GPU: ``allocate`` raises them, reset lowers them."""

    def __init__(self, monkeypatch):
        self.current = self.peak = 0
        for name, value in (("is_available", lambda: True), ("is_initialized", lambda: True),
                            ("current_device", lambda: 0), ("get_device_name", lambda index=None: "fake"),
                            ("reset_peak_memory_stats", self.reset), ("memory_stats", self.stats)):
            monkeypatch.setattr(torch.cuda, name, value)

    def allocate(self, nbytes):  # a transient allocation within one iteration
        self.peak = max(self.peak, self.current + nbytes)

    def reset(self, device=None):
        self.peak = self.current

    def stats(self, device=None):
        return {"allocated_bytes.all.peak": self.peak, "reserved_bytes.all.peak": 2 * self.peak}


def test_peak_memory_survives_the_log_line_resets(tmp_path, monkeypatch):
    """mmengine's LoggerHook resets torch's peak counters at every log line; the hooks keep the run's peak."""
    import json

    from mmengine.hooks import LoggerHook
    from mmengine.runner import get_priority

    from visionattn.engine.hooks import TrainBreakdownHook

    for hook_type in (TrainSpeedHook, TrainBreakdownHook):  # they must read the counter before it is reset
        assert get_priority(hook_type.priority) < get_priority(LoggerHook.priority), hook_type
    cuda = _FakeCudaCounters(monkeypatch)
    runner = SimpleNamespace(work_dir=str(tmp_path), iter=0, rank=0, world_size=1, model=torch.nn.Linear(2, 3))
    hook = TrainSpeedHook(synchronize=False)
    hook.before_train(runner)
    for it, nbytes in enumerate([3 * 2**20, 2**20, 2**20]):  # the first iteration (graph capture) peaks highest
        runner.iter = it
        cuda.allocate(nbytes)
        hook.after_train_iter(runner, it, data_batch=dict(inputs=torch.zeros(4, 2)), outputs=dict(loss=1.0))
        cuda.reset()  # LoggerHook's log line, after the hook
    hook.after_train(runner)
    out = json.loads((tmp_path / "train_speed_rank0.json").read_text())
    assert out["peak_allocated_mib"] == 3.0 and out["peak_reserved_mib"] == 6.0
