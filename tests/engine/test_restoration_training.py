"""Two training iterations (+ validation and best-checkpoint saving) of every Restore-RWKV config."""
from pathlib import Path

import pytest
import torch

from visionattn.engine.losses import CharbonnierLoss
from visionattn.engine.restoration_model import ImageRestorer

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
    with pytest.raises(ValueError, match="unknown loss"):
        ImageRestorer(net, loss="ssim")
    with pytest.raises(ValueError, match="needs data_samples"):
        m(x, None, mode="loss")


def _restorer_steps(device, cuda_graph, steps=3):
    torch.manual_seed(0)
    from visionattn import create_model

    net = create_model("restore_rwkv_light").to(device)
    m = ImageRestorer(net, cuda_graph=cuda_graph).to(device)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(steps):
        x = torch.rand(2, 1, 32, 32, generator=g).to(device)
        samples = [dict(gt=torch.rand(1, 32, 32, generator=g).to(device)) for _ in range(2)]
        opt.zero_grad(set_to_none=True)
        loss = m(x, samples, mode="loss")["loss"]
        loss.backward()
        rows.append((loss.detach(), torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])))
        opt.step()
    return m, rows


def test_cuda_graph_option_is_eager_on_cpu():
    m, rows = _restorer_steps("cpu", cuda_graph=True, steps=1)
    assert len(m.train_graph) == 0 and torch.isfinite(rows[0][0])


@pytest.mark.cuda
def test_cuda_graph_training_equals_eager():
    _, eager = _restorer_steps("cuda", cuda_graph=False)
    m, graphed = _restorer_steps("cuda", cuda_graph=True)
    assert len(m.train_graph) == 1
    for (l0, g0), (l1, g1) in zip(eager, graphed):
        torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)
