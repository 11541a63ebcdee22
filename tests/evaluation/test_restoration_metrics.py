"""Restoration metrics vs scikit-image and hand-computed values."""
import numpy as np
import pytest
import torch

from visionattn.evaluation import restoration_metrics as rm

skimage_metrics = pytest.importorskip("skimage.metrics")


def _pair(shape=(48, 40, 3), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape).astype(np.float64)
    b = np.clip(a + rng.normal(0, 12, shape), 0, 255).round()
    return a, b


def test_basicsr_psnr_ssim_match_skimage():
    a, b = _pair()
    assert rm.basicsr_psnr(a, b) == pytest.approx(skimage_metrics.peak_signal_noise_ratio(a, b, data_range=255), rel=1e-12)
    ref = skimage_metrics.structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True,
                                                sigma=1.5, use_sample_covariance=False)
    assert rm.basicsr_ssim(a, b) == pytest.approx(ref, abs=1e-6)


def test_basicsr_crop_border_and_y_channel():
    a, b = _pair()
    c = 4
    assert rm.basicsr_psnr(a, b, crop_border=c) == pytest.approx(
        skimage_metrics.peak_signal_noise_ratio(a[c:-c, c:-c], b[c:-c, c:-c], data_range=255))
    y = rm.bgr_to_y(np.array([[[0.0, 0.0, 255.0]]]))  # pure red in BGR
    assert y[0, 0, 0] == pytest.approx(16 + 65.481)
    ya, yb = rm.bgr_to_y(a)[..., 0], rm.bgr_to_y(b)[..., 0]
    assert rm.basicsr_psnr(a, b, y_channel=True) == pytest.approx(10 * np.log10(255 ** 2 / np.mean((ya - yb) ** 2)))


def test_medical_protocol():
    rng = np.random.default_rng(1)
    gt = torch.from_numpy(rng.uniform(-160, 240, (40, 40)))
    pred = gt + torch.from_numpy(rng.normal(0, 5, (40, 40)))
    m = rm.medical_psnr_ssim_rmse(pred, gt)
    mse = ((pred - gt) ** 2).mean().item()
    dr = (gt.max() - gt.min()).item()  # per-slice range of the ground truth
    assert m["psnr"] == pytest.approx(10 * np.log10(dr ** 2 / mse)) and m["rmse"] == pytest.approx(np.sqrt(mse))
    # SSIM: zero-padded 'same' map averaged over everything; its interior equals scikit-image's
    ref = skimage_metrics.structural_similarity(pred.numpy(), gt.numpy(), data_range=dr, gaussian_weights=True,
                                                sigma=1.5, use_sample_covariance=False)
    assert abs(m["ssim"] - ref) > 1e-4  # the border handling differs on purpose
    assert rm.medical_ssim(gt, gt, dr) == pytest.approx(1.0)


def test_to_physical_applies_ct_test_window():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])  # [0, 1] of [-1024, 3072] HU
    out = rm.to_physical(x, "CT")
    assert out.tolist() == [-160.0, 0.0, 240.0, 240.0]
    assert rm.to_physical(torch.tensor([0.5]), "MRI").item() == pytest.approx(2047.5)


def test_mmengine_metrics():
    metric = rm.MedicalRestorationMetric()
    g = torch.rand(1, 16, 16)
    metric.process(None, [dict(pred=g * 0.9, gt=g, modality="PET", window=(0, 20))])
    out = metric.compute_metrics(metric.results)
    assert set(out) >= {"psnr", "ssim", "rmse", "PET/psnr"} and out["rmse"] > 0
    bsr = rm.BasicSRMetric(crop_border=2)
    bsr.process(None, [dict(pred=g.expand(3, -1, -1), gt=g.expand(3, -1, -1))])
    assert bsr.compute_metrics(bsr.results)["psnr"] == float("inf")
