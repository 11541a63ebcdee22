"""Pictures of where the attention looks.

    visualize_attention biformer IMAGE --out-dir DIR [--model biformer_small] [--pretrained | --checkpoint F]
                        [--stage 2] [--block 0] [--query ROW COL ...] [--size 224]
    visualize_attention matchstereo LEFT RIGHT --out-dir DIR --pixel X Y [--pixel X Y ...]
                        [--model matchstereo_tiny] [--pretrained | --checkpoint F]

``biformer``: the image (resized to ``--size``) with BiFormer's region grid for one Bi-Level
Routing Attention layer; for each ``--query`` region (row, col on the grid; default the centre one)
the query region is outlined in red and the ``topk`` regions it routes to are tinted yellow, labelled
by rank. Writes ``<stem>_s<stage>b<block>_r<row>c<col>.png`` per query and ``<stem>_routing.json``
(every query region's routed regions).

``matchstereo``: left image with the chosen pixels | right image with the window each one's last
cross MatchAttention samples (outline, sampling centre, cells tinted by attention weight). The pair is
padded at the bottom/right to the network's size contract; pixel coordinates are the image's own.
Writes ``<left stem>_windows.png`` and ``<left stem>_windows.json``.

Without ``--pretrained``/``--checkpoint`` the network is randomly initialised (the pictures then
show the mechanism, not a trained model's choices). In a clone, ``python tools/visualize_attention.py``
is the same program.
"""
import argparse
import json
from pathlib import Path
from typing import List

import numpy as np
import torch
import torch.nn.functional as F

from ..engine import attention_maps
from ..visualization import predictions as drawing
from ..factory import create_model
from .console import ArgumentParser, cli_main

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="family", required=True)
    b = sub.add_parser("biformer", help="BiFormer region routing")
    b.add_argument("image")
    b.add_argument("--model", default="biformer_small")
    b.add_argument("--stage", type=int, default=2, help="stage of the attention layer (0-2 route; default 2)")
    b.add_argument("--block", type=int, default=0, help="block in the stage (default 0)")
    b.add_argument("--query", type=int, nargs=2, action="append", metavar=("ROW", "COL"),
                   help="query region on the region grid (repeatable; default the centre region)")
    b.add_argument("--size", type=int, default=224, help="the image is resized to SIZE x SIZE (default 224)")
    m = sub.add_parser("matchstereo", help="MatchStereo sampling windows")
    m.add_argument("left")
    m.add_argument("right")
    m.add_argument("--model", default="matchstereo_tiny")
    m.add_argument("--pixel", type=int, nargs=2, action="append", metavar=("X", "Y"), required=True,
                   help="left-image pixel whose window is drawn (repeatable)")
    for q in (b, m):
        q.add_argument("--out-dir", required=True, help="where the pictures go")
        q.add_argument("--pretrained", action="store_true", help="the model-zoo weights")
        q.add_argument("--checkpoint", help="weights: a path or URL, ours or the official release")
        q.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def _model(args):
    return create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint).to(args.device).eval()


def run_biformer(args) -> List[Path]:
    rgb = attention_maps.load_rgb(args.image, size=(args.size, args.size))
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)
    x = ((x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None])[None]
    routing = attention_maps.biformer_routing(_model(args), x.to(args.device), args.stage, args.block)
    n = routing["n_win"]
    queries = args.query or [(n // 2, n // 2)]
    for row, col in queries:
        if not (0 <= row < n and 0 <= col < n):
            raise ValueError(f"--query {row} {col} is outside the {n}x{n} region grid of {routing['layer']}")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    written = []
    for row, col in queries:
        picture = attention_maps.draw_routing(rgb, routing["indices"][row * n + col].tolist(), (row, col), n,
                                              routing["region"])
        written.append(drawing.save_image(picture, out / f"{stem}_s{args.stage}b{args.block}_r{row}c{col}.png"))
    meta = dict(model=args.model, layer=routing["layer"], n_win=n, region_px=list(routing["region"]),
                size=args.size, routing={f"{r // n},{r % n}": [[int(i) // n, int(i) % n] for i in idx]
                                         for r, idx in enumerate(routing["indices"].tolist())})
    (out / f"{stem}_routing.json").write_text(json.dumps(meta, indent=1))
    return written


def run_matchstereo(args) -> List[Path]:
    model = _model(args)
    left, right = (attention_maps.load_rgb(p) for p in (args.left, args.right))
    if left.shape != right.shape:
        raise ValueError(f"left {left.shape} and right {right.shape} images differ in size")
    h, w = left.shape[:2]
    for px, py in args.pixel:
        if not (0 <= px < w and 0 <= py < h):
            raise ValueError(f"--pixel {px} {py} is outside the {w}x{h} left image {args.left!r}")
    mult, least = getattr(model, "size_multiple", 32), getattr(model, "min_size", 192)
    ph, pw = max(-(-h // mult) * mult, least), max(-(-w // mult) * mult, least)

    def tensor(img):
        t = torch.from_numpy(img).permute(2, 0, 1).float()[None]
        return F.pad(t, (0, pw - w, 0, ph - h), mode="replicate").to(args.device)

    windows = attention_maps.matchstereo_windows(model, tensor(left), tensor(right), [tuple(p) for p in args.pixel])
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.left).stem
    picture = attention_maps.draw_windows(left, right, windows)
    path = drawing.save_image(picture, out / f"{stem}_windows.png")
    (out / f"{stem}_windows.json").write_text(json.dumps(
        [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in win.items()} for win in windows], indent=1))
    return [path]


@cli_main
def main(argv=None) -> List[Path]:
    args = parse_args(argv)
    with torch.no_grad():
        written = run_biformer(args) if args.family == "biformer" else run_matchstereo(args)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    import sys

    from . import run

    sys.exit(run("visualize_attention"))
