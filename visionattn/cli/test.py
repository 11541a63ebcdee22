"""Evaluate a checkpoint on a config's test set.

    visionattn-test CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--show-dir DIR] [--tta]
                    [--cfg-options k=v ...] [--launcher pytorch]

CONFIG as for visionattn-train (a file, or a path under the shipped configs/). In a clone,
``python tools/test.py`` is the same program.

- ``--out results.pkl``: every prediction, as plain dicts of numpy arrays; read it back with
  ``visionattn.evaluation.dump_predictions.load_predictions`` (no code runs while loading).
- ``--show-dir DIR``: one picture per test sample in DIR (relative paths go under the work dir):
  top-5 classes on the image, boxes/masks, segmentation colours, disparity colour map, input |
  restored | target, or a bird's-eye view of LiDAR points and 3-D boxes, following the task.
- ``--tta``: test-time augmentation, for configs that define ``tta_model`` and ``tta_pipeline``
  (the ADE20K segmentation recipes inherit mmseg's multi-scale + flip).
"""
import argparse
import sys
from pathlib import Path

from mmengine.config import Config

from ..engine import build_runner, load_config
from ..engine.launch import LAUNCHERS
from ..resources import find_config
from . import run
from ..engine.hooks.safe_checkpoint import is_complete_checkpoint
from ..hub import checkpoint_format
from .console import ArgumentParser, UsageError, add_cfg_options, cli_main


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config file, e.g. configs/classification/demo.py")
    p.add_argument("checkpoint", help="checkpoint file written by tools/train.py")
    p.add_argument("--work-dir", help="where the test logs go (default: work_dirs/<config name>)")
    p.add_argument("--out", help="write every prediction to this .pkl file")
    p.add_argument("--show-dir", help="write one picture per test sample here (relative: under the work dir)")
    p.add_argument("--show-score-thr", type=float, default=0.3, help="detection: lowest score drawn (default 0.3)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (the config's tta_model/tta_pipeline)")
    add_cfg_options(p)
    p.add_argument("--launcher", choices=LAUNCHERS, default="none", help="distributed launcher")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def apply_test_options(cfg: Config, config_name: str, out=None, show_dir=None, show_score_thr: float = 0.3,
                       tta: bool = False) -> Config:
    """Add ``--out``/``--show-dir``/``--tta`` to a loaded config (as mmdet's and mmseg's test tools)."""
    if tta:
        missing = [k for k in ("tta_model", "tta_pipeline") if not cfg.get(k)]
        if missing:
            raise ValueError(f"--tta: config {config_name!r} defines no {' and no '.join(missing)}; test-time "
                             f"augmentation needs both (as mmseg's ADE20K bases define them). Run without --tta")
        cfg.tta_model.module = cfg.model
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.model = cfg.tta_model
    if out is not None:
        dump = dict(type="visionattn.DumpPredictions", out_file=str(out))
        evaluator = cfg.test_evaluator
        cfg.test_evaluator = [*evaluator, dump] if isinstance(evaluator, (list, tuple)) else [evaluator, dump]
    if show_dir is not None:
        show = Path(show_dir)
        show = show if show.is_absolute() else Path(cfg.work_dir) / show
        hooks = list(cfg.get("custom_hooks") or [])
        hooks.append(dict(type="visionattn.ShowPredictionsHook", out_dir=str(show), score_thr=show_score_thr))
        cfg.custom_hooks = hooks
    return cfg


@cli_main
def main(argv=None) -> dict:
    args = parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {args.checkpoint!r} not found")
    with open(args.checkpoint, "rb") as f:
        kind = checkpoint_format(f.read(512))
    if kind is None or (kind == "zip" and not is_complete_checkpoint(args.checkpoint)):
        raise UsageError(f"checkpoint {args.checkpoint!r} is {'truncated' if kind else 'not a checkpoint file'} "
                         f"(a torch.save file written by visionattn-train is expected)")
    config = str(find_config(args.config))
    cfg = load_config(config, work_dir=args.work_dir, cfg_options=args.cfg_options, launcher=args.launcher)
    cfg.load_from = args.checkpoint
    apply_test_options(cfg, args.config, out=args.out, show_dir=args.show_dir, show_score_thr=args.show_score_thr,
                       tta=args.tta)
    metrics = build_runner(cfg).test()
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return metrics


if __name__ == "__main__":
    sys.exit(run("test"))
