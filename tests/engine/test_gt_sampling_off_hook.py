"""GTSamplingOffHook: GT sampling switched off for the last epochs, through dataset wrappers."""
from types import SimpleNamespace

import pytest
import torch
from mmengine.dataset import BaseDataset, Compose, ConcatDataset, RepeatDataset

from visionattn.engine import HOOKS
from visionattn.engine.hooks import GTSamplingOffHook


class GTSampling:  # stands in for the TRANSFORMS 'GTSampling' (matched by class name)
    def __init__(self):
        self.enabled = True

    def __call__(self, results):
        results["sampled"] = self.enabled
        return results


class Flip:
    def __call__(self, results):
        return results


class FrameDataset(BaseDataset):
    def __init__(self, n=2):
        self.n = n
        super().__init__(pipeline=[GTSampling(), Flip()], serialize_data=False)

    def load_data_list(self):
        return [dict(index=i) for i in range(self.n)]


class Log:
    def __init__(self):
        self.lines = []

    def info(self, msg):
        self.lines.append(("info", msg))

    def warning(self, msg):
        self.lines.append(("warning", msg))


def _runner(dataset, epoch, max_epochs=24, **loader_kw):
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=lambda b: b, **loader_kw)
    return SimpleNamespace(epoch=epoch, max_epochs=max_epochs, train_dataloader=loader, logger=Log())


def test_switches_off_at_max_minus_last_epochs_through_wrappers():
    a, b = FrameDataset(), FrameDataset()
    wrapped = torch.utils.data.ConcatDataset([RepeatDataset(a, 3), ConcatDataset([b])])  # torch and mmengine wrappers
    hook = HOOKS.build(dict(type="GTSamplingOffHook", last_epochs=4))
    assert isinstance(hook, GTSamplingOffHook)
    runner = _runner(wrapped, epoch=19)
    hook.before_train_epoch(runner)
    assert a.pipeline.transforms[0].enabled and b.pipeline.transforms[0].enabled and not runner.logger.lines
    runner.epoch = 20  # 0-based: epochs 20..23 are the last 4 of 24
    hook.before_train_epoch(runner)
    assert not a.pipeline.transforms[0].enabled and not b.pipeline.transforms[0].enabled
    assert len(runner.logger.lines) == 1 and runner.logger.lines[0][0] == "info"
    assert "epoch 21" in runner.logger.lines[0][1] and "2 transform(s)" in runner.logger.lines[0][1]
    assert all(item[0]["sampled"] is False for item in runner.train_dataloader)
    hook.before_train_epoch(runner)  # once only
    assert len(runner.logger.lines) == 1


def test_resumed_past_the_switch_and_nothing_to_switch(caplog):
    ds = FrameDataset()
    runner = _runner(torch.utils.data.Subset(ds, [0]), epoch=22)
    GTSamplingOffHook(last_epochs=4).before_train_epoch(runner)
    assert not ds.pipeline.transforms[0].enabled
    plain = FrameDataset()
    plain.pipeline = Compose([Flip()])
    runner = _runner(plain, epoch=23)
    GTSamplingOffHook(last_epochs=4).before_train_epoch(runner)
    assert runner.logger.lines[0][0] == "warning" and "no GTSampling" in runner.logger.lines[0][1]
    with pytest.raises(ValueError, match="last_epochs"):
        GTSamplingOffHook(last_epochs=-1)


def test_persistent_workers_are_restarted():
    ds = FrameDataset(4)
    runner = _runner(ds, epoch=20, num_workers=1, persistent_workers=True)
    loader = runner.train_dataloader
    assert all(item[0]["sampled"] for item in loader)  # the worker now holds a dataset copy
    GTSamplingOffHook(last_epochs=4).before_train_epoch(runner)
    assert all(item[0]["sampled"] is False for item in loader)
