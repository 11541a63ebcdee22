"""Tiny face-restoration samples in the real formats (``datasets/samples/faces``), 64 x 64 px:

- ``ffhq/00000.png ...``: aligned training faces, an image folder as FFHQ's ``images512x512``;
- ``ffhq.lmdb/``: the same faces as a BasicSR LMDB (``data.mdb``, ``lock.mdb``, ``meta_info.txt``),
  written when the ``lmdb`` package (``face`` extra) is installed;
- ``ffhq_eye_mouth_landmarks.pth``: their eye and mouth landmarks in the official file's format
  (``{'00000000': {'left_eye': array([x, y, half]), 'right_eye': ..., 'mouth': ...}}``);
- ``celeba_test/{lq,gt}/*.png``: held-out faces and their seeded RestoreFormer++ degradations
  (a CelebA-Test-style pair set);
- ``photos/*.png``: LQ-only photos (one of a size that is not a multiple of 32).

The faces are crops of scikit-image's astronaut photograph (when scikit-image is installed) and
procedurally drawn faces whose landmarks are known exactly. Deterministic.
"""
import io
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np

from ...extras import require_extra
from . import register_sample_writer

SIZE = 64
DESIGN = 512  # faces are drawn at 512 (the FFHQ alignment) and resized to SIZE

# The astronaut's face in skimage.data.astronaut(): eye centres and mouth centre (x, y), pixels.
_ASTRONAUT = dict(left_eye=(199.0, 112.0), right_eye=(245.0, 112.0), mouth=(222.0, 146.0))
# FFHQ-like placement at 512: eye centres and mouth, half sizes of the official boxes (eyes ~ 20, mouth ~ 35)
_ALIGNED = dict(left_eye=(196.0, 246.0), right_eye=(316.0, 246.0), mouth=(256.0, 368.0))
_HALF = dict(left_eye=20.0, right_eye=20.0, mouth=36.0)


def _procedural_face(rng: np.random.Generator) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """A cartoon face on a 512 canvas (BGR uint8) at the aligned landmark positions, jittered."""
    bg = rng.integers(60, 200, 3).tolist()
    img = np.empty((DESIGN, DESIGN, 3), np.uint8)
    img[:] = bg
    # soft background gradient so the image is not flat
    ramp = np.linspace(-30, 30, DESIGN)[None, :, None]
    img = np.clip(img.astype(np.float32) + ramp, 0, 255).astype(np.uint8)
    skin = (int(rng.integers(90, 170)), int(rng.integers(130, 200)), int(rng.integers(170, 240)))
    hair = tuple(int(v) for v in rng.integers(10, 90, 3))
    jitter = rng.normal(0, 4, 2)
    cx, cy = 256 + jitter[0], 290 + jitter[1]
    cv2.ellipse(img, (int(cx), int(cy) - 60), (175, 190), 0, 180, 360, hair, -1, cv2.LINE_AA)
    cv2.ellipse(img, (int(cx), int(cy)), (150, 195), 0, 0, 360, skin, -1, cv2.LINE_AA)
    marks = {}
    for part, (x, y) in _ALIGNED.items():
        x, y = x + jitter[0], y + jitter[1]
        marks[part] = np.array([x, y, _HALF[part]], np.float64)
    iris = tuple(int(v) for v in rng.integers(20, 120, 3))
    for part in ("left_eye", "right_eye"):
        x, y, _ = marks[part]
        cv2.ellipse(img, (int(x), int(y)), (26, 13), 0, 0, 360, (245, 245, 245), -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(y)), 10, iris, -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(y)), 4, (10, 10, 10), -1, cv2.LINE_AA)
        cv2.ellipse(img, (int(x), int(y) - 28), (30, 8), 0, 180, 360, hair, 5, cv2.LINE_AA)
    x, y, _ = marks["mouth"]
    cv2.line(img, (int(cx), int(cy) - 20), (int(cx) - 10, int(cy) + 40), tuple(int(0.7 * v) for v in skin), 4,
             cv2.LINE_AA)
    cv2.ellipse(img, (int(x), int(y)), (46, 18), 0, 0, 180, (60, 60, int(rng.integers(150, 220))), -1, cv2.LINE_AA)
    return img, marks


def _astronaut_faces(n: int, rng: np.random.Generator) -> List[Tuple[np.ndarray, Dict[str, np.ndarray]]]:
    """``n`` crops of the astronaut's face, aligned as FFHQ (eye line at the aligned height, eye
    distance 120/512 of the side), with small random scale/offset changes, some mirrored."""
    try:
        data = require_extra("skimage.data")  # scikit-image: the dev extra
    except ImportError:
        return []
    photo = np.ascontiguousarray(data.astronaut()[..., ::-1])  # RGB -> BGR
    src = np.array([_ASTRONAUT["left_eye"], _ASTRONAUT["right_eye"], _ASTRONAUT["mouth"]], np.float32)
    dst = np.array([_ALIGNED["left_eye"], _ALIGNED["right_eye"], _ALIGNED["mouth"]], np.float32)
    out = []
    for i in range(n):
        scale = rng.uniform(0.93, 1.07)
        shift = rng.normal(0, 6, 2)
        target = (dst - 256) * scale + 256 + shift
        warp = cv2.getAffineTransform(src, target.astype(np.float32))
        img = cv2.warpAffine(photo, warp, (DESIGN, DESIGN), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        marks = {part: np.array([*target[k], _HALF[part] * scale], np.float64)
                 for k, part in enumerate(("left_eye", "right_eye", "mouth"))}
        if i % 2:  # mirrored: the eyes swap sides
            img = np.ascontiguousarray(img[:, ::-1])
            flipped = {p: np.array([DESIGN - 1 - m[0], m[1], m[2]]) for p, m in marks.items()}
            marks = dict(left_eye=flipped["right_eye"], right_eye=flipped["left_eye"], mouth=flipped["mouth"])
        out.append((img, marks))
    return out


def _faces(n_photo: int, n_drawn: int, rng: np.random.Generator):
    faces = _astronaut_faces(n_photo, rng)
    faces += [_procedural_face(rng) for _ in range(n_drawn + n_photo - len(faces))]
    small = []
    ratio = SIZE / DESIGN
    for img, marks in faces:
        img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        small.append((img, {p: m * ratio for p, m in marks.items()}))
    return small


def _write_png(path: Path, img: np.ndarray) -> None:
    if not cv2.imwrite(str(path), img):
        raise RuntimeError(f"could not write {str(path)!r}")


def write_lmdb(folder: Path, images: Dict[str, np.ndarray]) -> bool:
    """A BasicSR-layout LMDB of PNG-encoded images keyed by name; False if ``lmdb`` is missing."""
    try:
        lmdb = require_extra("lmdb")
    except ImportError:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(folder), map_size=64 * 2 ** 20)
    lines = []
    with env.begin(write=True) as txn:
        for name, img in images.items():
            ok, png = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            txn.put(name.encode("ascii"), png.tobytes())
            h, w, c = img.shape
            lines.append(f"{name}.png ({h},{w},{c}) 1")
    env.close()
    (folder / "meta_info.txt").write_text("\n".join(lines) + "\n")
    return True


def degrade_pairs(gt_images: List[np.ndarray], seed: int) -> List[np.ndarray]:
    """RestoreFormer++'s LQ pipeline (at this size) applied to each image with a fixed seed."""
    from ..face_degradations import (GaussianNoise, Haze, JPEGCompression, RandomDownsample, RandomGaussianBlur,
                                     UnevenMix)

    ratio = SIZE / DESIGN
    deg = UnevenMix([RandomGaussianBlur(kernel_size=(5, 7), sigma=(0.2, 10 * ratio * 2)), Haze(),
                     RandomDownsample((0.8, 4.0), inner=[GaussianNoise((0, 20)), JPEGCompression((60, 100))])],
                    prob=0.1)
    out = []
    for i, img in enumerate(gt_images):
        rng = np.random.default_rng([seed, i])
        lq = deg(img.astype(np.float32) / 255.0, rng)
        out.append(np.clip(np.round(lq * 255.0), 0, 255).astype(np.uint8))
    return out


@register_sample_writer("faces")
def write(root: Path) -> None:
    import torch

    rng = np.random.default_rng(17)
    train = _faces(4, 4, rng)
    held_out = _faces(2, 2, rng)
    folder = root / "ffhq"
    folder.mkdir(parents=True, exist_ok=True)
    images, landmarks = {}, {}
    for i, (img, marks) in enumerate(train):
        name = f"{i:05d}"
        _write_png(folder / f"{name}.png", img)
        images[name] = img
        landmarks[f"{i:08d}"] = {p: m.astype(np.float64) for p, m in marks.items()}
    buf = io.BytesIO()
    torch.save(landmarks, buf)
    (root / "ffhq_eye_mouth_landmarks.pth").write_bytes(buf.getvalue())
    write_lmdb(root / "ffhq.lmdb", images)
    gts = [img for img, _ in held_out]
    for sub in ("lq", "gt"):
        (root / "celeba_test" / sub).mkdir(parents=True, exist_ok=True)
    for i, (gt, lq) in enumerate(zip(gts, degrade_pairs(gts, seed=2023))):
        _write_png(root / "celeba_test" / "gt" / f"{i:05d}.png", gt)
        _write_png(root / "celeba_test" / "lq" / f"{i:05d}.png", lq)
    photos = root / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    _write_png(photos / "photo_0.png", degrade_pairs([gts[0]], seed=7)[0])
    odd = cv2.resize(gts[-1], (72, 80), interpolation=cv2.INTER_LINEAR)
    _write_png(photos / "photo_1.png", degrade_pairs([odd], seed=8)[0])
