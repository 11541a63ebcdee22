"""Where the time of a training iteration goes: data loading, model step, optimiser, each hook.

:class:`TrainBreakdownHook` measures a run of mmengine's ``IterBasedTrainLoop`` in three windows
of consecutive iterations:

1. ``warmup`` iterations, not measured (CUDA-graph capture, cuDNN/Triton autotuning, workers
   starting).
2. ``iters`` iterations timed as a user runs them: the wall time from the end of the last warm-up
   iteration to the end of the last timed one (one device synchronisation at each end, none in
   between), so data loading, the optimiser, EMA, logging and every hook are included. This gives
   the end-to-end images/s. The same parts as in window 3 are also timed on the host alone, with no
   synchronisation (``result["host"]``): how long the loop's thread spent in each. A part that
   waits for the device (a ``.item()``, the non-finite-loss check) holds that wait, so where the
   loop is GPU-bound the waits are the host's slack, and where it is host-bound the parts add up
   to the iteration with no wait among them.
3. ``detail_iters`` iterations in which every part is timed on its own, with a device
   synchronisation before and after it, so GPU work is charged to the part that launched it:
   waiting for the data loader, the data preprocessor (host-to-device copy, normalisation,
   Mixup/CutMix, random erasing), forward + loss, backward, optimiser step (with gradient
   clipping and the AMP scaler), ``zero_grad``, and each hook's ``before_train_iter`` /
   ``after_train_iter`` (EMA, logging, LR schedule...). The synchronisations remove overlap of
   host and device, so these iterations run a little slower than window 2; their total is
   reported beside it.

The loop must run ``warmup + iters + detail_iters`` iterations (``max_iters``); the result is
``hook.result`` (a dict) and, with ``filename``, ``<work_dir>/<filename>`` (JSON).
"""
import functools
import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from mmengine.hooks import Hook

from ...registry import HOOKS
from .peak_memory import PeakMemory


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _batch_size(data_batch) -> int:
    """Samples in a collated batch: one data sample per sample (inputs may be a dict, e.g. LiDAR points
    with ``batch_size``), else the length of the inputs."""
    if not isinstance(data_batch, dict):
        return 0
    samples, inputs = data_batch.get("data_samples"), data_batch.get("inputs")
    if isinstance(samples, (list, tuple)):
        return len(samples)
    if isinstance(inputs, dict):
        return int(inputs.get("batch_size", 0))
    return len(inputs) if inputs is not None else 0


def _ordered_parts(seconds: Dict[str, float], iters: int, total_ms: float) -> "OrderedDict[str, float]":
    """Milliseconds per iteration of each part: the loader wait, the preprocessor, forward + loss (the
    model step less its timed inner parts), the optimiser's parts, the hooks (largest first), and
    ``other``, the rest of ``total_ms``."""
    parts = {k: v * 1e3 / iters for k, v in seconds.items()}
    step = parts.pop("train_step", 0.0)
    inner = sum(v for k, v in parts.items() if k == "data_preprocessor" or k.startswith("optimizer."))
    ordered = OrderedDict(data_loader_wait=parts.pop("data_loader_wait", 0.0))
    ordered["data_preprocessor"] = parts.pop("data_preprocessor", 0.0)
    ordered["forward_and_loss"] = step - inner
    for key in [k for k in parts if k.startswith("optimizer.")]:
        ordered[key] = parts.pop(key)
    ordered.update(sorted(parts.items(), key=lambda kv: -kv[1]))  # hooks, largest first
    ordered["other"] = total_ms - sum(ordered.values())
    return ordered


@HOOKS.register_module()
class TrainBreakdownHook(Hook):
    """End-to-end training throughput and a per-part time breakdown (module docstring).

    Args:
        warmup: iterations before the timed window.
        iters: iterations of the end-to-end timed window.
        detail_iters: iterations with every part timed separately (0: no breakdown).
        filename: JSON file written into the work dir at the end of training (None: none).
    """

    priority = "HIGHEST"

    def __init__(self, warmup: int = 10, iters: int = 100, detail_iters: int = 30,
                 filename: Optional[str] = "train_breakdown.json"):
        for name, value, low in (("warmup", warmup, 0), ("iters", iters, 1), ("detail_iters", detail_iters, 0)):
            if not (isinstance(value, int) and value >= low):
                raise ValueError(f"TrainBreakdownHook: {name}={value!r} must be an integer >= {low}")
        self.warmup, self.iters, self.detail_iters, self.filename = warmup, iters, detail_iters, filename
        self.result: Dict = {}
        self._peak = PeakMemory()

    # --- wrapping -----------------------------------------------------------------------------

    def _timed(self, key: str, fn: Callable) -> Callable:
        # functools.wraps keeps the attributes others set on ``fn`` (the LR schedulers mark
        # ``optim_wrapper.step`` and warn when the mark is gone)
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            if not (self._detail or self._window):
                return fn(*args, **kwargs)
            parts = self._parts if self._detail else self._host
            if self._detail:
                _sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if self._detail:
                    _sync()
                parts[key] = parts.get(key, 0.0) + time.perf_counter() - t0
        return wrapped

    def before_train(self, runner) -> None:
        loop = runner.train_loop
        total = self.warmup + self.iters + self.detail_iters
        if getattr(loop, "max_iters", total) - loop.iter < total:
            raise ValueError(f"TrainBreakdownHook needs {total} iterations (warmup {self.warmup} + iters "
                             f"{self.iters} + detail_iters {self.detail_iters}); the loop runs "
                             f"{loop.max_iters - loop.iter}: raise train_cfg.max_iters or lower them")
        self._detail, self._window, self._count, self._parts, self._host = False, False, 0, OrderedDict(), OrderedDict()
        self._ends: List[float] = []
        self._samples = 0
        self._iter_total = 0.0
        model = getattr(runner.model, "module", runner.model)
        model.data_preprocessor.forward = self._timed("data_preprocessor", model.data_preprocessor.forward)
        runner.model.train_step = self._timed("train_step", runner.model.train_step)
        wrapper = runner.optim_wrapper
        for name in ("backward", "step", "zero_grad"):
            if hasattr(wrapper, name):
                setattr(wrapper, name, self._timed(f"optimizer.{name}", getattr(wrapper, name)))
        for hook in runner.hooks:
            if hook is self:
                continue
            for stage in ("before_train_iter", "after_train_iter"):
                method = getattr(hook, stage)
                if getattr(type(hook), stage) is not getattr(Hook, stage):  # the hook does something there
                    setattr(hook, stage, self._timed(f"hook.{type(hook).__name__}.{stage}", method))
        loop.run_iter = self._run_iter(loop.run_iter)
        self._peak.reset()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._peak.update()  # before LoggerHook's log line resets the counter (priority HIGHEST)

    def _run_iter(self, run_iter: Callable) -> Callable:
        first, last = self.warmup, self.warmup + self.iters  # timed window: iterations first .. last - 1

        def wrapped(data_batch):
            i = self._count
            self._detail = last <= i < last + self.detail_iters
            self._window = first <= i < last
            if self._window:
                self._host["data_loader_wait"] = self._host.get("data_loader_wait", 0.0) + (
                    time.perf_counter() - self._last_end)
            if self._detail:
                _sync()
                loaded = time.perf_counter()
                self._parts["data_loader_wait"] = self._parts.get("data_loader_wait", 0.0) + loaded - self._last_end
            run_iter(data_batch)
            if first <= i < last:
                self._samples += _batch_size(data_batch)
            if self._detail or i in (first - 1, last - 1):
                _sync()
            end = time.perf_counter()
            if self._detail:
                self._iter_total += end - self._last_end
            if i == first - 1:
                self._window_start = end
            if i == last - 1:
                self._window_end = end
            self._last_end = end
            self._detail = self._window = False
            self._count += 1

        _sync()
        self._last_end = self._window_start = time.perf_counter()  # warmup == 0: the window starts here
        return wrapped

    # --- result -------------------------------------------------------------------------------

    def after_train(self, runner) -> None:
        if self._count < self.warmup + self.iters:
            raise RuntimeError(f"TrainBreakdownHook: training stopped after {self._count} iterations, before the "
                               f"timed window ended ({self.warmup + self.iters})")
        seconds = self._window_end - self._window_start
        ms_per_iter = seconds * 1e3 / self.iters
        result = dict(warmup=self.warmup, iters=self.iters, samples=self._samples,
                      seconds=seconds, ms_per_iter=ms_per_iter, samples_per_s=self._samples / seconds)
        result["host"] = dict(iters=self.iters, ms_per_iter=ms_per_iter,
                              parts_ms=dict(_ordered_parts(self._host, self.iters, ms_per_iter)))
        if self.detail_iters and self._count >= self.warmup + self.iters + self.detail_iters:
            n = self.detail_iters
            total = self._iter_total * 1e3 / n
            ordered = _ordered_parts(self._parts, n, total)
            result["detail"] = dict(iters=n, ms_per_iter=total, parts_ms=dict(ordered),
                                    forward_backward_ms=ordered["forward_and_loss"] + ordered.get("optimizer.backward", 0.0))
        if self._peak.active():
            result.update(self._peak.mib())
        self.result = result
        if self.filename:
            Path(runner.work_dir, self.filename).write_text(json.dumps(result, indent=1))
