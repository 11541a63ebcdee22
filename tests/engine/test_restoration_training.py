"""Two training iterations (+ validation and best-checkpoint saving) of every Restore-RWKV config."""
from pathlib import Path

import pytest
import torch

from visionattn.engine.restoration_model import CharbonnierLoss, ImageRestorer

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs/restoration").glob("restore_rwkv_*.py"))
# all_in_one (three modalities) runs by default; the single-task configs are marked slow (time budget)
PARAMS = [pytest.param(c, id=c.stem, marks=() if "all_in_one" in c.stem else pytest.mark.slow) for c in CONFIGS]


@pytest.mark.parametrize("config", PARAMS)
def test_two_iterations(config, samples_root, tmp_path):
    """Through the generic tools/train.py path (load_config + build_runner) with CLI-style overrides."""
    from visionattn.engine import build_runner, load_config

    root = str(samples_root / "restoration_medical" / "restore_rwkv")
    options = {"model.network.dim": 8, "model.network.num_blocks": (1, 1, 1, 1),
               "model.network.num_refinement_blocks": 1, "train_dataloader.batch_size": 2,
               "train_dataloader.dataset.crop": 16, "train_cfg.max_iters": 2, "train_cfg.val_interval": 2,
               "param_scheduler.T_max": 2, "default_hooks.checkpoint.interval": 2, "default_hooks.logger.interval": 1}
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        options.update({f"{loader}.num_workers": 0, f"{loader}.persistent_workers": False, f"{loader}.dataset.root": root})
    cfg = load_config(str(config), work_dir=str(tmp_path), cfg_options=options)
    runner = build_runner(cfg)
    runner.train()
    assert list(tmp_path.glob("best_psnr_*.pth")), "best-PSNR checkpoint was not saved"
    assert runner.message_hub.get_scalar("train/loss").current() > 0
    # the evaluator reported the medical-protocol metrics for every configured modality
    metrics = runner.val_loop.run()
    for mod in cfg.modalities:
        assert f"{mod}/psnr" in metrics and metrics[f"{mod}/ssim"] <= 1


def test_restorer_modes_and_losses():
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    m = ImageRestorer(net, loss="charbonnier")
    x = torch.rand(2, 1, 8, 8)
    samples = [dict(gt=torch.rand(1, 8, 8)) for _ in range(2)]
    assert set(m(x, samples, mode="loss")) == {"loss"}
    preds = m(x, samples, mode="predict")
    assert preds[0]["pred"].shape == (1, 8, 8) and 0 <= preds[0]["pred"].min()
    assert CharbonnierLoss(1e-3)(x, x).item() == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown restoration loss"):
        ImageRestorer(net, loss="ssim")
    with pytest.raises(ValueError, match="needs data_samples"):
        m(x, None, mode="loss")
