"""Train any visionattn config with mmengine's Runner.

    visionattn-train CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr] [--cfg-options k=v ...]
    torchrun --nproc_per_node=N -m visionattn.cli.train CONFIG --launcher pytorch

CONFIG is a config file, or a path under configs/ (``configs/biformer_s.py``) found in the configs
shipped with the package when it is not a file here. In a clone, ``python tools/train.py`` is the
same program.

``--auto-scale-lr`` applies mmengine's linear scaling rule: every optimiser's lr is multiplied by
(processes x ``train_dataloader.batch_size``) / ``auto_scale_lr.base_batch_size``, the total batch
the config's lr was set for (recipes state it next to their schedule).
"""
import argparse
import sys

from mmengine.config import Config

from ..engine import build_runner, load_config
from ..engine.launch import LAUNCHERS
from ..resources import find_config
from . import run
from .console import ArgumentParser, add_cfg_options, cli_main


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config file, e.g. configs/classification/demo.py")
    p.add_argument("--work-dir", help="logs and checkpoints (default: work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from CKPT, or from the latest checkpoint in the work dir when no path is given")
    p.add_argument("--amp", action="store_true", help="automatic mixed precision (CUDA)")
    p.add_argument("--auto-scale-lr", action="store_true",
                   help="scale the lr by the actual total batch / the config's auto_scale_lr.base_batch_size")
    add_cfg_options(p)
    p.add_argument("--launcher", choices=LAUNCHERS, default="none", help="distributed launcher")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def enable_auto_scale_lr(cfg: Config, config_name: str) -> Config:
    """Turn on mmengine's ``auto_scale_lr`` (the Runner rescales the lr before training)."""
    scale = cfg.get("auto_scale_lr") or {}
    base = scale.get("base_batch_size")
    if not isinstance(base, int) or base < 1:
        raise ValueError(f"--auto-scale-lr: config {config_name!r} sets no auto_scale_lr.base_batch_size (the total "
                         f"batch its lr was chosen for); add auto_scale_lr = dict(base_batch_size=N) to the config, "
                         f"or --cfg-options auto_scale_lr.base_batch_size=N")
    cfg.auto_scale_lr = dict(scale, enable=True)
    return cfg


@cli_main
def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(str(find_config(args.config)), work_dir=args.work_dir, cfg_options=args.cfg_options,
                      resume=args.resume, amp=args.amp, launcher=args.launcher)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg, args.config)
    runner = build_runner(cfg)
    runner.train()
    return runner


if __name__ == "__main__":
    sys.exit(run("train"))
