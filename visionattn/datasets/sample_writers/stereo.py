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


def _scene(seed: int):
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (H, W + PAD, 3)).astype(np.uint8), (5, 5), 1.5)
    disp = np.full((H, W), 6.0 + rng.uniform(0, 4), np.float32)
    y0, x0 = rng.integers(20, 100), rng.integers(40, 140)
    disp[y0:y0 + 60, x0:x0 + 70] = 18.0 + rng.uniform(0, 6)
    xs = np.arange(W)[None, :] + PAD - disp
    map_x = xs.astype(np.float32)
    map_y = np.repeat(np.arange(H, dtype=np.float32)[:, None], W, 1)
    left = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR)
    right = texture[:, PAD:PAD + W].copy()
    # right-view disparity: forward warp of the left one, nearest surface wins
    disp_right = np.zeros((H, W), np.float32)
    target = np.round(np.arange(W)[None, :] - disp).astype(int)
    rows = np.repeat(np.arange(H)[:, None], W, 1)
    ok = (target >= 0) & (target < W)
    np.maximum.at(disp_right, (rows[ok], target[ok]), disp[ok])
    # occluded left pixels: their match shows a nearer surface
    seen = np.zeros_like(disp)
    seen[ok] = disp_right[rows[ok], target[ok]]
    noc = ok & (np.abs(seen - disp) < 0.5)
    return left, right, disp, disp_right, noc


@register_sample_writer("sceneflow")
def write_sceneflow(root: Path) -> None:
    for i, (subset, rel) in enumerate([("FlyingThings3D", "TRAIN/A/0000"), ("FlyingThings3D", "TRAIN/A/0001"),
                                       ("Monkaa", "a_rain_of_stones_x2")]):
        left, right, disp, disp_right, _ = _scene(i)
        for view, img, d in (("left", left, disp), ("right", right, disp_right)):
            img_dir = root / subset / "frames_cleanpass" / rel / view
            disp_dir = root / subset / "disparity" / rel / view
            img_dir.mkdir(parents=True, exist_ok=True)
            disp_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(img_dir / "0006.png")
            write_pfm(disp_dir / "0006.pfm", d)


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
