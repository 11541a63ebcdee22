"""Face metrics with random-weight stand-ins in the real file formats: LPIPS (torchvision VGG16 file),
identity distance (ArcFace state dict), FID (pytorch-fid Inception weights, BasicSR statistics)."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lpips", reason="needs the face extra")
pytest.importorskip("pytorch_fid", reason="needs the face extra")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from face_standins import ARCFACE_TINY, write_arcface, write_fid_inception, write_fid_stats, write_vgg16  # noqa: E402

from visionattn.evaluation.face_metrics import (FIDMetric, IdentityDistanceMetric, LPIPSMetric,  # noqa: E402
                                                load_fid_statistics, to_8bit)


def _samples(n=3, seed=0, same=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        gt = torch.rand(3, 32, 32, generator=g)
        pred = gt.clone() if same else (gt + 0.2 * torch.rand(3, 32, 32, generator=g)).clamp(0, 1)
        out.append(dict(gt=gt, pred=pred))
    return out


def _score(metric, samples):
    metric.process(None, samples)
    return metric.compute_metrics(metric.results)


def test_lpips_metric(tmp_path):
    vgg = write_vgg16(tmp_path / "vgg16.pth")
    assert _score(LPIPSMetric(vgg_path=str(vgg)), _samples(same=True))["lpips"] == pytest.approx(0, abs=1e-6)
    metric = LPIPSMetric(vgg_path=str(vgg))
    score = _score(metric, _samples())["lpips"]
    # the metric is the lpips network's distance of the 8-bit images in [-1, 1], averaged
    s = _samples()[0]
    direct = metric.net(to_8bit(s["pred"])[None] * 2 - 1, to_8bit(s["gt"])[None] * 2 - 1).item()
    assert score > 0 and metric.results[0] == pytest.approx(direct, rel=1e-5)
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        LPIPSMetric(vgg_path=str(tmp_path / "missing.pth"))


def test_identity_distance_metric(tmp_path):
    path = write_arcface(tmp_path / "arcface.pth")
    same = _score(IdentityDistanceMetric(str(path), arcface_kwargs=ARCFACE_TINY), _samples(same=True))["idd"]
    assert same == pytest.approx(0, abs=1e-3)
    bgr = IdentityDistanceMetric(str(path), arcface_kwargs=ARCFACE_TINY)
    rgb = IdentityDistanceMetric(str(path), channel_order="rgb", arcface_kwargs=ARCFACE_TINY)
    a, b = _score(bgr, _samples())["idd"], _score(rgb, _samples())["idd"]
    assert 0 < a <= math.pi and a != pytest.approx(b)
    # arccos of the cosine of the two embeddings
    s = _samples()[0]
    e1, e2 = bgr.embed(to_8bit(s["pred"])), bgr.embed(to_8bit(s["gt"]))
    assert bgr.results[0] == pytest.approx(math.acos(np.dot(e1, e2) / np.linalg.norm(e1) / np.linalg.norm(e2)))
    with pytest.raises(FileNotFoundError, match="arcface_resnet18.pth"):
        IdentityDistanceMetric(str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="channel_order"):
        IdentityDistanceMetric(str(path), channel_order="yuv", arcface_kwargs=ARCFACE_TINY)


@pytest.mark.slow
def test_fid_metric(tmp_path):
    """The full Inception at 299 px: about 30 s on two CPU cores."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    inception = write_fid_inception(tmp_path / "pt_inception.pth")
    stats = write_fid_stats(tmp_path / "inception_FFHQ_512.pth")
    metric = FIDMetric(str(stats), inception_path=str(inception), batch_size=2)
    samples = _samples(n=4)
    fid = _score(metric, samples)["fid"]
    feats = metric.features(torch.stack([to_8bit(s["pred"]) for s in samples]))
    assert feats.shape == (4, 2048)
    mean, cov = load_fid_statistics(stats)
    assert fid == pytest.approx(calculate_frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), mean, cov),
                                rel=1e-6)
    np.savez(tmp_path / "own.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    own = FIDMetric(str(tmp_path / "own.npz"), inception_path=str(inception))
    assert _score(own, samples)["fid"] == pytest.approx(0, abs=1e-3)  # a set against its own statistics
    with pytest.raises(ValueError, match="at least 2 images"):
        own.compute_metrics(own.results[:1])


def test_fid_statistics_files_and_missing_weights(tmp_path):
    stats = write_fid_stats(tmp_path / "inception_FFHQ_512.pth", dim=16)
    mean, cov = load_fid_statistics(stats)
    assert mean.shape == (16,) and cov.shape == (16, 16) and mean.dtype == np.float64
    np.savez(tmp_path / "ref.npz", mu=mean, sigma=cov)
    mean2, cov2 = load_fid_statistics(tmp_path / "ref.npz")
    np.testing.assert_array_equal(mean, mean2)
    torch.save(dict(mu=mean), tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="'mean' and 'cov'"):
        load_fid_statistics(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="FFHQ-512"):
        FIDMetric(str(tmp_path / "missing_stats.pth"))
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        FIDMetric(str(stats), inception_path=str(tmp_path / "missing.pth"))
