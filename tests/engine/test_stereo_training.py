"""Stereo training end to end: losses, metric, and 2 iterations of the stereo configs on the sample sets."""
from pathlib import Path

import pytest
import torch

from visionattn.engine import build_runner, load_config
from visionattn.engine.losses import MatchStereoLoss, occlusion_from_disparity
from visionattn.evaluation import StereoMetric, disparity_errors

REPO = Path(__file__).resolve().parents[2]


def test_occlusion_from_disparity():
    # a near object (d=4) at x=5..6 in front of a far plane (d=1): the far pixels just left of it
    # map under the object's match and are occluded in the right view
    d = torch.ones(1, 1, 1, 10)
    d[..., 5:7] = 4.0
    occ = occlusion_from_disparity(d, torch.ones_like(d, dtype=torch.bool))
    assert occ[0, 0, 0].tolist() == [False, False, True, True, True] + [False] * 5


def test_sequence_loss_equals_its_formula():
    """The sequence loss (fields of one resolution batched, block sums) equals its definition written
    field by field with average pooling, for uneven validity, both views and repeated resolutions."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    B, H, W = 2, 64, 96
    disp, disp_r = torch.rand(B, 1, H, W, generator=g) * 40, torch.rand(B, 1, H, W, generator=g) * 40
    valid, valid_r = torch.rand(B, 1, H, W, generator=g) > 0.3, torch.rand(B, 1, H, W, generator=g) > 0.5
    strides = [8, 8, 8, 4, 4, 2, 1]
    fields = [torch.randn(2 * B, H // s, W // s, 2, generator=g) * 5 for s in strides]
    out = dict(fields=fields[:-1], field_up=fields[-1], init_cost_volume=None)
    loss = MatchStereoLoss(gamma=0.8, cv_weight=0.0, occ_weight=0.0)
    got = loss(out, disp, valid, disp_r, valid_r)["loss_seq"]

    def down(d, v, s):  # the definition: masked average over s x s blocks, valid where over half is valid
        if s == 1:
            return d, v
        num, den = F.avg_pool2d(d * v.float(), s), F.avg_pool2d(v.float(), s)
        return num / den.clamp(min=1e-6), den > 0.5

    want = 0.0
    for k, (s, f) in enumerate(zip(strides, fields)):
        for gt, ok, sign, rows in ((disp, valid, -1.0, slice(0, B)), (disp_r, valid_r, 1.0, slice(B, 2 * B))):
            gt_s, ok_s = down(gt, ok, s)
            err = (sign * f[rows, :, :, 0].unsqueeze(1) * s - gt_s).abs()
            want += 0.8 ** (len(strides) - 1 - k) * (err * ok_s).sum() / ok_s.sum().clamp(min=1)
    torch.testing.assert_close(got, torch.as_tensor(want, dtype=got.dtype), rtol=1e-5, atol=1e-5)


def test_metric_definitions():
    gt = torch.tensor([10.0, 10.0, 100.0, 100.0, 50.0])
    pred = torch.tensor([10.4, 13.5, 104.0, 106.0, 50.0])
    valid = torch.tensor([True, True, True, True, False])
    s = disparity_errors(pred, gt, valid)
    assert s["count"] == 4 and s["epe"] == pytest.approx(0.4 + 3.5 + 4 + 6)
    assert s["d1"] == 2  # 13.5 (>3 px, >5 %) and 106 (>3 px, >5 %); 104 is 4 % of 100
    assert s["bad3"] == 3 and s["bad0.5"] == 3
    metric = StereoMetric()
    metric.process(None, [dict(pred_disp=pred, gt_disp=gt, valid=valid, valid_noc=None)])
    out = metric.compute_metrics(metric.results)
    assert out["all/epe"] == pytest.approx(13.9 / 4) and out["all/d1"] == pytest.approx(50.0) and "noc/epe" not in out


def test_loss_is_zero_for_the_ground_truth():
    """Fields equal to the ground truth give zero sequence and consistency loss."""
    B, H, W = 1, 64, 64
    disp = torch.full((B, 1, H, W), 3.0)
    field = lambda s: torch.cat([torch.full((B, H // s, W // s, 1), -3.0 / s), torch.full((B, H // s, W // s, 1), 3.0 / s)], 0)
    with_y = lambda f: torch.cat((f, torch.zeros_like(f)), -1)
    out = dict(fields=[with_y(field(4)), with_y(field(2))], field_up=with_y(field(1)), init_cost_volume=None, padding=(0, 0))
    valid = torch.ones_like(disp, dtype=torch.bool)
    losses = MatchStereoLoss()(out, disp, valid, disp, valid)
    assert losses["loss_seq"].abs() < 1e-6 and losses["loss_occ"].abs() < 1e-6
    wrong = dict(out, field_up=with_y(field(1)) * 2)
    assert MatchStereoLoss()(wrong, disp, valid)["loss_seq"] > 1


def _cfg(config, tmp_path, samples_root, kind):
    opts = {
        "train_dataloader.batch_size": 1, "train_dataloader.num_workers": 0,
        "train_dataloader.dataset.transform.crop_size": (192, 224),
        "train_dataloader.dataset.transform.scale_range": (1.0, 1.0),
        "val_dataloader.num_workers": 0, "test_dataloader.num_workers": 0,
        "train_cfg.max_iters": 2, "train_cfg.val_interval": 2,
        "default_hooks.logger.interval": 1, "default_hooks.checkpoint.interval": 2,
        "model.pretrained": False,
    }
    root = str(samples_root / kind)
    opts.update({"train_dataloader.dataset.root": root, "val_dataloader.dataset.root": root,
                 "test_dataloader.dataset.root": root})
    if kind == "sceneflow":
        opts.update({"val_dataloader.dataset.split": "TRAIN", "test_dataloader.dataset.split": "TRAIN",
                     "val_dataloader.dataset.subsets": ("Monkaa",), "test_dataloader.dataset.subsets": ("Monkaa",)})
    return load_config(str(REPO / "configs" / "stereo" / config), work_dir=str(tmp_path), cfg_options=opts)


CONFIGS = [(f"matchstereo_{v}_{task}.py", "sceneflow" if task == "sceneflow" else "kitti2015")
           for v in "tsb" for task in ("sceneflow", "kitti15_ft")]
# Default run: the T configs with one MatchAttention layer per level and one encoder block per
# stage (same code paths, ~6x less compute); the unmodified networks of every config run as slow.
SHALLOW = {"model.network_kwargs": dict(depths=(1, 1, 1, 1), num_layers=(1, 1, 1, 1))}


def _train_two_iterations(config, kind, tmp_path, samples_root, extra=None):
    torch.manual_seed(0)
    cfg = _cfg(config, tmp_path, samples_root, kind)
    if extra:
        cfg.merge_from_dict(extra)
    runner = build_runner(cfg)
    before = {n: p.detach().clone() for n, p in runner.model.named_parameters()}
    runner.train()
    after = dict(runner.model.named_parameters())
    changed = sum(not torch.equal(before[n], after[n].detach()) for n in before)
    assert changed > 0.9 * len(before)
    assert (tmp_path / "iter_2.pth").is_file()
    text = "".join(p.read_text() for p in tmp_path.rglob("*.log"))
    assert "loss_seq" in text and "loss_occ" in text and "stereo/all/epe" in text


@pytest.mark.parametrize("config,kind", [c for c in CONFIGS if c[0].startswith("matchstereo_t")])
def test_two_training_iterations_shallow(config, kind, tmp_path, samples_root):
    _train_two_iterations(config, kind, tmp_path, samples_root, SHALLOW)


@pytest.mark.slow
@pytest.mark.parametrize("config,kind", CONFIGS)
def test_two_training_iterations(config, kind, tmp_path, samples_root):
    _train_two_iterations(config, kind, tmp_path, samples_root)


@pytest.mark.cuda
def test_cuda_graph_training_step_equals_eager():
    """StereoMatcher(cuda_graph=True): the losses and gradients of eager training over three SGD steps.

    Gradients are compared as one vector against the gap between two eager runs: MatchAttention's
    sampling centres make the gradient jump where a centre crosses a pixel, so rounding-level changes
    move a few elements a lot (on CPU, scaling every weight by 1 + 1e-6 moves the stem's gradient by
    up to 0.027 of 138, 7e-5 of the whole gradient); a wrong graph (stale input, lost or doubled
    gradients) is off by O(1). Parameters are re-synchronised after each step so this stays small.
    """
    from visionattn.engine.stereo_matcher import StereoMatcher

    torch.manual_seed(0)
    kw = dict(network="matchstereo_tiny", network_kwargs=dict(SHALLOW["model.network_kwargs"], drop_path_rate=0.0))
    models = [StereoMatcher(**kw).cuda(), StereoMatcher(**kw).cuda(), StereoMatcher(**kw, cuda_graph=True).cuda()]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=1e-3) for m in models]
    flat = lambda m: torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in m.parameters()])
    for step in range(3):
        inputs = torch.randint(0, 256, (2, 2, 3, 192, 224), device="cuda", dtype=torch.uint8)
        disp = torch.rand(2, 1, 192, 224, device="cuda") * 30
        ds = dict(disp=disp, valid=disp > 1)
        losses, grads, has_grad = [], [], []
        for m, opt in zip(models, opts):
            opt.zero_grad(set_to_none=True)
            loss = m(inputs, ds, mode="loss")
            sum(loss.values()).backward()
            losses.append({k: v.item() for k, v in loss.items()})
            has_grad.append([p.grad is not None for p in m.parameters()])
            grads.append(flat(m))
            opt.step()
        assert has_grad[2] == has_grad[0] and any(has_grad[0])
        for k in losses[0]:
            assert losses[2][k] == pytest.approx(losses[0][k], rel=1e-4, abs=1e-5), (step, k)
        norm = grads[0].norm()
        noise, err = (grads[1] - grads[0]).norm() / norm, (grads[2] - grads[0]).norm() / norm
        assert err <= max(10 * noise, 1e-3), (step, err.item(), noise.item())
        with torch.no_grad():  # in place (the graph keeps reading the same parameters): no drift between runs
            for m in models[1:]:
                for p, ref in zip(m.parameters(), models[0].parameters()):
                    p.copy_(ref)
    assert len(models[2].train_graph) == 1
