"""Disparity of a stereo pair with a visionattn stereo network.

    visionattn-infer-stereo --model matchstereo_tiny [--checkpoint PATH_OR_URL | --pretrained]
        left.png right.png --out out/ [--device cuda] [--dtype float16] [--max-disp 192] [--gt disp0GT.pfm]

Writes ``<out>/<left stem>_disp.pfm`` (float, px), ``_disp.png`` (KITTI uint16, px * 256),
``_disp_color.png`` (turbo colour map, near = warm) and ``_consistency.png`` (255 = passes the
left-right check, 128 = likely occluded or unreliable). Any image size (``visionattn.inference.predict_stereo``
pads and crops back).
With ``--gt`` (a PFM, inf = invalid, or a KITTI uint16 PNG, 0 = invalid) it also prints EPE, D1 and
bad-1/3 over the valid pixels and writes ``_compare.png``: left | prediction | ground truth, the two
disparities on one colour scale (``--max-disp``, default the ground truth's 99th percentile).
In a clone, ``python tools/infer_stereo.py`` is the same program.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Dict, Tuple

import cv2
import numpy as np
import torch

import visionattn
from visionattn.datasets.stereo import read_image, read_kitti_disparity, read_pfm, write_kitti_disparity, write_pfm
from visionattn.evaluation import disparity_errors
from visionattn.inference import predict_stereo
from visionattn.cli.console import ArgumentParser, UsageError, cli_main

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def colorize(disp: np.ndarray, max_disp: float = None) -> np.ndarray:
    """Disparity (H, W) -> BGR uint8 (H, W, 3) with the turbo colour map (0 .. max_disp)."""
    top = max_disp or max(float(np.percentile(disp[np.isfinite(disp)], 99)), 1e-6)
    scaled = np.clip(np.nan_to_num(disp) / top, 0, 1)
    return cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("left")
    p.add_argument("right")
    p.add_argument("--model", default="matchstereo_tiny", help="a stereo network from visionattn.list_models()")
    p.add_argument("--checkpoint", help="weights: local path or URL, ours or the official release format")
    p.add_argument("--pretrained", action="store_true", help="load the model-zoo weights")
    p.add_argument("--random-weights", action="store_true",
                   help="run the untrained network (its output is noise): for trying the tool without weights")
    p.add_argument("--out", default="out", help="output folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--max-disp", type=float, default=None, help="colour-map upper end (default: 99th percentile)")
    p.add_argument("--gt", help="ground-truth disparity of the left view (.pfm, or KITTI .png) to score against")
    return p.parse_args(argv)


def read_ground_truth(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(disparity, valid) from a PFM (non-finite = invalid) or a KITTI uint16 PNG (0 = invalid)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"ground truth {path!r} does not exist")
    if path.lower().endswith(".pfm"):
        gt = read_pfm(path)
        if gt.ndim != 2:
            raise ValueError(f"ground truth {path!r} has {gt.shape[2]} channels; a disparity PFM has one (Pf)")
        return gt, np.isfinite(gt)
    return read_kitti_disparity(path)


def score(disp: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> Dict[str, float]:
    """EPE (px), D1 and bad-1/3 (%) of ``disp`` over the valid ground-truth pixels."""
    if gt.shape != disp.shape:
        raise ValueError(f"ground truth {gt.shape[1]}x{gt.shape[0]} differs from the images' "
                         f"{disp.shape[1]}x{disp.shape[0]}")
    sums = disparity_errors(torch.from_numpy(disp), torch.from_numpy(gt), torch.from_numpy(valid))
    n = max(float(sums["count"]), 1.0)
    return {"epe": float(sums["epe"]) / n, "d1": 100 * float(sums["d1"]) / n,
            "bad1": 100 * float(sums["bad1"]) / n, "bad3": 100 * float(sums["bad3"]) / n,
            "valid": float(sums["count"])}


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    for path in (args.left, args.right):
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path!r} does not exist")
    if args.checkpoint is None and not args.pretrained and not args.random_weights:
        raise UsageError("no weights: pass --checkpoint PATH_OR_URL or --pretrained (the model-zoo weights), or "
                         "--random-weights to run the untrained network (its disparity is noise)")
    if args.pretrained and args.checkpoint is not None:
        raise UsageError("pass either --checkpoint or --pretrained, not both")
    if args.checkpoint is not None and "://" not in args.checkpoint and not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint!r} does not exist")
    # the inputs are read before the (slower) model is built: their errors come at once
    left, right = (torch.from_numpy(read_image(p)).permute(2, 0, 1)[None] for p in (args.left, args.right))
    if left.shape != right.shape:
        raise ValueError(f"left {tuple(left.shape[2:])} and right {tuple(right.shape[2:])} images differ in size")
    model = visionattn.create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint)
    if getattr(model, "task", None) != "stereo":
        raise ValueError(f"{args.model!r} is not a stereo model (task {getattr(model, 'task', None)!r})")
    model = model.to(args.device, DTYPES[args.dtype]).eval()
    left, right = left.to(args.device), right.to(args.device)
    start = time.perf_counter()
    out = predict_stereo(model, left, right)
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
    if args.gt:
        gt, valid = read_ground_truth(args.gt)
        stats = score(disp, gt, valid)
        print(f"vs {args.gt}: EPE {stats['epe']:.2f} px, D1 {stats['d1']:.1f} %, bad-1 {stats['bad1']:.1f} %, "
              f"bad-3 {stats['bad3']:.1f} % over {stats['valid']:.0f} valid pixels")
        top = args.max_disp or (max(float(np.percentile(gt[valid], 99)), 1e-6) if valid.any() else None)
        shown = np.where(valid, gt, 0)
        image = cv2.cvtColor(read_image(args.left), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / f"{stem}_compare.png"),
                    np.concatenate([image, colorize(disp, top), colorize(shown, top)], axis=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
