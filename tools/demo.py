"""What `make demo` runs: train the smallest registered visionattn backbone on the sample data.

Picks the visionattn timm backbone with the fewest parameters (counted on the 'meta' device)
that runs at the demo's 64 px (falling back to timm's resnet10t while none is registered),
trains it for a few hundred iterations on datasets/samples/imagenet with
configs/classification/demo.py through the same Runner as tools/train.py, and prints the accuracy
before/after and where the checkpoint and the loss/accuracy plot are.

    python tools/demo.py [--model NAME] [--iters 200] [--work-dir work_dirs/demo]
"""
import argparse
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

# OpenMP threads that spin while waiting make a busy small machine (the demo's target: 2 CPU
# cores) several times slower; read by libgomp when torch loads, so set before importing it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import timm  # noqa: E402
import torch  # noqa: E402

import visionattn  # noqa: E402
from visionattn.engine import TrainingCurvesHook, build_runner, load_config  # noqa: E402
from visionattn.registry import NETWORKS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "classification" / "demo.py"
FALLBACK = "resnet10t"


def backbones_by_size(num_classes: int) -> List[Tuple[int, str]]:
    """(parameter count, name) of visionattn's timm backbones, smallest first; built on 'meta'."""
    sizes = []
    for name in visionattn.list_models():
        if name in NETWORKS or not timm.is_model(name):
            continue  # task networks (stereo, restoration...) are not image classifiers
        with torch.device("meta"):  # every family builds on meta: counting allocates nothing
            model = timm.create_model(name, num_classes=num_classes)
        sizes.append((sum(p.numel() for p in model.parameters()), name))
    return sorted(sizes)


def demo_kwargs(name: str, num_classes: int, size: int) -> Optional[Dict]:
    """Constructor kwargs under which ``name`` classifies (1, 3, size, size) images, or None."""
    for kwargs in (dict(img_size=size), {}):  # ViT-style models need their input size up front
        try:
            model = timm.create_model(name, num_classes=num_classes, **kwargs).eval()
            with torch.no_grad():
                out = model(torch.zeros(1, 3, size, size))
            if out.shape == (1, num_classes):
                return kwargs
        except Exception:
            continue
    return None


def pick_model(num_classes: int, size: int) -> Tuple[str, Dict]:
    for count, name in backbones_by_size(num_classes):
        kwargs = demo_kwargs(name, num_classes, size)
        if kwargs is not None:
            return name, kwargs
        print(f"  skipping {name} ({count / 1e6:.1f}M parameters): does not run at {size} px")
    print(f"  no visionattn backbone registered yet: using timm's {FALLBACK}")
    return FALLBACK, {}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="network to train (default: the smallest visionattn backbone)")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the config's)")
    p.add_argument("--work-dir", default=str(REPO / "work_dirs" / "demo"))
    args = p.parse_args(argv)
    start = time.perf_counter()

    base = load_config(str(CONFIG))
    num_classes, size = base.num_classes, base.input_size
    if args.model:
        name, kwargs = args.model, demo_kwargs(args.model, num_classes, size)
        if kwargs is None:
            raise ValueError(f"model {args.model!r} does not classify {size} px images; pick another with --model")
    else:
        name, kwargs = pick_model(num_classes, size)
    root = str(REPO / base.data_root)  # the sample set of this checkout, wherever we run from
    if not Path(root).is_dir():
        raise FileNotFoundError(f"sample dataset {root!r} is missing: run `python tools/make_samples.py` first")
    options = {"model.network": name, "model.network_kwargs": kwargs,
               "train_dataloader.dataset.root": root, "val_dataloader.dataset.root": root}
    if args.iters:
        options.update({"train_cfg.max_iters": args.iters, "param_scheduler.1.T_max": args.iters - 30,
                        "param_scheduler.1.end": args.iters})
    cfg = load_config(str(CONFIG), work_dir=args.work_dir, cfg_options=options)
    runner = build_runner(cfg)
    n_params = sum(p.numel() for p in runner.model.parameters())
    print(f"demo: training {name} ({n_params / 1e6:.2f}M parameters) on {root} at {size} px")

    before = runner.val()["accuracy/top1"]
    runner.train()
    curves = next(h for h in runner.hooks if isinstance(h, TrainingCurvesHook))
    after = curves.metrics[-1][1]["accuracy/top1"]
    checkpoint = (Path(cfg.work_dir) / "last_checkpoint").read_text().strip()
    chance = 100 / num_classes

    print()
    print(f"model:        {name} ({n_params / 1e6:.2f}M parameters, {size} px, {cfg.train_cfg.max_iters} iterations)")
    print(f"top-1 accuracy on {len(runner.val_dataloader.dataset)} val images: "
          f"{before:.1f}% before -> {after:.1f}% after training (chance {chance:.1f}%)")
    print(f"checkpoint:   {checkpoint}")
    print(f"plot:         {curves.path(runner)}")
    print(f"wall time:    {time.perf_counter() - start:.0f} s")
    if after < 2 * chance:
        raise SystemExit(f"demo failed: top-1 {after:.1f}% is not well above chance ({chance:.1f}%)")
    return dict(model=name, before=before, after=after, checkpoint=checkpoint, plot=str(curves.path(runner)))


if __name__ == "__main__":
    main()
