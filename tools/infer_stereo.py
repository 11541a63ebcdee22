"""Disparity of a stereo pair with a visionattn stereo network.

    python tools/infer_stereo.py --model matchstereo_tiny [--checkpoint PATH_OR_URL | --pretrained]
        left.png right.png --out out/ [--device cuda] [--dtype float16] [--max-disp 192]

Writes ``<out>/<left stem>_disp.pfm`` (float, px), ``_disp.png`` (KITTI uint16, px * 256),
``_disp_color.png`` (turbo colour map, near = warm) and ``_consistency.png`` (255 = passes the
left-right check, 128 = likely occluded or unreliable). Any image size: the model pads internally.
"""
import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

import visionattn
from visionattn.datasets.stereo import read_image, write_kitti_disparity, write_pfm

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def colorize(disp: np.ndarray, max_disp: float = None) -> np.ndarray:
    """Disparity (H, W) -> BGR uint8 (H, W, 3) with the turbo colour map (0 .. max_disp)."""
    top = max_disp or max(float(np.percentile(disp[np.isfinite(disp)], 99)), 1e-6)
    scaled = np.clip(np.nan_to_num(disp) / top, 0, 1)
    return cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("left")
    p.add_argument("right")
    p.add_argument("--model", default="matchstereo_tiny", help="a stereo network from visionattn.list_models()")
    p.add_argument("--checkpoint", help="weights: local path or URL, ours or the official release format")
    p.add_argument("--pretrained", action="store_true", help="load the model-zoo weights")
    p.add_argument("--out", default="out", help="output folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--max-disp", type=float, default=None, help="colour-map upper end (default: 99th percentile)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for path in (args.left, args.right):
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path!r} does not exist")
    model = visionattn.create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint)
    if getattr(model, "task", None) != "stereo":
        raise ValueError(f"{args.model!r} is not a stereo model (task {getattr(model, 'task', None)!r})")
    model = model.to(args.device, DTYPES[args.dtype]).eval()
    left, right = (torch.from_numpy(read_image(p)).permute(2, 0, 1)[None].to(args.device) for p in (args.left, args.right))
    if left.shape != right.shape:
        raise ValueError(f"left {tuple(left.shape[2:])} and right {tuple(right.shape[2:])} images differ in size")
    start = time.perf_counter()
    with torch.no_grad():
        out = model(left, right)
    seconds = time.perf_counter() - start
    disp = out["disparity"][0, 0].float().cpu().numpy()
    consistent = out["consistency"][0, 0].cpu().numpy()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(args.left).stem
    write_pfm(folder / f"{stem}_disp.pfm", disp)
    write_kitti_disparity(folder / f"{stem}_disp.png", disp)
    cv2.imwrite(str(folder / f"{stem}_disp_color.png"), colorize(disp, args.max_disp))
    cv2.imwrite(str(folder / f"{stem}_consistency.png"), np.where(consistent, 255, 128).astype(np.uint8))
    print(f"{args.left}: {disp.shape[1]}x{disp.shape[0]}, disparity {disp.min():.2f}..{disp.max():.2f} px, "
          f"{100 * consistent.mean():.1f}% consistent, {seconds * 1000:.0f} ms -> {folder}/{stem}_disp*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
