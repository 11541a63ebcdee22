"""RestoreFormer++ training through mmengine on the face samples, tiny model sizes: stage 1 (the
dictionary) and stage 2 (restoration from that dictionary) each train three iterations with every
loss term switched on, validate, and resume exactly from a checkpoint."""
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lpips", reason="needs the face extra")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from face_standins import ARCFACE_TINY, write_arcface, write_vgg16  # noqa: E402

from visionattn.engine import build_runner, load_config  # noqa: E402
from visionattn.engine.restoreformer_model import RestoreFormerGAN, crop_components, load_dictionary  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=64, z_channels=32,
            embed_dim=32, n_embed=64)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("face_weights")
    return dict(vgg=str(write_vgg16(folder / "vgg16.pth")), arcface=str(write_arcface(folder / "arcface.pth")))


def _options(samples_root, weights, max_iters=2, checkpoint_interval=2, disc_start=0, perceptual=True):
    faces = samples_root / "faces"
    opts = {"model.network_kwargs": TINY, "model.disc_start": disc_start,
            "model.discriminator": dict(width=8, num_layers=2),
            "train_dataloader.batch_size": 2, "train_dataloader.dataset.root": str(faces / "ffhq"),
            "train_dataloader.dataset.size": 64, "train_dataloader.dataset.pipeline.1.max_shift": 4,
            "val_dataloader.dataset.root": str(faces / "celeba_test"),
            "test_dataloader.dataset.root": str(faces / "celeba_test"),
            "train_cfg.max_iters": max_iters, "train_cfg.val_interval": max_iters,
            "default_hooks.checkpoint.interval": checkpoint_interval, "default_hooks.logger.interval": 1}
    if perceptual:
        opts["model.perceptual.vgg_path"] = weights["vgg"]
    else:  # the stage-1 run covers LPIPS; leaving it out keeps the default test short
        opts["model.perceptual"] = None
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        opts.update({f"{loader}.num_workers": 0, f"{loader}.persistent_workers": False})
    # the degradations draw from the data worker's generator, which mmengine seeds from (seed, worker id):
    # a resumed run replays it (in the main process the resumed run's skipped batches would draw from it)
    opts["train_dataloader.num_workers"] = 1
    return opts


def _stage2_options(samples_root, weights, dictionary, **kwargs):
    faces = samples_root / "faces"
    opts = _options(samples_root, weights, **kwargs)
    opts.update({"model.dictionary": str(dictionary),
                 "model.components": dict(width=8, weight=1.0, gan_loss="VanillaGANLoss"),
                 "model.identity": dict(type="IdentityLoss", arcface_path=weights["arcface"],
                                        arcface_kwargs=ARCFACE_TINY),
                 "train_dataloader.dataset.components": str(faces / "ffhq_eye_mouth_landmarks.pth"),
                 # the official 39/41 px blur kernels and 0.8-8x downsampling, scaled to 64 px faces
                 "train_dataloader.dataset.pipeline.2.degradation.degradation.0.kernel_size": (5, 7),
                 "train_dataloader.dataset.pipeline.2.degradation.degradation.2.scale": (0.8, 2.0)})
    return opts


def _train(config, options, work_dir, resume=None):
    cfg = load_config(str(REPO / "configs" / "restoration" / config), work_dir=str(work_dir),
                      cfg_options=options, resume=resume)
    cfg.experiment_name = str(work_dir).replace("/", "_")  # own logger and MessageHub per runner
    runner = build_runner(cfg)
    runner.train()
    return runner


def _assert_same_state(a: Path, b: Path):
    sa, sb = torch.load(a, weights_only=False)["state_dict"], torch.load(b, weights_only=False)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=k)


def _finite(runner, keys):
    for key in keys:
        assert torch.isfinite(torch.tensor(runner.message_hub.get_scalar(f"train/{key}").current())), key


def test_stage1_then_stage2_train_and_validate(samples_root, weights, tmp_path):
    """Two iterations each, every loss term on from the first (disc_start=0 here)."""
    stage1 = tmp_path / "stage1"
    runner = _train("restoreformerpp_stage1.py", _options(samples_root, weights), stage1)
    _finite(runner, ("loss_g_pixel", "loss_g_perceptual", "loss_g_codebook", "loss_g_adversarial", "loss_d"))
    assert 0 <= runner.message_hub.get_scalar("train/adaptive_weight").current() <= 0.8 * 1e4
    assert runner.message_hub.get_scalar("val/psnr").current() > 0
    ckpt = torch.load(stage1 / "iter_2.pth", weights_only=False)
    assert set(ckpt["optimizer"]) == {"generator", "discriminator"}

    stage2 = tmp_path / "stage2"
    runner = _train("restoreformerpp_stage2.py", _stage2_options(samples_root, weights, stage1, perceptual=False),
                    stage2)
    model = runner.model
    assert model.new_dictionary_keys and all(k.startswith("decoder.up.1.attn.") for k in model.new_dictionary_keys)
    _finite(runner, ("loss_g_left_eye", "loss_g_right_eye", "loss_g_mouth", "loss_g_identity", "loss_g_adversarial",
                     "loss_d_left_eye", "loss_d_right_eye", "loss_d_mouth", "loss_d"))
    # the codebook stayed the dictionary's
    torch.testing.assert_close(model.network.quantize.embedding.weight,
                               ckpt["state_dict"]["network.quantize.embedding.weight"])
    ckpt = torch.load(stage2 / "iter_2.pth", weights_only=False)
    assert set(ckpt["optimizer"]) == {"generator", "discriminator", "left_eye", "right_eye", "mouth"}
    groups = ckpt["optimizer"]["generator"]["param_groups"]  # decoder attention at 10x the learning rate
    assert sorted(g["lr"] for g in groups) == pytest.approx([1.8e-5, 1.8e-4])
    attention = [n for n, p in model.network.named_parameters() if p.requires_grad and n.startswith("decoder")
                 and "attn" in n]
    assert len(groups[1]["params"]) == len(attention)


@pytest.mark.slow
def test_both_stages_resume_exactly(samples_root, weights, tmp_path):
    """Three iterations (the component and identity terms from the third, after disc_start=1) straight,
    and resumed from the checkpoint of iteration 2: the same weights."""
    stage1, resumed = tmp_path / "stage1", tmp_path / "stage1_resumed"
    opts = _options(samples_root, weights, max_iters=3, disc_start=1)
    _train("restoreformerpp_stage1.py", opts, stage1)
    _train("restoreformerpp_stage1.py", opts, resumed, resume=str(stage1 / "iter_2.pth"))
    _assert_same_state(resumed / "iter_3.pth", stage1 / "iter_3.pth")
    stage2, resumed = tmp_path / "stage2", tmp_path / "stage2_resumed"
    opts = _stage2_options(samples_root, weights, stage1, max_iters=3, disc_start=1)
    runner = _train("restoreformerpp_stage2.py", opts, stage2)
    _finite(runner, ("loss_g_left_eye", "loss_g_identity"))
    _train("restoreformerpp_stage2.py", opts, resumed, resume=str(stage2 / "iter_2.pth"))
    _assert_same_state(resumed / "iter_3.pth", stage2 / "iter_3.pth")


def test_component_crops_follow_the_boxes():
    images = torch.zeros(2, 1, 64, 64)
    images[1, :, 10:20, 30:40] = 1.0  # a bright square where sample 1's mouth box is
    boxes = torch.tensor([[[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 60, 60]],
                          [[0, 0, 10, 10], [20, 20, 30, 30], [30, 10, 40, 20]]], dtype=torch.float32)
    crops = crop_components(images, boxes, design_size=512, eye_size=80, mouth_size=120)
    assert crops["left_eye"].shape == (2, 1, 10, 10) and crops["mouth"].shape == (2, 1, 15, 15)
    assert crops["mouth"][1].mean() > 0.8 and crops["mouth"][0].abs().max() == 0
    with pytest.raises(ValueError, match=r"\(B, 3, 4\)"):
        crop_components(images, boxes[:, :2])


def test_dictionary_loading_is_strict_outside_new_attention(tmp_path):
    from visionattn import create_model

    rohqd = create_model("restoreformer_rohqd", **TINY)
    torch.save({"state_dict": {f"vqvae.{k}": v for k, v in rohqd.state_dict().items()}}, tmp_path / "official.ckpt")
    rfpp = create_model("restoreformerpp", **TINY)
    new = load_dictionary(rfpp, str(tmp_path / "official.ckpt"))
    assert new and all(k.startswith("decoder.up.1.attn.") for k in new)
    torch.testing.assert_close(rfpp.quantize.embedding.weight, rohqd.quantize.embedding.weight)
    other = create_model("restoreformerpp", **dict(TINY, n_embed=32))
    with pytest.raises(RuntimeError, match="shape mismatches"):
        load_dictionary(other, str(tmp_path / "official.ckpt"))
    with pytest.raises(FileNotFoundError, match="last_checkpoint"):
        load_dictionary(rfpp, str(tmp_path))
    with pytest.raises(ValueError, match="RestoreFormer networks"):
        RestoreFormerGAN(torch.nn.Conv2d(3, 3, 1))


@pytest.mark.slow
def test_stage2_pipeline_demo_improves_held_out_psnr(samples_root, weights, tmp_path):
    """A pipeline demo, not a trained model: a tiny stage-2 network trained for 40 iterations on the eight
    sample faces restores the four held-out CelebA-Test-style pairs better than after one iteration."""
    stage1 = tmp_path / "stage1"
    _train("restoreformerpp_stage1.py", _options(samples_root, weights, max_iters=1, checkpoint_interval=1,
                                                 perceptual=False), stage1)
    first, longer = tmp_path / "first", tmp_path / "longer"
    opts = _stage2_options(samples_root, weights, stage1, max_iters=1, checkpoint_interval=1, disc_start=20,
                           perceptual=False)
    opts.update({"optim_wrapper.generator.optimizer.lr": 1e-3})
    runner = _train("restoreformerpp_stage2.py", opts, first)
    before = runner.message_hub.get_scalar("val/psnr").current()
    opts.update({"train_cfg.max_iters": 40, "train_cfg.val_interval": 40, "default_hooks.checkpoint.interval": 40})
    runner = _train("restoreformerpp_stage2.py", opts, longer, resume=str(first / "iter_1.pth"))
    after = runner.message_hub.get_scalar("val/psnr").current()
    assert after > before + 1.0, (before, after)
