"""Tiny stereo sample sets in the real layouts: SceneFlow (PNG + PFM), KITTI 2015 (uint16 PNG),
Middlebury v3 (im0/im1 + disp0GT.pfm with inf + mask0nocc.png).

Each scene is synthetic but geometrically exact: a textured background plane and a nearer box;
the left image samples a texture at ``x + P - d(x)`` and the right one at ``x + P``, so
``left(x) = right(x - d(x))``. The right-view disparity is the forward-warped left one (nearest
surface wins); left pixels whose match is hidden by a nearer surface are marked occluded.
"""
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..stereo import write_kitti_disparity, write_pfm
from . import register_sample_writer

H, W = 200, 240
PAD = 40


def _scene(seed: int, h: int = H, w: int = W, boxes: int = 1, slant: bool = False):
    """One geometrically exact pair: (left, right, disparity, right-view disparity, non-occluded mask).

    Default: a fronto-parallel background and one box (the test samples). Otherwise (the
    synthetic training set): ``boxes`` boxes at random depths, each surface with its own tint,
    in front of a background plane, slanted in x and y when ``slant``; multi-scale texture.
    """
    rng = np.random.default_rng(seed)
    if (h, w, boxes, slant) == (H, W, 1, False):
        pad = PAD
        texture = cv2.GaussianBlur(rng.integers(0, 256, (h, w + pad, 3)).astype(np.uint8), (5, 5), 1.5)
        disp = np.full((h, w), 6.0 + rng.uniform(0, 4), np.float32)
        y0, x0 = rng.integers(20, 100), rng.integers(40, 140)
        disp[y0:y0 + 60, x0:x0 + 70] = 18.0 + rng.uniform(0, 6)
        label = np.zeros((h, w), np.int64)
        tints, order = None, [0]
    else:
        pad = PAD + 48
        texture = np.zeros((h, w + pad, 3), np.float32)
        for sigma, amp in ((0.7, 0.6), (3.0, 1.0), (12.0, 1.6)):  # fine grain on larger blobs
            blurred = cv2.GaussianBlur(rng.normal(0, 1, (h, w + pad, 3)).astype(np.float32), (0, 0), sigma)
            texture += amp * blurred / blurred.std()
        texture = np.clip(0.5 + 0.12 * texture, 0, 1)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        tilt = (rng.uniform(-6, 6) * xs / w + rng.uniform(-6, 6) * ys / h) if slant else 0.0
        disp = (4 + rng.uniform(0, 8) + tilt).astype(np.float32) * np.ones((h, w), np.float32)
        label = np.zeros((h, w), np.int64)
        depths = []
        for k in range(1, boxes + 1):
            bh, bw = rng.integers(h // 8, h // 2), rng.integers(w // 10, w // 3)
            y0, x0 = rng.integers(0, h - bh), rng.integers(0, w - bw)
            d_box = rng.uniform(14, pad - 4)
            region = (slice(y0, y0 + bh), slice(x0, x0 + bw))
            nearer = d_box > disp[region]
            disp[region] = np.where(nearer, d_box, disp[region])
            label[region] = np.where(nearer, k, label[region])
            depths.append((d_box, k))
        # each surface has its own tint: the boxes are visible objects, not a random-dot stereogram
        tints = rng.uniform(0.35, 1.0, (boxes + 1, 3)).astype(np.float32)
        tints[0] = 0.8
        order = [0] + [k for _, k in sorted(depths)]
    map_x = (np.arange(w)[None, :] + pad - disp).astype(np.float32)
    map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, 1)
    left = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR)
    right = texture[:, pad:pad + w].copy()
    # right-view disparity: forward warp of the left one, nearest surface wins
    disp_right = np.zeros((h, w), np.float32)
    target = np.round(np.arange(w)[None, :] - disp).astype(int)
    rows = np.repeat(np.arange(h)[:, None], w, 1)
    ok = (target >= 0) & (target < w)
    np.maximum.at(disp_right, (rows[ok], target[ok]), disp[ok])
    if tints is not None:  # right-view surface labels in painter's order (nearest last), then tint
        label_right = np.zeros((h, w), np.int64)
        for k in order:
            rr, cc = np.nonzero((label == k) & ok)
            label_right[rr, target[rr, cc]] = k
        left, right = ((np.clip(img * tints[lab], 0, 1) * 255).round().astype(np.uint8)
                       for img, lab in ((left, label), (right, label_right)))
    # occluded left pixels: their match shows a nearer surface
    seen = np.zeros_like(disp)
    seen[ok] = disp_right[rows[ok], target[ok]]
    noc = ok & (np.abs(seen - disp) < 0.5)
    return left, right, disp, disp_right, noc


def _write_sceneflow_pair(root: Path, subset: str, rel: str, frame: str, scene) -> None:
    left, right, disp, disp_right, _ = scene
    for view, img, d in (("left", left, disp), ("right", right, disp_right)):
        img_dir = root / subset / "frames_cleanpass" / rel / view
        disp_dir = root / subset / "disparity" / rel / view
        img_dir.mkdir(parents=True, exist_ok=True)
        disp_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(img_dir / f"{frame}.png")
        write_pfm(disp_dir / f"{frame}.pfm", d)


def write_sceneflow_synthetic(root: Path, scenes: int = 200, size=(384, 640), boxes: int = 6,
                              split: str = "TRAIN", seed: int = 1000, first: int = 0) -> None:
    """A larger procedural set in the FlyingThings3D layout (``<split>/A/<scene // 10>``, frames
    0006-0015) for quick training runs, e.g. the README picture; not written by ``make_samples``.
    Scenes ``first .. first + scenes - 1`` (seed ``seed + index``), so parallel writers can split the work."""
    for i in range(first, first + scenes):
        scene = _scene(seed + i, size[0], size[1], boxes=boxes, slant=True)
        _write_sceneflow_pair(Path(root), "FlyingThings3D", f"{split}/A/{i // 10:04d}", f"{6 + i % 10:04d}", scene)


@register_sample_writer("sceneflow")
def write_sceneflow(root: Path) -> None:
    for i, (subset, rel) in enumerate([("FlyingThings3D", "TRAIN/A/0000"), ("FlyingThings3D", "TRAIN/A/0001"),
                                       ("Monkaa", "a_rain_of_stones_x2")]):
        _write_sceneflow_pair(root, subset, rel, "0006", _scene(i))


@register_sample_writer("kitti2015")
def write_kitti2015(root: Path) -> None:
    base = root / "training"
    for name in ("image_2", "image_3", "disp_occ_0", "disp_noc_0"):
        (base / name).mkdir(parents=True, exist_ok=True)
    for i in range(2):
        left, right, disp, _, noc = _scene(10 + i)
        sparse = np.random.default_rng(20 + i).random(disp.shape) < 0.3  # LiDAR-like sparse ground truth
        Image.fromarray(left).save(base / "image_2" / f"{i:06d}_10.png")
        Image.fromarray(right).save(base / "image_3" / f"{i:06d}_10.png")
        write_kitti_disparity(base / "disp_occ_0" / f"{i:06d}_10.png", np.where(sparse, disp, 0))
        write_kitti_disparity(base / "disp_noc_0" / f"{i:06d}_10.png", np.where(sparse & noc, disp, 0))


@register_sample_writer("middlebury")
def write_middlebury(root: Path) -> None:
    for i, scene in enumerate(("Adirondack", "Jadeplant")):
        folder = root / "trainingQ" / scene
        folder.mkdir(parents=True, exist_ok=True)
        left, right, disp, _, noc = _scene(30 + i)
        gt = disp.copy()
        gt[:, :4] = np.inf  # unknown ground truth is stored as inf
        Image.fromarray(left).save(folder / "im0.png")
        Image.fromarray(right).save(folder / "im1.png")
        write_pfm(folder / "disp0GT.pfm", gt)
        Image.fromarray(np.where(noc, 255, 128).astype(np.uint8)).save(folder / "mask0nocc.png")
