"""Medical readers, intensity windows, degradations and the paired slice dataset on real-format samples."""
import numpy as np
import pytest
import torch

from visionattn.datasets import medical_io as mio
from visionattn.datasets.degradations import (Compose, Degrade, KSpaceTruncation, LowDoseCTNoise,
                                               PETCountSubsampling, build_degradation)
from visionattn.datasets.intensity import IntensityWindow, window
from visionattn.datasets.paired_restoration import PairedSliceDataset


@pytest.fixture(scope="module")
def root(samples_root):
    return samples_root / "restoration_medical"


def test_readers(root, tmp_path):
    vol, affine, _ = mio.read_nifti(root / "restore_rwkv/MRI/test/HQ/MRI100.nii")
    assert vol.shape == (32, 32, 2) and affine.shape == (4, 4)
    assert len(mio.nifti_slices(root / "restore_rwkv/MRI/test/HQ/MRI100.nii", axis=0)) == 32
    ct = mio.read_dicom_series(root / "aapm/L000/full_1mm")
    assert ct.shape == (2, 32, 32) and ct.min() >= -1024 and ct.min() < -900  # HU after rescale
    assert mio.read_slice(root / "png/HQ/slice_000.png").max() > 1000  # 16-bit kept
    np.save(tmp_path / "a.npy", np.ones((4, 5)))
    assert mio.read_slice(tmp_path / "a.npy").shape == (4, 5)
    with pytest.raises(FileNotFoundError):
        mio.read_slice(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="unsupported"):
        (tmp_path / "x.jpg").write_bytes(b"")
        mio.read_slice(tmp_path / "x.jpg")


def test_tiff_and_nifti_roundtrip(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "s.tif", np.arange(12, dtype=np.float32).reshape(3, 4))
    assert mio.read_slice(tmp_path / "s.tif")[2, 3] == 11
    mio.write_nifti(tmp_path / "v.nii.gz", np.ones((3, 4, 5)), affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    vol, aff, _ = mio.read_nifti(tmp_path / "v.nii.gz")
    assert vol.shape == (3, 4, 5) and aff[2, 2] == 3.0


def test_windows():
    w = window("CT")
    assert (w.lo, w.hi) == (-1024.0, 3072.0) and window("CT", "test").hi == 240.0
    x = np.array([-2000.0, -1024.0, 3072.0, 5000.0])
    np.testing.assert_allclose(w.normalize(x), [0, 0, 1, 1])
    np.testing.assert_allclose(w.denormalize(w.normalize(np.array([100.0]))), [100.0])
    assert window((0, 2)).hi == 2.0
    with pytest.raises(ValueError, match="unknown modality"):
        window("XRAY")
    with pytest.raises(ValueError, match="hi > lo"):
        IntensityWindow(1.0, 0.0)


def test_kspace_truncation_is_lowpass():
    rng = np.random.default_rng(0)
    img = rng.random((32, 32))
    lq = KSpaceTruncation(4)(img)
    def high(x):  # spectral energy outside the kept central 8x8 block
        spec = np.abs(np.fft.fftshift(np.fft.fft2(x))) ** 2
        spec[12:20, 12:20] = 0
        return spec.sum()

    # the magnitude leaks a little energy out of the kept block, but far less than the input has
    assert high(lq) < 0.05 * high(img) and abs(lq.mean() - img.mean()) < 0.05
    np.testing.assert_allclose(KSpaceTruncation(1)(img), img, atol=1e-12)


def test_ct_noise_std_and_seed():
    hu = np.zeros((128, 128))
    lq = LowDoseCTNoise(0.25, full_dose_sigma=10.0)(hu, np.random.default_rng(0))
    assert abs(lq.std() - 10.0 * np.sqrt(3.0)) < 1.0
    d = Degrade(dict(type="LowDoseCTNoise", dose_fraction=0.5), seed=3)
    a, b = d(dict(gt=hu, index=1))["lq"], d(dict(gt=hu, index=1))["lq"]
    assert np.array_equal(a, b) and not np.array_equal(a, d(dict(gt=hu, index=2))["lq"])


def test_pet_subsampling_mean_and_variance():
    img = np.full((200, 200), 4.0)
    lq = PETCountSubsampling(drf=12, counts_per_unit=50)(img, np.random.default_rng(0))
    assert abs(lq.mean() - 4.0) < 0.05
    # binomial thinning of Poisson counts = Poisson(mean/drf): variance drf*mean/cpu
    assert abs(lq.var() - 12 * 4.0 / 50) < 0.1
    comp = build_degradation([dict(type="PETCountSubsampling", drf=4), dict(type="KSpaceTruncation", scale=2)])
    assert isinstance(comp, Compose) and comp(img, np.random.default_rng(0)).shape == img.shape


def test_dataset_layouts(root):
    ds = PairedSliceDataset(root / "restore_rwkv", layout="restore_rwkv", split="train", modalities=["MRI"], crop=16)
    item = ds[0]
    assert len(ds) == 2 and item["inputs"].shape == (1, 16, 16) and item["data_samples"]["gt"].shape == (1, 16, 16)
    assert 0 <= item["inputs"].min() and item["inputs"].max() <= 1
    test = PairedSliceDataset(root / "restore_rwkv", layout="restore_rwkv", split="test", modalities=["MRI"])
    assert len(test) == 2 and test[1]["data_samples"]["name"] == "MRI100_0001"
    ct = PairedSliceDataset(root / "aapm/L000", lq_dir="quarter_1mm", hq_dir="full_1mm", modality="CT")
    assert len(ct) == 2 and not torch.equal(ct[0]["inputs"], ct[0]["data_samples"]["gt"])
    png = PairedSliceDataset(root / "png", lq_dir="LQ", hq_dir="HQ", modality=(0, 65535))
    assert len(png) == 2 and png[0]["inputs"].max() <= 1
    made = PairedSliceDataset(root / "png", hq_dir="HQ", modality=(0, 65535),
                              degradation=dict(type="KSpaceTruncation", scale=2))
    assert made[0]["inputs"].shape == (1, 32, 32)
    with pytest.raises(FileNotFoundError):
        PairedSliceDataset(root / "nowhere", lq_dir="LQ", hq_dir="HQ")
    with pytest.raises(ValueError, match="degradation"):
        PairedSliceDataset(root / "png", hq_dir="HQ")
