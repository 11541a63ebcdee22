"""Draw a gallery of the face degradation model: each step alone and the whole pipeline, several seeds.

    python tools/show_degradations.py [--image FACE.png] [--config configs/restoration/restoreformerpp_stage2.py]
                                      [--seeds 4] [--size 512] [--out work_dirs/degradations.png]

Rows: the clean face, then each degradation step of the config's ``MakeLQ`` transform applied alone
(with the probabilities of haze and the uneven mix forced to 1 so they show), then the whole training
pipeline of the config (flip, shift, LQ, grey, 8-bit rounding). Columns: seeds. Without --image, the
first face of datasets/samples/faces/ffhq (written by tools/make_samples.py) is used, resized to --size.
"""
import argparse
import copy
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _steps(degradation: dict):
    """(label, cfg) of each single step inside an UnevenMix / list / RandomDownsample tree, and the mix."""
    out = []
    if isinstance(degradation, (list, tuple)):
        for d in degradation:
            out += _steps(d)
        return out
    d = dict(degradation)
    kind = d["type"]
    if kind == "UnevenMix":
        out += _steps(d["degradation"])
        out.append(("uneven mix (p=1)", dict(d, prob=1.0)))
    elif kind == "RandomDownsample":
        out.append((f"downsample x{d.get('scale', (0.8, 8.0))}", dict(d, inner=None)))
        out += _steps(d.get("inner") or [])
    elif kind == "Haze":
        out.append(("haze (p=1)", dict(d, prob=1.0)))
    else:
        out.append((kind, d))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", help="a face image (default: the first sample face)")
    p.add_argument("--config", default=str(REPO / "configs" / "restoration" / "restoreformerpp_stage2.py"),
                   help="a config whose train_dataloader.dataset.pipeline holds the degradations")
    p.add_argument("--seeds", type=int, default=4, help="columns (one seed each)")
    p.add_argument("--size", type=int, default=512, help="side the default sample face is resized to")
    p.add_argument("--out", default=str(REPO / "work_dirs" / "degradations.png"), help="output PNG")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")

    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mmengine.config import Config

    from visionattn.datasets.degradations import build_degradation
    from visionattn.datasets.faces import build_pipeline, read_image

    if args.image:
        face = read_image(args.image)
    else:
        sample = REPO / "datasets" / "samples" / "faces" / "ffhq" / "00000.png"
        if not sample.is_file():
            p.error(f"{sample} does not exist: run python tools/make_samples.py --only faces, or pass --image")
        face = cv2.resize(read_image(sample), (args.size, args.size), interpolation=cv2.INTER_CUBIC)
    pipeline = Config.fromfile(args.config).train_dataloader.dataset.pipeline
    pipeline = [t.to_dict() if hasattr(t, "to_dict") else dict(t) for t in pipeline]
    lq_steps = [t for t in pipeline if t["type"] == "MakeLQ"]
    if not lq_steps:
        p.error(f"{args.config} has no MakeLQ transform in train_dataloader.dataset.pipeline")
    rows = [("clean", None)] + _steps(lq_steps[0]["degradation"]) + [("whole pipeline", "pipeline")]
    transforms = build_pipeline(copy.deepcopy(pipeline))

    fig, axes = plt.subplots(len(rows), args.seeds, figsize=(2.2 * args.seeds, 2.3 * len(rows)), squeeze=False)
    for r, (label, cfg) in enumerate(rows):
        step = build_degradation(cfg) if isinstance(cfg, dict) else None
        for c in range(args.seeds):
            rng = np.random.default_rng([c, r])
            if cfg is None:
                img = face
            elif cfg == "pipeline":
                results = dict(gt=face.copy(), rng=rng)
                for t in transforms:
                    results = t(results)
                img = results["lq"]
            else:
                img = step(face.copy(), rng)
            ax = axes[r][c]
            ax.imshow(np.clip(img[..., ::-1], 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                ax.set_title(f"seed {c}", fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    print(f"wrote {out} ({len(rows)} rows x {args.seeds} seeds)")
    return out


if __name__ == "__main__":
    main()
