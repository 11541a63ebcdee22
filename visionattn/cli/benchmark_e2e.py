"""``tools/benchmark.py --mode train-e2e``: training throughput as ``tools/train.py`` runs it.

For a model, the training recipe of its family (``RECIPES``, or ``--config``) is loaded as
``tools/train.py`` loads it (:func:`visionattn.engine.load_config`, ``--amp`` for a float16 or
bfloat16 ``--dtype``: mixed precision with float32 weights), and changed only where a timing run
must differ from a training run:

- the training set is an in-memory synthetic set of the recipe's shape
  (:mod:`visionattn.datasets.synthetic`: ``SyntheticClassification`` at the recipe's
  ``input_size``, ``SyntheticStereo`` at its ``crop_size``; ``--shape h= w=`` overrides), read by
  the recipe's number of loader workers (``--workers`` overrides) into batches of ``--batch``;
  no augmentation on the host (the recipe's GPU-side Mixup/CutMix and random erasing stay);
- an iteration-based loop of ``warmup + iters + detail_iters`` iterations, no validation, no
  checkpoints; the LR schedule is a per-iteration warm-up then cosine (the recipes' epoch-based
  schedules need an epoch of real data);
- the optimiser is the recipe's with ``fused=True`` on CUDA (``--cfg-options
  optim_wrapper.optimizer.fused=False`` turns it off);
- :class:`visionattn.engine.hooks.TrainBreakdownHook` times the run (images/s over ``--iters``
  iterations after ``--warmup``, then a per-part breakdown over ``--detail-iters``).

Everything else is the recipe's: the task model, EMA and the other hooks, logging. Next to it the
same process measures the forward + backward step of ``--mode train`` (same network, batch, dtype
and ``--cuda-graph``), so the two figures compare.
"""
import gc
import re
import tempfile
from typing import Any, Callable, Dict, List, Optional

import torch

# network name pattern -> the family's training recipe (configs/...)
RECIPES = (
    (r"biformer_tiny", "configs/classification/biformer_t.py"),
    (r"biformer_small", "configs/classification/biformer_s.py"),
    (r"biformer_base", "configs/classification/biformer_b.py"),
    (r"ffnet_([1-4])", "configs/classification/ffnet_{0}.py"),
    (r"matchstereo_tiny", "configs/stereo/matchstereo_t_sceneflow.py"),
    (r"matchstereo_small", "configs/stereo/matchstereo_s_sceneflow.py"),
    (r"matchstereo_base", "configs/stereo/matchstereo_b_sceneflow.py"),
)


def recipe_of(network: str, config: Optional[str]) -> str:
    if config:
        return config
    for pattern, recipe in RECIPES:
        m = re.fullmatch(pattern, network)
        if m:
            return recipe.format(*m.groups())
    raise ValueError(f"--mode train-e2e: no training recipe known for {network!r}; give one with --config "
                     f"(e.g. --config configs/classification/biformer_s.py to train it as a classifier)")


def e2e_config(network: str, args, device: torch.device, work_dir: str):
    """The recipe of ``network`` turned into a timing run (module docstring)."""
    from ..engine import load_config
    from ..resources import find_config

    cuda = device.type == "cuda"
    amp = args.dtype != "float32"
    if amp and not cuda:
        raise ValueError(f"--mode train-e2e --dtype {args.dtype} trains with mixed precision, which needs CUDA; "
                         f"use --dtype float32 on CPU")
    cfg = load_config(str(find_config(recipe_of(network, args.config))), work_dir=work_dir, amp=amp)
    total = args.warmup + args.iters + args.detail_iters
    sizes = dict(args.shape)
    unknown = sorted(set(sizes) - {"h", "w"})
    if unknown:
        raise ValueError(f"--mode train-e2e: unknown --shape keys {unknown} (use h=, w=)")
    model = cfg.model
    if model.get("type", "ImageClassifier") not in ("ImageClassifier", "StereoMatcher"):
        raise ValueError(f"--mode train-e2e: synthetic data exists for ImageClassifier and StereoMatcher "
                         f"recipes, not {model.get('type')!r}")
    model.network = network
    model.network_kwargs = dict(model.get("network_kwargs") or {}, **args.model_kwargs)
    model.cuda_graph = bool(args.cuda_graph and cuda)
    length = (total + 1) * args.batch
    if model.get("type", "ImageClassifier") == "ImageClassifier":
        size = cfg.get("input_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        dataset = dict(type="SyntheticClassification", length=length, num_classes=model.get("num_classes", 1000),
                       input_size=(int(sizes.get("h", h)), int(sizes.get("w", w))), pool=256)
    else:
        h, w = cfg.get("crop_size", (320, 736))
        dataset = dict(type="SyntheticStereo", length=length,
                       crop_size=(int(sizes.get("h", h)), int(sizes.get("w", w))), pool=32)
    loader = cfg.train_dataloader
    workers = loader.get("num_workers", 0) if args.workers is None else args.workers
    cfg.train_dataloader = dict(batch_size=args.batch, num_workers=workers, persistent_workers=workers > 0,
                                pin_memory=cuda, drop_last=True,
                                sampler=dict(type="DefaultSampler", shuffle=True),
                                collate_fn=loader.get("collate_fn", dict(type="default_collate")),
                                dataset=dataset)
    for key in ("val_dataloader", "val_cfg", "val_evaluator", "test_dataloader", "test_cfg", "test_evaluator"):
        cfg[key] = None
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=total, val_interval=total + 1)
    warm = max(1, min(10, total // 2))
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=warm),
        dict(type="CosineAnnealingLR", T_max=max(1, total - warm), eta_min=1e-6, by_epoch=False, begin=warm, end=total)]
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=10**9, save_last=False)
    cfg.log_processor = dict(cfg.get("log_processor", {}), by_epoch=False)
    if amp:
        cfg.optim_wrapper.dtype = args.dtype
        if args.dtype == "bfloat16":  # bfloat16 has float32's range: no loss scaling
            cfg.optim_wrapper.loss_scale = dict(enabled=False)
    if cuda and "optimizer" in cfg.optim_wrapper:
        cfg.optim_wrapper.optimizer.setdefault("fused", True)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.custom_hooks = list(cfg.get("custom_hooks") or []) + [
        dict(type="TrainBreakdownHook", warmup=args.warmup, iters=args.iters, detail_iters=args.detail_iters)]
    cfg.randomness = dict(seed=0)
    return cfg


def run_e2e(network: str, args, device: torch.device, step_row: Callable[[Dict], Dict]) -> List[Dict[str, Any]]:
    """Rows for ``network``: the ``--mode train`` step (``step_row(shape)``: its measured row at that
    input size, from the benchmark tool) and the end-to-end run (module docstring)."""
    from ..engine import build_runner
    from ..engine.hooks import TrainBreakdownHook

    rows = []
    work_dir = tempfile.TemporaryDirectory(prefix="visionattn_e2e_")
    cfg = e2e_config(network, args, device, work_dir.name)
    data = cfg.train_dataloader["dataset"]
    h, w = data["input_size"] if "input_size" in data else data["crop_size"]
    # 1. the forward + backward step, as --mode train measures it, at the size the run trains on
    row = {"target": network, "kind": "model", "impl": "train-step", "size": [h, w]}
    try:
        row.update(step_row(dict(h=h, w=w)))
    except Exception as err:  # the end-to-end row is still measured
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    rows.append(row)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 2. tools/train.py's machinery on synthetic data
    row = {"target": network, "kind": "model", "impl": "train-e2e", "batch": args.batch, "size": [h, w]}
    with work_dir:
        try:
            row["config"] = {k: cfg.get(k) for k in ("train_dataloader", "optim_wrapper", "custom_hooks")}
            row["config"]["model"] = {k: v for k, v in cfg.model.items() if k != "data_preprocessor"}
            runner = build_runner(cfg)
            runner.train()
            hook = next(h for h in runner.hooks if isinstance(h, TrainBreakdownHook))
            res = hook.result
            row.update(latency_ms=res["ms_per_iter"], throughput=res["samples_per_s"], throughput_unit="img/s",
                       peak_mem_mib=res.get("peak_allocated_mib"), breakdown=res.get("detail"),
                       host_breakdown=res.get("host"))
            del runner, hook
        except Exception as err:  # reported in the row, as the other modes do
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rows.append(row)
    step, e2e = rows
    step["speedup"] = 1.0
    if "throughput" in step and "throughput" in e2e:
        e2e["speedup"] = step["latency_ms"] / e2e["latency_ms"] * e2e["batch"] / step["batch"]
        e2e["of_step"] = e2e["throughput"] / step["throughput"]
        detail = e2e.get("breakdown")
        if detail:
            e2e["of_in_loop_forward_backward"] = detail["forward_backward_ms"] / e2e["latency_ms"]
    return rows


def breakdown_table(rows: List[Dict[str, Any]]) -> str:
    """Per-part milliseconds of each end-to-end row: synchronised around each part (``--detail-iters``),
    and the host's own time in the end-to-end window (no synchronisation; a wait for the GPU counts
    in the part that waits)."""
    lines = []
    for r in rows:
        detail = r.get("breakdown")
        if not detail:
            continue
        host = (r.get("host_breakdown") or {}).get("parts_ms", {})
        lines.append(f"{r['target']} train-e2e: {r['latency_ms']:.2f} ms/iter timed end to end "
                     f"({r['throughput']:.1f} img/s, {r.get('of_step', float('nan')) * 100:.1f} % of the "
                     f"--mode train step); {detail['iters']} iterations timed part by part: "
                     f"{detail['ms_per_iter']:.2f} ms/iter")
        lines.append(f"  {'part':<52} {'synchronised':>19}  {'host, end to end':>16}")
        total = detail["ms_per_iter"]
        for key in list(detail["parts_ms"]) + [k for k in host if k not in detail["parts_ms"]]:
            ms = detail["parts_ms"].get(key)
            synced = f"{ms:8.3f} ms {100 * ms / total:5.1f} %" if ms is not None else " " * 19
            on_host = f"{host[key]:8.3f} ms" if key in host else ""
            lines.append(f"  {key:<52} {synced}  {on_host:>16}")
    return "\n".join(lines)
