"""Restore a NIfTI volume or a 2-D image with a visionattn restoration model.

    visionattn-infer-restore --model restore_rwkv [--checkpoint Generator_best.pth | --pretrained] \
        --modality MRI input.nii.gz --out out/

NIfTI in -> NIfTI out (same affine and header, physical units), slice by slice along --axis with a
progress bar; PNG/TIFF/NPY in -> same format out. Also writes <name>_compare.png: input | output |
|output - input| (middle slice for volumes). --tile/--overlap bound memory on large slices.
NIfTI and TIFF need the medical extra (pip install 'visionattn[medical]'). In a clone,
``python tools/infer_restore.py`` is the same program.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import visionattn
from visionattn.datasets import medical_io as mio
from visionattn.datasets.intensity import window
from visionattn.extras import require_extra
from visionattn.inference import restore_image
from visionattn.cli.console import ArgumentParser, UsageError, cli_main


def parse_args(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help=".nii/.nii.gz volume or a .png/.tif/.npy slice")
    ap.add_argument("--model", default="restore_rwkv")
    ap.add_argument("--checkpoint", default=None, help="weights (ours or the official Generator_*.pth)")
    ap.add_argument("--pretrained", action="store_true", help="load the model-zoo weights of --model")
    ap.add_argument("--random-weights", action="store_true",
                    help="run the untrained network (its output is noise): for trying the tool without weights")
    ap.add_argument("--modality", default="MRI", help="CT, PET, MRI or lo,hi intensity window")
    ap.add_argument("--axis", type=int, default=2, help="NIfTI slicing axis")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="out")
    return ap.parse_args(argv)


def parse_modality(text: str):
    """``CT``/``PET``/``MRI`` or ``lo,hi`` (an intensity window) -> what :func:`window` takes."""
    if "," not in text:
        return text
    parts = text.split(",")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise UsageError(f"--modality {text!r}: a window is two numbers lo,hi (e.g. 0,65535), or use CT, PET "
                         f"or MRI") from None
    return lo, hi


def compare_png(path: Path, before: np.ndarray, after: np.ndarray) -> None:
    """Side by side, each scaled by the input's range: input | output | |difference| (own range)."""
    import cv2

    lo, hi = float(before.min()), float(before.max())
    scale = lambda a, l, h: np.clip((a - l) / max(h - l, 1e-12), 0, 1)  # noqa: E731
    diff = np.abs(after - before)
    row = np.concatenate([scale(before, lo, hi), scale(after, lo, hi), scale(diff, 0, float(diff.max()))], axis=1)
    cv2.imwrite(str(path), np.round(row * 255).astype(np.uint8))


@cli_main
def main(argv=None):
    args = parse_args(argv)
    src = Path(args.input)
    if not src.exists():
        raise FileNotFoundError(f"input {str(src)!r} does not exist")
    modality = parse_modality(args.modality)
    win = window(modality)
    if args.axis not in (0, 1, 2):
        raise UsageError(f"--axis must be 0, 1 or 2 (the NIfTI axis to slice along), got {args.axis}")
    if args.tile is not None and args.tile < 1 or args.overlap < 0:
        raise UsageError(f"--tile must be >= 1 and --overlap >= 0, got --tile {args.tile} --overlap {args.overlap}")
    if args.checkpoint is None and not args.pretrained and not args.random_weights:
        raise UsageError("no weights: pass --checkpoint PATH (ours or the official Generator_*.pth) or --pretrained "
                         "(the model-zoo weights), or --random-weights to run the untrained network (its output is noise)")
    if args.pretrained and args.checkpoint is not None:
        raise UsageError("pass either --checkpoint or --pretrained, not both")
    model = visionattn.create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint)
    model = model.to(args.device).eval()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def restore(slice_: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(win.normalize(slice_).astype(np.float32))[None, None].to(args.device)
        y = restore_image(model, x, tile=args.tile, overlap=args.overlap)
        return win.denormalize(y[0, 0].double().cpu().numpy())

    from tqdm import tqdm

    name = src.name.split(".")[0]
    if mio.is_nifti(src):
        vol, affine, header = mio.read_nifti(src)
        out = np.empty_like(vol)
        if vol.ndim == 2:
            out[:] = restore(vol)
        else:
            for i in tqdm(range(vol.shape[args.axis]), desc="slices"):
                idx = [slice(None)] * 3
                idx[args.axis] = i
                out[tuple(idx)] = restore(vol[tuple(idx)])
        suffix = ".nii.gz" if str(src).endswith(".gz") else ".nii"
        mio.write_nifti(out_dir / f"{name}_restored{suffix}", out, affine, header)
        mid = vol.shape[args.axis] // 2 if vol.ndim == 3 else None
        before = np.take(vol, mid, axis=args.axis) if mid is not None else vol
        after = np.take(out, mid, axis=args.axis) if mid is not None else out
    else:
        before = mio.read_slice(src)
        if before.ndim != 2:
            raise ValueError(f"{str(src)!r} has {before.shape[-1]} channels; this tool restores 1-channel slices")
        after = restore(before)
        suffix = src.suffix.lower()
        target = out_dir / f"{name}_restored{suffix}"
        if suffix == ".png":
            import cv2

            cv2.imwrite(str(target), np.clip(np.round(after), 0, 65535).astype(np.uint16))
        elif suffix in (".tif", ".tiff"):
            require_extra("tifffile").imwrite(target, after.astype(np.float32))
        else:
            np.save(target, after)
    compare_png(out_dir / f"{name}_compare.png", before, after)
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    sys.exit(main())
