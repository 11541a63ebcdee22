"""Nothing lost: a save interrupted mid-write leaves the previous checkpoint usable and --resume
finds the last complete one; a non-finite loss stops training naming the iteration and the loss
terms (or skips the step when the config says so) and never overwrites a good checkpoint."""
import os
from pathlib import Path

import pytest
import torch

from visionattn.cli import train as train_cli
from visionattn.engine import ImageClassifier
from visionattn.engine.hooks import safe_checkpoint
from visionattn.engine.hooks.safe_checkpoint import is_complete_checkpoint, latest_complete_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path, samples_root):
    """A 32 px test_resnet on the ImageNet-format samples, checkpoints every 2 iterations, keeping one."""

    def write(max_iters: int = 4, extra: str = "") -> Path:
        path = tmp_path / "tiny.py"
        path.write_text(
            f"_base_ = [{str(REPO / 'configs' / 'classification' / 'demo.py')!r}]\n"
            f"data_root = {str(samples_root / 'imagenet')!r}\n"
            "model = dict(network='test_resnet')\n"
            "train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,\n"
            "    dataset=dict(root=data_root, transform=dict(input_size=32)))\n"
            "val_dataloader = dict(batch_size=40, dataset=dict(root=data_root, transform=dict(input_size=32)))\n"
            "test_dataloader = val_dataloader\n"
            f"train_cfg = dict(max_iters={max_iters}, val_interval=1000)\n"
            "param_scheduler = []\n"
            "default_hooks = dict(logger=dict(interval=1),\n"
            "    checkpoint=dict(by_epoch=False, interval=2, max_keep_ckpts=1))\n" + extra)
        return path

    return write


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_kill_mid_save_keeps_the_previous_checkpoint_and_resume_finds_it(config, tmp_path, monkeypatch):
    work = tmp_path / "work"
    assert train_cli.main([str(config(max_iters=2)), "--work-dir", str(work)]) is not None
    good = work / "iter_2.pth"
    assert is_complete_checkpoint(good) and (work / "last_checkpoint").read_text() == str(good)
    before = _state(good)

    # the next save dies after writing part of the file (what a kill does), before the rename
    real_fsync = os.fsync

    def die(fd):
        os.ftruncate(fd, 1000)
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(safe_checkpoint.os, "fsync", die)
    with pytest.raises(KeyboardInterrupt):
        train_cli.main([str(config(max_iters=4)), "--work-dir", str(work), "--resume"])
    monkeypatch.setattr(safe_checkpoint.os, "fsync", real_fsync)
    # max_keep_ckpts=1: mmengine's hook deletes the old file before writing the new one; here it stays
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_2.pth"]
    assert not list(work.glob(".*.part"))
    assert (work / "last_checkpoint").read_text() == str(good)
    after = _state(good)
    assert all(torch.equal(before[k], after[k]) for k in before)

    # a kill leaves the temporary file behind, and an older tool may have left a half file under a
    # final name that last_checkpoint points to: resume still picks the last complete checkpoint
    (work / ".iter_4.pth.1234abcd.part").write_bytes(b"PK\x03\x04 half")
    half = work / "iter_3.pth"
    half.write_bytes(good.read_bytes()[:2000])
    (work / "last_checkpoint").write_text(str(half))
    with pytest.warns(UserWarning, match="incomplete; resuming from .*iter_2.pth"):
        assert latest_complete_checkpoint(work) == str(good)
    half.unlink()
    (work / "last_checkpoint").write_text(str(good))
    runner = train_cli.main([str(config(max_iters=4)), "--work-dir", str(work), "--resume"])
    assert runner.iter == 4 and is_complete_checkpoint(work / "iter_4.pth")
    assert not (work / "iter_2.pth").exists()  # removed once iter_4 was complete (max_keep_ckpts=1)
    assert (work / "last_checkpoint").read_text() == str(work / "iter_4.pth")


def _nan_at(monkeypatch, k: int):
    real = ImageClassifier.loss

    def loss(self, inputs, samples):
        losses = real(self, inputs, samples)
        if self.train_iteration() == k:
            losses = {name: v * float("nan") if "loss" in name else v for name, v in losses.items()}
        return losses

    monkeypatch.setattr(ImageClassifier, "loss", loss)


def test_nan_loss_stops_with_the_iteration_and_terms_and_keeps_the_checkpoint(config, tmp_path, monkeypatch,
                                                                               capsys):
    work = tmp_path / "work"
    _nan_at(monkeypatch, 3)
    assert train_cli.main([str(config(max_iters=6)), "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "non-finite loss at iteration 3" in err[0] and "loss=nan" in err[0] and "nonfinite_loss='skip'" in err[0]
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_2.pth"]
    assert (work / "last_checkpoint").read_text() == str(work / "iter_2.pth")
    state = _state(work / "iter_2.pth")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    with pytest.raises(FloatingPointError, match="iteration 3"):  # --debug: the exception itself
        train_cli.main([str(config(max_iters=6)), "--work-dir", str(tmp_path / "w2"), "--debug"])


def test_nan_loss_skipped_when_the_config_says_so(config, tmp_path, monkeypatch):
    work = tmp_path / "work"
    _nan_at(monkeypatch, 1)
    runner = train_cli.main([str(config(max_iters=4, extra="nonfinite_loss = 'skip'\n")), "--work-dir", str(work)])
    assert runner.iter == 4 and runner.model.nonfinite_skipped == 1
    state = _state(work / "iter_4.pth")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_bad_nonfinite_policy_and_nonfinite_weights_are_refused(config, tmp_path, capsys):
    assert train_cli.main([str(config(extra="nonfinite_loss = 'ignore'\n")), "--work-dir", str(tmp_path / "w")]) == 2
    assert "nonfinite_loss must be one of ('raise', 'skip'), got 'ignore'" in capsys.readouterr().err
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="weight"):
        safe_checkpoint.check_finite_weights(model)
