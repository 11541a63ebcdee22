"""Stereo readers on the sample sets written in the real formats; PFM / KITTI PNG round trips."""
import numpy as np
import pytest
import torch

from visionattn.datasets.stereo import (KITTIStereoDataset, MiddleburyDataset, SceneFlowDataset, StereoAugment,
                                        read_kitti_disparity, read_pfm, write_kitti_disparity, write_pfm)


def test_pfm_round_trip_is_bottom_up(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_pfm(tmp_path / "a.pfm", a)
    raw = (tmp_path / "a.pfm").read_bytes()
    # the first stored row is the bottom one
    assert np.frombuffer(raw[-48:-32], "<f4").tolist() == [8, 9, 10, 11]
    np.testing.assert_array_equal(read_pfm(tmp_path / "a.pfm"), a)
    rgb = np.random.rand(2, 3, 3).astype(np.float32)
    write_pfm(tmp_path / "b.pfm", rgb)
    np.testing.assert_array_equal(read_pfm(tmp_path / "b.pfm"), rgb)


def test_kitti_png_round_trip(tmp_path):
    d = np.array([[0.0, 1.5, 100.25]], np.float32)
    write_kitti_disparity(tmp_path / "d.png", d)
    disp, valid = read_kitti_disparity(tmp_path / "d.png")
    np.testing.assert_array_equal(disp, d)
    assert valid.tolist() == [[False, True, True]]


def test_sample_sets_load(samples_root):
    sf = SceneFlowDataset(samples_root / "sceneflow")
    assert len(sf) == 3
    item = sf[0]
    assert item["inputs"].shape == (2, 3, 200, 240) and item["inputs"].dtype == torch.uint8
    assert set(item["data_samples"]) >= {"disp", "valid", "disp_right", "valid_right"}
    assert len(SceneFlowDataset(samples_root / "sceneflow", subsets=("Monkaa",))) == 1

    kitti = KITTIStereoDataset(samples_root / "kitti2015")
    k = kitti[0]["data_samples"]
    assert 0.2 < k["valid"].float().mean() < 0.4 and (k["valid_noc"] <= k["valid"]).all()

    mb = MiddleburyDataset(samples_root / "middlebury")
    m = mb[0]["data_samples"]
    assert not m["valid"][0, :, :4].any() and m["valid"][0, :, 4:].all() and torch.isfinite(m["disp"]).all()


def test_bad_roots_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        KITTIStereoDataset(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no KITTI samples"):
        KITTIStereoDataset(tmp_path)
    with pytest.raises(ValueError, match="2012 or 2015"):
        KITTIStereoDataset(tmp_path, version=2013)


def test_augment_keeps_geometry(samples_root):
    ds = SceneFlowDataset(samples_root / "sceneflow", transform=StereoAugment((192, 224), scale_range=(1.0, 1.3),
                                                                              color_jitter=0.0, occlusion_prob=0.0, seed=0))
    item = ds[1]
    assert item["inputs"].shape == (2, 3, 192, 224)
    assert item["data_samples"]["disp"].shape == (1, 192, 224)
    # after scaling + crop the disparity still maps left pixels onto the same right pixels
    valid = item["data_samples"]["valid"]
    ys, xs = torch.nonzero(valid[0], as_tuple=True)
    d = item["data_samples"]["disp"][0][ys, xs]
    xr = (xs - d).round().long()
    keep = (xr >= 0) & (xr < 224)
    left, right = item["inputs"].float()
    err = (left[:, ys[keep], xs[keep]] - right[:, ys[keep], xr[keep]]).abs().mean()
    rand = (left[:, ys[keep], xs[keep]] - right[:, ys[keep], xs[keep]]).abs().mean()
    assert err < 0.5 * rand


def test_submission_layouts(tmp_path):
    from visionattn.datasets.stereo import write_submission

    d = np.random.rand(4, 5).astype(np.float32)
    p = write_submission(tmp_path, "middlebury", "Australia", d, 0.25)
    assert p == tmp_path / "MiddEval3_results/testF/Australia/disp0MatchStereo.pfm"
    assert (p.parent / "timeMatchStereo.txt").read_text() == "0.250000"
    np.testing.assert_array_equal(read_pfm(p), d)
    p = write_submission(tmp_path, "eth3d", "lakeside_1l", d, 0.5)
    assert p == tmp_path / "low_res_two_view/lakeside_1l.pfm"
    assert (tmp_path / "low_res_two_view/lakeside_1l.txt").read_text() == "runtime 0.500000"
    with pytest.raises(ValueError, match="middlebury"):
        write_submission(tmp_path, "kitti", "x", d, 0.1)


def test_synthetic_sceneflow_set_is_consistent(tmp_path):
    """The procedural training set: SceneFlow layout, and left(x) = right(x - d(x)) where visible."""
    from visionattn.datasets.sample_writers.stereo import _scene, write_sceneflow_synthetic

    write_sceneflow_synthetic(tmp_path, scenes=3, size=(96, 160), boxes=3, first=9)
    ds = SceneFlowDataset(tmp_path, subsets=("FlyingThings3D",))
    assert len(ds) == 3 and ds[0]["inputs"].shape == (2, 3, 96, 160)
    left, right, disp, disp_right, noc = _scene(5, 96, 160, boxes=4, slant=True)
    assert disp.max() > 14 and disp.std() > 1 and 0.7 < noc.mean() < 1  # boxes in front of a tilted plane
    ys, xs = np.nonzero(noc & (np.abs(disp - np.round(disp)) < 0.02))  # integer disparity: exact lookup
    err = np.abs(left[ys, xs].astype(int) - right[ys, xs - np.round(disp[ys, xs]).astype(int)].astype(int))
    assert len(ys) > 50 and err.mean() < 2, (len(ys), err.mean())
