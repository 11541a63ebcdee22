"""visionattn-infer-face (tools/infer_face.py): aligned faces, padding, the errors that say what to pass, and the detection /
alignment / paste-back path (a stand-in facexlib detector with known landmarks; the real one needs
its weight file)."""
import math
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

import visionattn

# RestoreFormer++'s layout (six levels, MHCA at 16x16 and 32x32) at 32 channels, one block per level
TINY = dict(ch=32, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1, z_channels=32, embed_dim=32, n_embed=64)
TINY_ARGS = ["--model-kwargs", "ch=32", "ch_mult=(1,1,1,1,1,1)", "num_res_blocks=1", "z_channels=32",
             "embed_dim=32", "n_embed=64"]


def draw_face(template: np.ndarray) -> np.ndarray:
    """A synthetic 512x512 face in the aligned frame (skin oval; eyes, nose and mouth at the
    template's points), RGB uint8."""
    img = np.zeros((512, 512, 3), np.uint8)
    img[:] = (40, 90, 160)
    cv2.ellipse(img, (256, 300), (160, 210), 0, 0, 360, (220, 180, 150), -1)
    for x, y in template[:2]:
        cv2.circle(img, (int(x), int(y)), 20, (30, 30, 30), -1)
    cv2.circle(img, tuple(int(v) for v in template[2]), 12, (180, 120, 100), -1)
    cv2.line(img, tuple(int(v) for v in template[3]), tuple(int(v) for v in template[4]), (150, 40, 40), 8)
    return img


@pytest.fixture(scope="module")
def tool():
    from visionattn.cli import infer_face

    return infer_face


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = visionattn.create_model("restoreformerpp", **TINY)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def _expected(model, rgb):
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        y = model(x).clamp(-1, 1)
    return ((y[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


def test_aligned_face_padding_and_errors(tool, checkpoint, tmp_path, one_thread, capsys):
    ckpt, model = checkpoint
    face = draw_face(tool.FFHQ_TEMPLATE_512)
    cv2.imwrite(str(tmp_path / "face.png"), face[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "hq.png"), np.full((256, 256, 3), 200, np.uint8))  # other size: resized in the panel
    base = ["--model", "restoreformerpp", "--checkpoint", str(ckpt), *TINY_ARGS, "--device", "cpu"]
    assert tool.main([str(tmp_path / "face.png"), *base, "--out", str(tmp_path / "out"),
                      "--reference", str(tmp_path / "hq.png")]) == 0
    restored = cv2.imread(str(tmp_path / "out" / "face_restored.png"))[:, :, ::-1]
    # the network's output, clamped, 8-bit (the [0, 1] -> [-1, 1] mapping may round a value the other way)
    assert np.abs(restored.astype(int) - _expected(model, face).astype(int)).max() <= 1
    compare = cv2.imread(str(tmp_path / "out" / "face_compare.png"))[:, :, ::-1]
    assert compare.shape == (512, 3 * 512, 3)
    np.testing.assert_array_equal(compare[:, :512], face)
    np.testing.assert_array_equal(compare[:, 512:1024], restored)
    assert np.abs(compare[:, 1024:].astype(int) - 200).max() <= 1

    # another size with --aligned: padded (reflect) to a multiple of 32, cropped back
    small = np.ascontiguousarray(cv2.resize(face, (72, 80), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(tmp_path / "small.png"), small[:, :, ::-1])
    assert tool.main([str(tmp_path / "small.png"), *base, "--out", str(tmp_path / "out"), "--aligned"]) == 0
    got = cv2.imread(str(tmp_path / "out" / "small_restored.png"))[:, :, ::-1]
    x = torch.from_numpy(small).permute(2, 0, 1)[None].float() / 127.5 - 1
    padded = torch.nn.functional.pad(x, (0, 96 - 72, 0, 96 - 80), mode="reflect")
    with torch.no_grad():
        want = ((model(padded)[..., :80, :72].clamp(-1, 1)[0].permute(1, 2, 0).numpy() + 1) * 127.5).round()
    assert got.shape == small.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1

    # not 512x512, no --aligned, no detector: the error says what to pass or install
    capsys.readouterr()
    assert tool.main([str(tmp_path / "small.png"), *base, "--out", str(tmp_path / "out")]) == 2
    assert re.search(r"72x80.*--aligned.*facexlib.*--detector-weights", capsys.readouterr().err)
    assert tool.main([str(tmp_path / "small.png"), *base, "--detector-weights", str(tmp_path / "missing.pth")]) == 2
    assert "detection_Resnet50_Final.pth" in capsys.readouterr().err
    # no weights at all: refused unless --random-weights
    assert tool.main([str(tmp_path / "face.png"), *TINY_ARGS, "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    assert "--random-weights" in capsys.readouterr().err
    torch.save({}, tmp_path / "det.pth")
    saved = sys.modules.get("facexlib")
    sys.modules["facexlib"] = None  # as if facexlib were not installed
    try:
        assert tool.main([str(tmp_path / "small.png"), *base, "--detector-weights", str(tmp_path / "det.pth")]) == 2
        assert "pip install facexlib" in capsys.readouterr().err
    finally:
        if saved is None:
            del sys.modules["facexlib"]
        else:
            sys.modules["facexlib"] = saved


FAKE_RETINAFACE = '''
import numpy as np
import torch.nn as nn


class RetinaFace(nn.Module):
    """Stand-in for facexlib's detector: returns the landmarks the test sets, in its output format
    (box x1 y1 x2 y2, score, five (x, y) landmarks)."""
    LANDMARKS = []

    def __init__(self, network_name="resnet50", half=False, device=None):
        super().__init__()
        self.network_name = network_name
        self.body = nn.Conv2d(3, 4, 1)

    def detect_faces(self, image, conf_threshold=0.8):
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        rows = [np.concatenate([[0, 0, 1, 1, 0.99], lm.reshape(-1)]) for lm in self.LANDMARKS]
        return np.array(rows, np.float32).reshape(-1, 15)
'''


def _photo_with_face(template, size=(480, 640), scale=0.45, angle_deg=12.0, centre=(300.0, 250.0)):
    """A photo with the synthetic face placed by a known similarity; returns (photo, landmarks)."""
    a = math.radians(angle_deg)
    rot = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    shift = np.array(centre) - rot @ np.array([256.0, 256.0])
    matrix = np.concatenate([rot, shift[:, None]], axis=1)  # aligned frame -> photo
    h, w = size
    photo = np.zeros((h, w, 3), np.uint8)
    photo[:] = np.linspace(60, 200, w, dtype=np.uint8)[None, :, None]
    face = draw_face(template)
    warped = cv2.warpAffine(face, matrix, (w, h), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones((512, 512), np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST).astype(bool)
    photo[inside] = warped[inside]
    landmarks = (template @ rot.T + shift).astype(np.float32)
    return photo, landmarks


class Negate(nn.Module):
    """An 'image network' whose output is the negative image (255 - pixel after 8-bit conversion)."""
    size_multiple = 32

    def forward(self, x):
        return -x


class Identity(Negate):
    def forward(self, x):
        return x


def test_detection_alignment_and_paste_back(tool, checkpoint, tmp_path, monkeypatch, one_thread):
    fake = tmp_path / "fake_site" / "facexlib" / "detection"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "retinaface.py").write_text(FAKE_RETINAFACE)
    monkeypatch.syspath_prepend(str(tmp_path / "fake_site"))
    for name in [m for m in sys.modules if m == "facexlib" or m.startswith("facexlib.")]:
        monkeypatch.delitem(sys.modules, name)
    from facexlib.detection.retinaface import RetinaFace

    photo, landmarks = _photo_with_face(tool.FFHQ_TEMPLATE_512)
    RetinaFace.LANDMARKS = [landmarks]
    torch.save({f"module.{k}": v for k, v in RetinaFace().state_dict().items()}, tmp_path / "det.pth")
    detector = tool.FaceDetector(str(tmp_path / "det.pth"), torch.device("cpu"))
    assert detector.net.network_name == "resnet50"  # picked from the weights' keys

    # alignment: the landmarks land on the template, the crop shows the face upright
    crop, matrix = tool.align(photo, landmarks)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(mapped - tool.FFHQ_TEMPLATE_512).max() < 0.05
    assert np.abs(crop.astype(int) - draw_face(tool.FFHQ_TEMPLATE_512).astype(int)).mean() < 12

    # paste-back geometry: an identity network gives the photo back; a negating one inverts the face only
    same, faces = tool.FaceRestorer(Identity(), "cpu", detector=detector).restore(photo)
    assert len(faces) == 1 and same.shape == photo.shape
    nose = tuple(int(round(v)) for v in landmarks[2][::-1])  # (row, col)
    diff = np.abs(same.astype(int) - photo.astype(int))[nose[0] - 40:nose[0] + 40, nose[1] - 40:nose[1] + 40]
    assert diff.mean() < 1.5  # two bilinear warps soften the drawn edges a little, nothing moves
    inverted, _ = tool.FaceRestorer(Negate(), "cpu", detector=detector, upscale=2).restore(photo)
    assert inverted.shape == (960, 1280, 3)
    up = cv2.resize(photo, (1280, 960), interpolation=cv2.INTER_LANCZOS4).astype(int)
    r, c = 2 * nose[0], 2 * nose[1]
    region = np.s_[r - 40:r + 40, c - 40:c + 40]
    assert np.abs(inverted[region].astype(int) - (255 - up[region])).mean() < 2.5
    np.testing.assert_array_equal(inverted[:20, :20], np.clip(up[:20, :20], 0, 255))  # far from the face: untouched

    # the CLI: the tiny RestoreFormer++ on the detected face, written next to the photo's restoration
    ckpt, _ = checkpoint
    cv2.imwrite(str(tmp_path / "photo.jpg"), photo[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert tool.main([str(tmp_path / "photo.jpg"), "--model", "restoreformerpp", "--checkpoint", str(ckpt), *TINY_ARGS,
                      "--device", "cpu", "--out", str(tmp_path / "out"),
                      "--detector-weights", str(tmp_path / "det.pth"),
                      "--upscale", "2"]) == 0
    assert cv2.imread(str(tmp_path / "out" / "photo_restored.png")).shape == (960, 1280, 3)
    assert cv2.imread(str(tmp_path / "out" / "photo_face0.png")).shape == (512, 512, 3)
    assert cv2.imread(str(tmp_path / "out" / "photo_compare.png")).shape == (960, 2 * 1280, 3)


@pytest.mark.cuda
def test_cuda_bf16_graph_replay_matches_cpu(tool, checkpoint, tmp_path):
    """--device cuda --dtype bfloat16 --cuda-graph (channels_last, fused GroupNorm) against the fp32 CPU run."""
    ckpt, model = checkpoint
    face = draw_face(tool.FFHQ_TEMPLATE_512)
    cv2.imwrite(str(tmp_path / "face.png"), face[:, :, ::-1])
    base = [str(tmp_path / "face.png"), "--model", "restoreformerpp", "--checkpoint", str(ckpt), *TINY_ARGS]
    gpu = ["--device", "cuda", "--dtype", "bfloat16", "--cuda-graph", "--out", str(tmp_path / "gpu")]
    assert tool.main([*base, *gpu]) == 0
    got = cv2.imread(str(tmp_path / "gpu" / "face_restored.png")).astype(int)
    want = _expected(model, face)[:, :, ::-1].astype(int)
    # random weights amplify bf16 rounding (bf16 on CPU: 6.6 levels mean against a spread of 37): a sanity bound
    assert np.abs(got - want).mean() < 0.3 * want.std()
