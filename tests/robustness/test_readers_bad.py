"""Every reader x damaged files: the sample writers' files, truncated, garbled, emptied, resized or
re-encoded. Each must fail with the library's own error naming the file and the problem (never an
exception escaping from PIL, OpenCV, numpy, nibabel or pickle); a data pickle never runs code; the
opt-in SkipCorruptSamples mode skips and counts corrupt samples."""
import os
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from library_errors import ANY_ERROR, expect_library_error
from visionattn.datasets import (CIFAR10, CIFAR100, Food101, ImageNetFolder, KITTIStereoDataset, MiddleburyDataset,
                                 SceneFlowDataset, SkipCorruptSamples, TinyImageNet)
from visionattn.datasets import medical_io as mio
from visionattn.datasets.corrupt import CorruptSampleError
from visionattn.datasets.faces import PairedFaces
from visionattn.datasets.paired_restoration import PairedSliceDataset
from visionattn.datasets.sample_writers import write_samples
from visionattn.datasets.stereo import read_pfm, write_pfm


# --- damage -------------------------------------------------------------------------------------

def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


def garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    start = min(len(data) // 4, 64)
    data[start:] = rng.integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def empty(path: Path) -> None:
    path.write_bytes(b"")


BYTE_DAMAGE = {"truncated": truncate, "garbled": garble, "empty": empty}


def pfm_with(path: Path, header=b"Pf", dims=None, scale=b"-1") -> None:
    """Rewrite ``path`` (a PFM) with another header line, size line or scale line."""
    arr = read_pfm(path)
    dims = dims if dims is not None else f"{arr.shape[1]} {arr.shape[0]}".encode()
    path.write_bytes(header + b"\n" + dims + b"\n" + scale + b"\n" + np.flipud(arr).astype("<f4").tobytes())


PFM_DAMAGE = {
    "scale 0": lambda p: pfm_with(p, scale=b"0"),
    "scale not a number": lambda p: pfm_with(p, scale=b"minus one"),
    "scale inf": lambda p: pfm_with(p, scale=b"inf"),
    "zero width": lambda p: pfm_with(p, dims=b"0 200"),
    "size not numbers": lambda p: pfm_with(p, dims=b"wide high"),
    "huge size": lambda p: pfm_with(p, dims=b"99999999 2"),
    "bad header": lambda p: pfm_with(p, header=b"P6"),
    "3-channel disparity": lambda p: write_pfm(p, np.repeat(read_pfm(p)[..., None], 3, axis=2)),
    "other size": lambda p: write_pfm(p, read_pfm(p)[:100, :120]),
    "truncated": truncate,
}


def png_16bit(path: Path, transform) -> None:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), transform(raw))


KITTI_DAMAGE = {
    "3-channel 16-bit": lambda p: png_16bit(p, lambda r: np.repeat(r[..., None], 3, axis=2)),
    "8-bit": lambda p: png_16bit(p, lambda r: (r // 256).astype(np.uint8)),
    "other size": lambda p: png_16bit(p, lambda r: r[:100, :120]),
    **BYTE_DAMAGE,
}


def resized_image(path: Path) -> None:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), img[: img.shape[0] // 2])


IMAGE_DAMAGE = {**BYTE_DAMAGE, "other size": resized_image}


# --- sample copies --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    write_samples(root, ["imagenet", "food101", "cifar10", "cifar100", "tiny_imagenet", "sceneflow", "kitti2015",
                         "middlebury", "restoration_medical", "faces"])
    return root


@pytest.fixture
def copy(pristine, tmp_path):
    def make(name: str) -> Path:
        shutil.copytree(pristine / name, tmp_path / name)
        return tmp_path / name

    return make


def read_all(dataset) -> None:
    for i in range(len(dataset)):
        dataset[i]


def read_one(dataset, path: Path) -> None:
    """The item of ``path`` (image readers keep ``paths``)."""
    index = [str(p) for p in dataset.paths].index(str(path))
    dataset[index]


# --- cases ------------------------------------------------------------------------------------------

def _stereo_cases():
    cases = []
    sf_left = "FlyingThings3D/frames_cleanpass/TRAIN/A/0000/left/0006.png"
    sf_right = "FlyingThings3D/frames_cleanpass/TRAIN/A/0000/right/0006.png"
    sf_disp = "FlyingThings3D/disparity/TRAIN/A/0000/left/0006.pfm"
    sf_disp_right = "FlyingThings3D/disparity/TRAIN/A/0000/right/0006.pfm"
    for kind, damage in PFM_DAMAGE.items():
        cases.append(("sceneflow", sf_disp, kind, damage))
    cases.append(("sceneflow", sf_disp_right, "other size", PFM_DAMAGE["other size"]))
    for kind, damage in IMAGE_DAMAGE.items():
        cases.append(("sceneflow", sf_left, kind, damage))
    cases.append(("sceneflow", sf_right, "other size", resized_image))
    for kind, damage in KITTI_DAMAGE.items():
        cases.append(("kitti2015", "training/disp_occ_0/000000_10.png", kind, damage))
    cases.append(("kitti2015", "training/disp_noc_0/000000_10.png", "other size", KITTI_DAMAGE["other size"]))
    for kind, damage in IMAGE_DAMAGE.items():
        cases.append(("kitti2015", "training/image_3/000000_10.png", kind, damage))
    for kind, damage in PFM_DAMAGE.items():
        cases.append(("middlebury", "trainingQ/Adirondack/disp0GT.pfm", kind, damage))
    for kind, damage in IMAGE_DAMAGE.items():
        cases.append(("middlebury", "trainingQ/Adirondack/im1.png", kind, damage))
    cases.append(("middlebury", "trainingQ/Adirondack/mask0nocc.png", "other size", resized_image))
    cases.append(("middlebury", "trainingQ/Adirondack/mask0nocc.png", "truncated", truncate))
    return cases


STEREO_CASES = _stereo_cases()
STEREO = {"sceneflow": lambda root: SceneFlowDataset(str(root)),
          "kitti2015": lambda root: KITTIStereoDataset(str(root)),
          "middlebury": lambda root: MiddleburyDataset(str(root))}


@pytest.mark.parametrize("name,rel,kind,damage", STEREO_CASES, ids=[f"{c[0]}:{Path(c[1]).parent.name}/{Path(c[1]).name}:{c[2]}" for c in STEREO_CASES])
def test_stereo_reader_names_the_damaged_file(copy, name, rel, kind, damage):
    root = copy(name)
    damage(root / rel)
    expect_library_error(lambda: read_all(STEREO[name](root)), names=[str(root / rel)], types=ANY_ERROR)


IMAGE_READERS = {
    "imagenet": (lambda root: ImageNetFolder(str(root), "train"), "train/star_white/star_white_0000.JPEG"),
    "food101": (lambda root: Food101(root, "train"), "food-101/images/apple_pie/100000.jpg"),
    "tiny_imagenet": (lambda root: TinyImageNet(root, "train"), None),
}


@pytest.mark.parametrize("kind", sorted(BYTE_DAMAGE))
@pytest.mark.parametrize("name", sorted(IMAGE_READERS))
def test_image_reader_names_the_damaged_image(copy, name, kind):
    root = copy(name)
    build, rel = IMAGE_READERS[name]
    dataset = build(root)
    path = Path(dataset.paths[0]) if rel is None else root / rel
    BYTE_DAMAGE[kind](path)
    err = expect_library_error(lambda: read_one(dataset, path), names=[str(path)], types=(CorruptSampleError,))
    assert err.path == str(path)


FOOD_LISTS = {
    "empty train list": ("food-101/meta/train.txt", lambda p: p.write_text("")),
    "blank train list": ("food-101/meta/train.txt", lambda p: p.write_text("\n\n")),
    "empty class list": ("food-101/meta/classes.txt", lambda p: p.write_text("")),
    "unknown class": ("food-101/meta/train.txt", lambda p: p.write_text("pizza/1\n")),
    "not text": ("food-101/meta/train.txt", lambda p: p.write_bytes(b"\xff\xfe\x00garbage")),
}


@pytest.mark.parametrize("kind", sorted(FOOD_LISTS))
def test_food101_lists(copy, kind):
    root = copy("food101")
    rel, damage = FOOD_LISTS[kind]
    damage(root / rel)
    expect_library_error(lambda: Food101(root, "train"), names=[str(root / rel)], types=ANY_ERROR)


TINY_LISTS = {
    "no tab": lambda p: p.write_text("val_0.JPEG n000\n"),
    "unknown wnid": lambda p: p.write_text("val_0.JPEG\tn99999999\t0\t0\t8\t8\n"),
    "not text": lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
}


@pytest.mark.parametrize("kind", sorted(TINY_LISTS))
def test_tiny_imagenet_annotations(copy, kind):
    root = copy("tiny_imagenet")
    ann = next(root.glob("**/val/val_annotations.txt"))
    TINY_LISTS[kind](ann)
    expect_library_error(lambda: TinyImageNet(root, "val"), names=[str(ann)], types=(CorruptSampleError,))


def _dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _load(path: Path):
    return pickle.loads(path.read_bytes(), encoding="bytes")


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


CIFAR_DAMAGE = {
    **BYTE_DAMAGE,
    "no data": lambda p: _dump(p, {k: v for k, v in _load(p).items() if k != b"data"}),
    "no labels": lambda p: _dump(p, {k: v for k, v in _load(p).items() if b"labels" not in k}),
    "data of another shape": lambda p: _dump(p, {**_load(p), b"data": np.zeros((4, 100), np.uint8)}),
    "fewer labels": lambda p: _dump(p, {k: (v[:1] if b"labels" in k else v) for k, v in _load(p).items()}),
    "a list, not a dict": lambda p: _dump(p, [1, 2, 3]),
    "runs code": lambda p: _dump(p, {b"data": RunsCode()}),
}
CIFAR = {"cifar10": (CIFAR10, "cifar-10-batches-py/data_batch_1"), "cifar100": (CIFAR100, "cifar-100-python/train")}


@pytest.mark.parametrize("kind", sorted(CIFAR_DAMAGE))
@pytest.mark.parametrize("name", sorted(CIFAR))
def test_cifar_batches(copy, name, kind, tmp_path, monkeypatch):
    root = copy(name)
    cls, rel = CIFAR[name]
    CIFAR_DAMAGE[kind](root / rel)
    monkeypatch.chdir(tmp_path)
    err = expect_library_error(lambda: cls(root, "train"), names=[str(root / rel)], types=ANY_ERROR)
    if kind == "runs code":
        assert "os" in str(err) and "not a numpy array" in str(err) and not (tmp_path / "PWNED_BY_PICKLE").exists()


SLICE_DAMAGE = {
    ".bin": {**BYTE_DAMAGE, "runs code": lambda p: _dump(p, RunsCode()),
             "a dict": lambda p: _dump(p, {"a": 1}), "strings": lambda p: _dump(p, np.array(["a", "b"]))},
    ".npy": {**BYTE_DAMAGE, "object array": lambda p: np.save(p, np.array([{"a": 1}], dtype=object),
                                                              allow_pickle=True)},
    ".png": BYTE_DAMAGE,
    ".tif": BYTE_DAMAGE,
    ".nii": {**BYTE_DAMAGE, "header only": lambda p: truncate(p, keep=352 / p.stat().st_size)},
    ".nii.gz": BYTE_DAMAGE,
}


def _slice_file(root: Path, suffix: str, tmp: Path) -> Path:
    """A sample slice/volume of the medical set in ``suffix``'s format."""
    rr = root / "restore_rwkv" / "MRI"
    if suffix == ".bin":
        return rr / "train" / "LQ" / "MRI000_050.bin"
    if suffix == ".nii":
        return rr / "test" / "LQ" / "MRI100.nii"
    if suffix == ".png":
        return root / "png" / "LQ" / "slice_000.png"
    arr = mio.read_slice(rr / "train" / "HQ" / "MRI000_050.bin")
    path = tmp / f"slice{suffix}"
    if suffix == ".npy":
        np.save(path, arr)
    elif suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, arr.astype(np.float32))
    else:
        vol, affine, header = mio.read_nifti(rr / "test" / "LQ" / "MRI100.nii")
        mio.write_nifti(path, vol, affine, header)
    return path


SLICE_CASES = [(s, k) for s, kinds in SLICE_DAMAGE.items() for k in kinds]


@pytest.mark.parametrize("suffix,kind", SLICE_CASES, ids=[f"{s}:{k}" for s, k in SLICE_CASES])
def test_medical_slices_and_volumes(copy, tmp_path, monkeypatch, suffix, kind):
    root = copy("restoration_medical")
    path = _slice_file(root, suffix, tmp_path)
    (mio.read_nifti if suffix.startswith(".nii") else mio.read_slice)(path)  # the intact file reads
    SLICE_DAMAGE[suffix][kind](path)
    monkeypatch.chdir(tmp_path)
    read = mio.read_nifti if suffix.startswith(".nii") else mio.read_slice
    expect_library_error(lambda: read(path), names=[str(path)], types=ANY_ERROR)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


@pytest.mark.parametrize("kind", ["truncated", "garbled"])
def test_dicom_series_names_the_damaged_file(copy, kind):
    root = copy("restoration_medical")
    folder = root / "aapm" / "L000" / "full_1mm"
    path = sorted(folder.iterdir())[0]
    BYTE_DAMAGE[kind](path) if kind != "truncated" else truncate(path, keep=0.8)
    expect_library_error(lambda: mio.read_dicom_series(folder), names=[str(path)], types=(CorruptSampleError,))


def test_corrupt_sample_error_survives_pickling_and_worker_reraise():
    err = CorruptSampleError("/data/x.png", "truncated")
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, CorruptSampleError) and str(again) == str(err)
    assert str(CorruptSampleError(str(err))) == str(err)  # how DataLoader workers rebuild it


@pytest.mark.parametrize("rel", ["restore_rwkv/MRI/train/HQ/MRI001_050.bin", "restore_rwkv/MRI/test/HQ/MRI100.nii"])
def test_paired_slice_dataset_names_the_corrupt_file(copy, rel):
    root = copy("restoration_medical")
    truncate(root / rel)
    split = rel.split("/")[2]
    expect_library_error(lambda: PairedSliceDataset(root / "restore_rwkv", layout="restore_rwkv", split=split,
                                                    modalities=("MRI",)), names=[str(root / rel)], types=ANY_ERROR)


@pytest.mark.parametrize("kind", sorted(BYTE_DAMAGE))
def test_face_test_set_names_the_damaged_image(copy, kind):
    root = copy("faces") / "celeba_test"
    path = sorted((root / "lq").iterdir())[0]
    BYTE_DAMAGE[kind](path)
    expect_library_error(lambda: read_all(PairedFaces(root)), names=[str(path)], types=(CorruptSampleError,))


def test_skip_corrupt_samples_counts_and_logs(copy, caplog):
    root = copy("imagenet")
    inner = ImageNetFolder(str(root), "val")
    bad = [Path(inner.paths[i]) for i in (0, 3)]
    for path in bad:
        truncate(path)
    dataset = SkipCorruptSamples(inner, max_skipped=5)
    assert len(dataset) == len(inner) and dataset.metainfo == inner.metainfo
    item = dataset[0]  # replaced by the next readable sample
    assert item["data_samples"]["label"] == int(inner.labels[1])
    read_all(dataset)
    assert dataset.skipped == 2 and set(dataset.skipped_files) == {str(p) for p in bad}
    strict = SkipCorruptSamples(ImageNetFolder(str(root), "val"), max_skipped=1)
    strict[0]
    expect_library_error(lambda: read_all(strict), names=["max_skipped=1", str(bad[1])], types=(CorruptSampleError,))
    with pytest.raises(ValueError, match="max_skipped"):
        SkipCorruptSamples(inner, max_skipped=-1)
    # the wrapper is a registered dataset: configs wrap a dataset config in it
    from visionattn.registry import DATASETS

    built = DATASETS.build(dict(type="SkipCorruptSamples", dataset=dict(type="ImageNetFolder", root=str(root),
                                                                          split="val")))
    read_all(built)
    assert built.skipped == 2
