"""Evaluate a checkpoint on a config's test set.

    visionattn-test CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...] [--launcher pytorch]

CONFIG as for visionattn-train (a file, or a path under the shipped configs/). In a clone,
``python tools/test.py`` is the same program.
"""
import argparse
import sys
from pathlib import Path

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
    add_cfg_options(p)
    p.add_argument("--launcher", choices=LAUNCHERS, default="none", help="distributed launcher")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


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
    cfg = load_config(str(find_config(args.config)), work_dir=args.work_dir, cfg_options=args.cfg_options, launcher=args.launcher)
    cfg.load_from = args.checkpoint
    metrics = build_runner(cfg).test()
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return metrics


if __name__ == "__main__":
    sys.exit(run("test"))
