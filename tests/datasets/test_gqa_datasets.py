"""CIFAR-10/100, Food-101 and Tiny-ImageNet readers on the sample sets written in the real formats."""
import pickle

import pytest
import torch

from visionattn.datasets.cifar import CIFAR10, CIFAR100, read_batch
from visionattn.datasets.food101 import Food101
from visionattn.datasets.tiny_imagenet import TinyImageNet
from visionattn.registry import DATASETS


def test_cifar(samples_root):
    train = CIFAR10(samples_root / "cifar10", "train")
    test = DATASETS.build(dict(type="CIFAR10", root=str(samples_root / "cifar10" / "cifar-10-batches-py"), split="test"))
    assert len(train) == 20 and len(test) == 5 and train.metainfo["classes"][0] == "airplane"
    item = train[3]
    assert item["inputs"].shape == (3, 32, 32) and item["inputs"].dtype == torch.uint8
    raw = read_batch(samples_root / "cifar10" / "cifar-10-batches-py" / "data_batch_1")
    assert item["data_samples"]["label"] == raw["labels"][3]
    # planes R, G, B of 1024 values each, row-major
    assert item["inputs"][1, 0, 5] == raw["data"][3][1024 + 5] and item["inputs"][2, 1, 0] == raw["data"][3][2048 + 32]
    c100 = CIFAR100(samples_root / "cifar100", "train")
    assert len(c100.classes) == 100 and len(c100) == 12
    assert c100[1]["data_samples"]["label"] == 7  # fine label


def test_cifar_refuses_foreign_pickles_and_missing_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [b"a"], "evil": pickle.loads(pickle.dumps(ValueError("x")))}, f)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        CIFAR10(tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        CIFAR100(tmp_path)
    with pytest.raises(ValueError, match="split"):
        CIFAR10(tmp_path, "val")


def test_food101(samples_root):
    train, test = Food101(samples_root / "food101", "train"), Food101(samples_root / "food101" / "food-101", "test")
    assert len(train) == 9 and len(test) == 3 and train.classes == ("apple_pie", "baby_back_ribs", "baklava")
    assert [test[i]["data_samples"]["label"] for i in range(3)] == [0, 1, 2]
    assert train[0]["inputs"].shape[0] == 3


def test_tiny_imagenet(samples_root):
    train = TinyImageNet(samples_root / "tiny_imagenet", "train")
    val = DATASETS.build(dict(type="TinyImageNet", root=str(samples_root / "tiny_imagenet"), split="val"))
    assert train.classes == ("n01443537", "n01629819", "n02099601")  # sorted wnids
    assert len(train) == 9 and len(val) == 4
    # val_1 is annotated n02099601 (the 2nd wnid of wnids.txt, index 2 once sorted)
    assert val[1]["data_samples"]["label"] == 2 and val[1]["inputs"].shape == (3, 64, 64)
    with pytest.raises(FileNotFoundError, match="wnids.txt"):
        TinyImageNet(samples_root / "food101")


def test_uptraining_transform():
    from PIL import Image

    from visionattn.registry import TRANSFORMS

    img = Image.new("RGB", (32, 32), (10, 200, 30))
    for train in (True, False):
        out = TRANSFORMS.build(dict(type="UptrainingTransform", train=train, input_size=48))(img)
        assert out.shape == (3, 48, 48) and out.dtype == torch.uint8
