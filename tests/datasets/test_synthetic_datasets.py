"""In-memory synthetic sets: the item formats of the real readers, the same pool in every process, exact stereo."""
import pytest
import torch
from mmengine.dataset import default_collate

from visionattn.datasets.synthetic import SyntheticClassification, SyntheticStereo
from visionattn.registry import DATASETS


def test_classification_items_and_determinism():
    ds = DATASETS.build(dict(type="SyntheticClassification", length=50, num_classes=4, input_size=(16, 24), pool=8))
    assert len(ds) == 50 and ds.metainfo["classes"][3] == "class_3"
    item = ds[13]
    assert item["inputs"].dtype == torch.uint8 and item["inputs"].shape == (3, 16, 24)
    assert item["data_samples"] == dict(label=13 % 8 % 4)
    assert torch.equal(ds[13]["inputs"], ds[5]["inputs"])  # item i is pool sample i % pool
    again = SyntheticClassification(length=50, num_classes=4, input_size=(16, 24), pool=8)
    assert torch.equal(again.images, ds.images)  # same seed: every rank builds the same pool
    other = SyntheticClassification(length=50, num_classes=4, input_size=(16, 24), pool=8, seed=1)
    assert not torch.equal(other.images, ds.images)
    batch = default_collate([ds[i] for i in range(4)])
    assert batch["inputs"].shape == (4, 3, 16, 24) and batch["data_samples"]["label"].tolist() == [0, 1, 2, 3]
    # images of a class share its pattern: closer to each other than to another class's
    img = ds.images.float()
    assert (img[0] - img[4]).abs().mean() < (img[0] - img[1]).abs().mean()
    with pytest.raises(IndexError):
        ds[50]


def test_stereo_pairs_are_exact():
    ds = SyntheticStereo(length=10, crop_size=(32, 64), disparity_range=(2, 9), pool=5)
    for i in range(5):
        item = ds[i]
        left, right = item["inputs"].float()
        s = item["data_samples"]
        d = int(s["disp"][0, 0, 0])
        assert 2 <= d <= 9 and torch.all(s["disp"] == d) and torch.equal(s["disp_right"], s["disp"])
        assert torch.equal(right[:, :, d:], left[:, :, :-d])  # right(x) = left(x - d)
        assert s["valid"].dtype == torch.bool and s["valid"].shape == (1, 32, 64)
        assert not s["valid"][..., :d].any() and s["valid"][..., d:].all()  # left x matches right x - d >= 0
        assert s["valid_right"][..., :64 - d].all() and not s["valid_right"][..., 64 - d:].any()
    assert item["inputs"].shape == (2, 3, 32, 64) and item["inputs"].dtype == torch.uint8
    assert torch.equal(ds[7]["inputs"], ds[2]["inputs"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="pool=0"):
        SyntheticClassification(pool=0)
    with pytest.raises(ValueError, match="disparity_range"):
        SyntheticStereo(crop_size=(32, 64), disparity_range=(4, 64))
