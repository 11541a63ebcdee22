"""Face degradation model (seeded steps, pair transforms that keep boxes on the content) and the
face readers (FFHQ folder and LMDB, landmarks, paired test folders, single photos)."""
import math

import cv2
import numpy as np
import pytest
import torch

from visionattn.datasets.degradations import build_degradation
from visionattn.datasets.face_degradations import (FaceFlip, GaussianNoise, Haze, JPEGCompression, MakeLQ, Quantize,
                                                   RandomDownsample, RandomGaussianBlur, RandomGrayscale, RandomShift,
                                                   UnevenMix, gaussian_kernel)
from visionattn.datasets.faces import (FFHQFaces, PairedFaces, component_boxes, landmark_key, load_components)

RF_PP = [dict(type="RandomGaussianBlur", kernel_size=(5, 7), sigma=(0.1, 2.0)), dict(type="Haze", prob=0.5),
         dict(type="RandomDownsample", scale=(0.8, 4.0),
              inner=[dict(type="GaussianNoise", sigma=(0, 20)), dict(type="JPEGCompression", quality=(60, 100))])]


def _face(size=64, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (size, size, 3)).astype(np.float32)


def test_gaussian_kernels():
    iso = gaussian_kernel(21, 2.0, 2.0, 0.3)
    assert iso.shape == (21, 21) and iso.sum() == pytest.approx(1, abs=1e-5)
    np.testing.assert_allclose(iso, iso.T, atol=1e-7)  # isotropic: rotation does nothing
    wide_x = gaussian_kernel(21, 4.0, 1.0, 0.0)
    np.testing.assert_allclose(gaussian_kernel(21, 4.0, 1.0, math.pi / 2), wide_x.T, atol=1e-6)
    assert wide_x[10].sum() > wide_x[:, 10].sum()  # spread along x (columns)
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(4, 1, 1, 0)


@pytest.mark.parametrize("step", [RandomGaussianBlur(), Haze(prob=1.0), RandomDownsample(),
                                  GaussianNoise(), JPEGCompression(), UnevenMix(RF_PP, prob=1.0)],
                         ids=lambda s: type(s).__name__)
def test_each_degradation_is_reproducible_from_its_generator(step):
    img = _face()
    a = step(img.copy(), np.random.default_rng(3))
    b = step(img.copy(), np.random.default_rng(3))
    c = step(img.copy(), np.random.default_rng(4))
    assert a.shape == img.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1 + 1e-6
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, img)


def test_degradation_values():
    img = _face()
    hazy = Haze(prob=1.0, alpha=(0.8, 0.8))(img, np.random.default_rng(0))
    np.testing.assert_allclose(hazy, img * 0.8 + 0.2, atol=1e-6)
    smooth = cv2.GaussianBlur(img, (0, 0), 3)
    jpeg = JPEGCompression(quality=(100, 100))(smooth, np.random.default_rng(0))
    assert np.abs(jpeg - smooth).mean() < 0.01
    noisy = GaussianNoise(sigma=(10, 10))(np.full((64, 64, 3), 0.5, np.float32), np.random.default_rng(0))
    assert (noisy - 0.5).std() == pytest.approx(10 / 255, rel=0.05)
    down = RandomDownsample(scale=(4, 4))(img, np.random.default_rng(0))
    assert down.shape == img.shape and down.std() < img.std()
    q = Quantize(keys=["lq"])(dict(lq=np.float32([[[0.5012, 0.1, 1.2]]])))["lq"]
    np.testing.assert_allclose(q * 255, np.round(q * 255), atol=1e-4)
    for bad in (lambda: Haze(prob=1.5), lambda: GaussianNoise(sigma=(5, 1)), lambda: RandomGaussianBlur(kernel_types=["box"]),
                lambda: JPEGCompression(quality=(50, 120))):
        with pytest.raises(ValueError):
            bad()


def test_uneven_mix_takes_a_square_from_the_first_copy():
    calls = []

    def constant(image, rng):  # copy k is all k
        calls.append(1)
        return np.full_like(image, len(calls) / 10)

    out = UnevenMix(constant, prob=1.0, patch_fraction=(0.25, 0.5))(_face(), np.random.default_rng(0))
    first = np.argwhere(out[..., 0] == np.float32(0.1))
    side = first.max(0) - first.min(0) + 1
    assert side[0] == side[1] and 16 <= side[0] <= 32 and len(first) == side[0] * side[1]
    assert set(np.unique(out)) == {np.float32(0.1), np.float32(0.2)}


def _marked(size=64):
    """A black image with white squares inside a left-eye, right-eye and mouth box."""
    boxes = np.float32([[10, 20, 19, 29], [40, 20, 49, 29], [22, 44, 41, 53]])
    img = np.zeros((size, size, 3), np.float32)
    img[22:28, 12:18] = 1.0  # only the left eye is marked
    return img, boxes


def _inside(img, box):
    x1, y1, x2, y2 = np.round(box).astype(int)
    return img[max(y1, 0):y2, max(x1, 0):x2, 0].sum()


def test_flip_and_shift_keep_the_boxes_on_the_content():
    img, boxes = _marked()
    r = FaceFlip(prob=1.0)(dict(gt=img, components=boxes, rng=np.random.default_rng(0)))
    # the marked (image-left) eye is now on the image's right, inside the right-eye box (index 1)
    assert _inside(r["gt"], r["components"][1]) == img[..., 0].sum()
    np.testing.assert_allclose(r["components"][1], [64 + 1 - 19, 20, 64 + 1 - 10, 29])
    for seed in range(5):
        r = RandomShift(prob=1.0, max_shift=8)(dict(gt=img, lq=img, components=boxes, rng=np.random.default_rng(seed)))
        assert _inside(r["gt"], r["components"][0]) == pytest.approx(img[..., 0].sum())
        np.testing.assert_array_equal(r["gt"], r["lq"])


def test_grayscale_and_make_lq():
    img = _face()
    r = RandomGrayscale(prob=1.0)(MakeLQ(RF_PP)(dict(gt=img, rng=np.random.default_rng(0))))
    for key in ("lq", "gt"):
        assert np.allclose(r[key][..., 0], r[key][..., 2])
    r = RandomGrayscale(prob=1.0, gt_too=False)(dict(gt=img, lq=img.copy(), rng=np.random.default_rng(0)))
    assert not np.allclose(r["gt"][..., 0], r["gt"][..., 2])
    assert build_degradation(RF_PP)(img, np.random.default_rng(1)).shape == img.shape


# --- readers ----------------------------------------------------------------------------------------

PIPELINE = [dict(type="FaceFlip", prob=0.5), dict(type="RandomShift", prob=0.5, max_shift=4),
            dict(type="MakeLQ", degradation=RF_PP), dict(type="Quantize", keys=["lq"])]


def test_ffhq_folder_and_lmdb_read_the_same(samples_root):
    pytest.importorskip("lmdb", reason="needs the face extra")
    faces = samples_root / "faces"
    folder = FFHQFaces(faces / "ffhq", size=64)
    lmdb = FFHQFaces(faces / "ffhq.lmdb", size=64)
    assert folder.names == lmdb.names == [f"{i:05d}" for i in range(8)]
    for i in (0, 7):
        a, b = folder[i], lmdb[i]
        torch.testing.assert_close(a["inputs"], b["inputs"], rtol=0, atol=0)
        assert a["inputs"].shape == (3, 64, 64) and torch.equal(a["inputs"], a["data_samples"]["gt"])  # no LQ step
    with pytest.raises(ValueError, match="expects 32x32"):
        FFHQFaces(faces / "ffhq", size=32)[0]


def test_ffhq_pipeline_components_and_seeds(samples_root):
    faces = samples_root / "faces"
    landmarks = faces / "ffhq_eye_mouth_landmarks.pth"
    fixed = FFHQFaces(faces / "ffhq", pipeline=PIPELINE, components=landmarks, seed=5)
    a, b = fixed[3], fixed[3]
    torch.testing.assert_close(a["inputs"], b["inputs"], rtol=0, atol=0)
    assert not torch.equal(a["inputs"], a["data_samples"]["gt"])
    assert a["data_samples"]["components"].shape == (3, 4)
    lq = a["inputs"] * 255
    torch.testing.assert_close(lq, lq.round(), rtol=0, atol=1e-3)  # 8-bit LQ
    fresh = FFHQFaces(faces / "ffhq", pipeline=PIPELINE, seed=None)
    torch.manual_seed(0)
    draws = [fresh[3]["inputs"] for _ in range(3)]
    assert not (torch.equal(draws[0], draws[1]) and torch.equal(draws[1], draws[2]))
    marks = load_components(landmarks)
    assert landmark_key("00003") == "00000003" and marks["00000003"].shape == (3, 3)
    boxes = component_boxes(marks["00000003"], eye_enlarge=1.4)
    x, y, half = marks["00000003"][0]
    np.testing.assert_allclose(boxes[0], [x - 1.4 * half + 1, y - 1.4 * half + 1, x + 1.4 * half, y + 1.4 * half],
                               rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="FFHQ_eye_mouth_landmarks_512"):
        load_components(faces / "nope.pth")
    with pytest.raises(FileNotFoundError, match="datasets/ffhq/README.md"):
        FFHQFaces(faces / "missing")


def test_paired_faces_and_photos(samples_root, tmp_path):
    test = samples_root / "faces" / "celeba_test"
    pairs = PairedFaces(test)
    assert len(pairs) == 4 and set(pairs[0]["data_samples"]) == {"gt", "name"}
    assert "gt" not in PairedFaces(test, gt_dir=None)[0]["data_samples"]
    photo = PairedFaces(samples_root / "faces" / "photos" / "photo_1.png")
    assert len(photo) == 1 and photo[0]["inputs"].shape == (3, 80, 72)
    (tmp_path / "lq").mkdir()
    (tmp_path / "gt").mkdir()
    cv2.imwrite(str(tmp_path / "lq" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="have no GT"):
        PairedFaces(tmp_path)
