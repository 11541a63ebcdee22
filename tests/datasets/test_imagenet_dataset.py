import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from visionattn.datasets import ImageNetFolder, classification_transform, model_data_config
from visionattn.datasets.sample_writers import write_samples
from visionattn.datasets.sample_writers.imagenet import CLASSES, SIZE, SPLITS


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sample_writer_layout_and_determinism(tmp_path):
    (tmp_path / "a" / "imagenet" / "train" / "stale_class").mkdir(parents=True)  # from an older writer
    a = write_samples(tmp_path / "a", ["imagenet"])["imagenet"]
    b = write_samples(tmp_path / "b", ["imagenet"])["imagenet"]
    files = _digest(a)
    assert files == _digest(b)  # byte-identical on rewrite
    for split, count in SPLITS.items():
        assert sorted(p.name for p in (a / split).iterdir()) == sorted(CLASSES)
        for name in CLASSES:
            jpegs = sorted((a / split / name).glob("*.JPEG"))
            assert len(jpegs) == count
    with Image.open(jpegs[0]) as img:
        assert img.format == "JPEG" and img.size == (SIZE, SIZE) and img.mode == "RGB"
    # splits hold different images
    assert files[f"train/{name}/{name}_0000.JPEG"] != files[f"val/{name}/{name}_0000.JPEG"]


def test_dataset_reads_folders(samples_root):
    root = samples_root / "imagenet"
    ds = ImageNetFolder(str(root), "val")
    assert ds.classes == tuple(sorted(CLASSES)) and ds.metainfo == dict(classes=ds.classes)
    assert len(ds) == SPLITS["val"] * len(CLASSES)
    item = ds[len(ds) - 1]
    assert item["inputs"].dtype == torch.uint8 and item["inputs"].shape == (3, SIZE, SIZE)
    assert item["data_samples"]["label"] == len(CLASSES) - 1
    # the label is the sorted position of the image's class folder
    path, label = ds.paths[13], ds.labels[13]
    assert ds.classes[label] == Path(path).parent.name


def test_dataset_builds_transform_from_config(samples_root):
    ds = ImageNetFolder(str(samples_root / "imagenet"), "train",
                        transform=dict(type="ClassificationTransform", train=True, input_size=32))
    x = ds[0]["inputs"]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32)


def test_missing_root_names_path_and_readme(tmp_path):
    missing = tmp_path / "no_imagenet_here"
    with pytest.raises(FileNotFoundError, match="datasets/README.md") as err:
        ImageNetFolder(str(missing), "train")
    assert str(missing / "train") in str(err.value)


def test_empty_split_is_an_error(tmp_path):
    (tmp_path / "train" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageNetFolder(str(tmp_path), "train")


def test_transforms_follow_deit_and_model_config(samples_root):
    img = Image.open(next((samples_root / "imagenet" / "val" / "circle_red").glob("*.JPEG"))).convert("RGB")
    train = classification_transform(train=True, input_size=48)
    names = [type(t).__name__ for t in train.transforms]
    assert names[:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    assert "RandAugment" in names  # DeiT's rand-m9-mstd0.5-inc1
    assert train(img).shape == (3, 48, 48) and train(img).dtype == torch.uint8
    evaluate = classification_transform(train=False, input_size=48)
    assert torch.equal(evaluate(img), evaluate(img))  # deterministic
    # sizes from a timm model's pretrained config (resnet10t trains at 176 px)
    assert model_data_config("resnet10t")["input_size"] == (3, 176, 176)
    assert classification_transform(train=False, model_name="resnet10t")(img).shape == (3, 176, 176)
    with pytest.raises(ValueError, match="not_a_model"):
        model_data_config("not_a_model")
