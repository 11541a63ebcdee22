"""ScatterFormer-Waymo training as ``tools/train.py`` runs it, on Waymo-sized synthetic frames.

    python benchmarks/lidar_training.py [--root /tmp/waymo_synth] [--frames 16] [--batch 4] [--workers 8] \
        [--warmup 5] [--iters 20] [--detail-iters 8] [--out DIR]

Four figures on one machine, in one process:

1. **end to end**: ``configs/detection3d/scatterformer_waymo.py`` through mmengine's Runner (the recipe's
   loader workers read the ``.npy`` frames and info pickles, GT-database sampling and the other
   augmentations, collation; on the device: dynamic voxelisation, network, CenterHead loss, AdamW with
   gradient clipping, hooks and logging), frames/s over ``--iters`` iterations after ``--warmup``, then
   the time of each part over ``--detail-iters`` (:class:`visionattn.engine.hooks.TrainBreakdownHook`);
2. **training step alone**: the same task model's ``train_step`` (data preprocessor, forward, loss,
   backward, optimiser step) repeated on one batch already loaded: what the network allows;
3. **data pipeline alone**: the training loader iterated without the model, frames/s;
4. the ratio of 1 to 2: the share of the network's throughput that training keeps.

The frames are written once by the library's sample writer (``write_waymo``: OpenPCDet's processed Waymo
layout, ~160k points a frame with ``ground_points=150000`` over +-75 m). The timing run differs from a
training run only in what a timing run must: an iteration-based loop over an endless sampler (loader
workers start once), a constant learning rate, no validation or checkpoints, and
no GT-sampling switch-off hook (sampling stays on, as in all but the last epochs).
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

CONFIG = "configs/detection3d/scatterformer_waymo.py"


def write_frames(root: Path, frames: int, ground_points: int) -> None:
    from visionattn.datasets.sample_writers.lidar import write_waymo

    if (root / "ImageSets" / "train.txt").is_file():
        return
    t0 = time.time()
    write_waymo(root, train_sequences=2, val_sequences=1, frames=max(1, frames // 2), extent=75,
                ground_points=ground_points)
    print(f"wrote {frames} training frames to {root} in {time.time() - t0:.0f} s", flush=True)


def timing_config(root: Path, args, work_dir: str, total: int):
    from visionattn.engine import load_config

    r = str(root)
    cfg = load_config(CONFIG, work_dir=work_dir, cfg_options={
        "train_dataloader.dataset.root": r, "train_dataloader.dataset.pipeline.0.root": r,
        "train_dataloader.batch_size": args.batch, "train_dataloader.num_workers": args.workers})
    cfg.train_dataloader.sampler = dict(type="InfiniteSampler", shuffle=True)  # one pass: workers start once
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=total, val_interval=10**9)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.param_scheduler = [dict(type="ConstantLR", factor=1.0, by_epoch=False, begin=0, end=total)]
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=10**9, by_epoch=False, save_last=False)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=10)
    cfg.custom_hooks = [dict(type="TrainBreakdownHook", warmup=args.warmup, iters=args.iters,
                             detail_iters=args.detail_iters)]
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "waymo_synth"))
    p.add_argument("--frames", type=int, default=16, help="distinct training frames written (two sequences)")
    p.add_argument("--ground-points", type=int, default=150000, help="ground points a frame (~160k points in all)")
    p.add_argument("--batch", type=int, default=4, help="frames per iteration (the recipe: 4 per GPU)")
    p.add_argument("--workers", type=int, default=8, help="loader workers (the recipe: 8)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--detail-iters", type=int, default=8)
    p.add_argument("--out", help="folder for the JSON result")
    args = p.parse_args()
    from visionattn.engine import build_runner
    from visionattn.engine.hooks import TrainBreakdownHook

    root = Path(args.root)
    write_frames(root, args.frames, args.ground_points)
    total = args.warmup + args.iters + args.detail_iters
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as work_dir:
        runner = build_runner(timing_config(root, args, work_dir, total))
        runner.train()
        hook = next(h for h in runner.hooks if isinstance(h, TrainBreakdownHook))
        e2e = hook.result

        # 2. the training step alone on one loaded batch
        model, wrapper = runner.model, runner.optim_wrapper
        batch = next(iter(runner.train_dataloader))
        for _ in range(3):
            model.train_step(batch, wrapper)
        steps = []
        for _ in range(max(5, args.detail_iters)):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.train_step(batch, wrapper)
            if device == "cuda":
                torch.cuda.synchronize()
            steps.append(time.perf_counter() - t0)
        step_s = sorted(steps)[len(steps) // 2]

        # 3. the data pipeline alone (same loader settings; workers started before the clock)
        loader = runner.build_dataloader(runner.cfg.train_dataloader)
        it = iter(loader)
        next(it)
        n_batches = max(10, args.iters)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        data_s = (time.perf_counter() - t0) / n_batches
        del it

    e2e_fps = e2e["samples_per_s"]
    result = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", batch=args.batch,
                  workers=args.workers, end_to_end=e2e, end_to_end_frames_per_s=e2e_fps,
                  train_step_ms=step_s * 1e3, train_step_frames_per_s=args.batch / step_s,
                  data_pipeline_ms_per_batch=data_s * 1e3, data_pipeline_frames_per_s=args.batch / data_s,
                  end_to_end_share_of_step=e2e_fps / (args.batch / step_s))
    print(f"end to end (tools/train.py's loop): {e2e['ms_per_iter']:.1f} ms/iteration, {e2e_fps:.2f} frames/s "
          f"(batch {args.batch}, {args.iters} iterations after {args.warmup})")
    print(f"training step alone (one loaded batch): {step_s * 1e3:.1f} ms, {args.batch / step_s:.2f} frames/s")
    print(f"data pipeline alone ({args.workers} workers): {data_s * 1e3:.1f} ms/batch, "
          f"{args.batch / data_s:.2f} frames/s")
    print(f"end to end / training step: {100 * result['end_to_end_share_of_step']:.1f} %")
    if "detail" in e2e:
        d = e2e["detail"]
        print(f"breakdown over {d['iters']} iterations (synchronised per part; {d['ms_per_iter']:.1f} ms/iteration):")
        for k, v in d["parts_ms"].items():
            print(f"  {k:<48s} {v:8.1f} ms")
    if "peak_allocated_mib" in e2e:
        print(f"peak allocated {e2e['peak_allocated_mib']:.0f} MiB")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        path = Path(args.out) / f"lidar_training_{time.strftime('%Y%m%dT%H%M%S')}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
