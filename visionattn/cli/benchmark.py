"""Throughput, latency and peak memory of models or ops, several implementations in one process.

    visionattn-benchmark MODEL_OR_OP [MODEL_OR_OP ...] [--impl a,b,...] [--official path.py:fn]
        [--batch 8] [--dtype float32|float16|bfloat16] [--device cpu|cuda] [--shape k=v ...]
        [--mode infer|train|train-e2e] [--channels-last] [--compile [--compile-options k=v] | --cuda-graph] [--warmup 10] [--iters 50] [--rounds 1] [--out DIR]
        [--model-kwargs k=v ...] [--checkpoint PATH] [--profile]

- A target is an op when ``visionattn/ops/<name>.py`` exists (op-module contract: the function
  ``<name>(..., impl=)``, ``IMPLS``, ``example_inputs(device, dtype, **sizes)``); ``--shape`` sizes go
  to ``example_inputs``. Otherwise it is a model name (``visionattn.list_models()`` or timm) run at
  its default input size (``--shape h=.. w=..`` overrides) under ``ops.dispatch.use_impl(impl)``.
- ``--impl``/``--compare``: implementations to compare (ops: default all of ``IMPLS``; models:
  ``auto``; for a model, ``op:impl[+op:impl]`` forces single ops, e.g. ``layer_norm:reference``). ``--official path.py:fn`` adds an ``official`` row: for an op ``fn(**inputs)``, for a
  model ``fn(**model_kwargs) -> nn.Module``, given our model's weights through the family converter
  so outputs compare; with ``--checkpoint`` (weights for our model, e.g. a trained state such as
  DGQA's group allocation) the official callable loads its own and nothing is shared. Official
  code is never part of the repository.
- The first row is the baseline: ``speed-up`` = baseline latency / latency, ``max|diff|`` = largest
  absolute difference of the first output tensor from the baseline's (infer mode).
- ``--cuda-graph`` (our models, CUDA): infer mode replays the forward from a CUDA graph
  (``visionattn.cuda_graph.CUDAGraphRunner``), train mode the forward and backward
  (``visionattn.cuda_graph.TrainingGraph``); an ``official`` row stays eager, as released. A network
  whose forward takes ``cuda_graph`` (ScatterFormer: data-dependent voxel counts) is called with
  ``cuda_graph=True`` and replays its fixed-shape part itself.
  ``--compile-options k=v`` passes inductor options to ``torch.compile``. ``first_call_s`` in the
  JSON is the wall time of the first call (compile or capture included).
- ``--rounds R``: every row is timed R times (``--iters`` calls each), the rows taking turns, and its
  latency is the median over all rounds (``rounds_ms`` in the JSON holds each round's median); the
  models of all rows stay loaded. One row after another, a machine that drifts (clocks, temperature,
  host load) favours one of them; taking turns spreads the drift over all.
- Latency is the median over ``--iters`` timed calls after ``--warmup`` calls; CUDA is timed with
  events and synchronised, with ``cudnn.benchmark`` on (as timm's benchmark); peak memory is
  ``torch.cuda.max_memory_allocated`` above what the timed calls start from (CUDA only; with
  ``--cuda-graph`` from before the capture, so the graph's memory pool counts; one eager call
  runs first so that autotuning workspaces do not).
- ``--mode train-e2e`` (models): ``tools/train.py``'s loop (the family's recipe: optimiser, EMA,
  data loading, logging) on in-memory synthetic data, images/s over ``--iters`` iterations after
  ``--warmup`` and the time of each part over ``--detail-iters`` more, beside the ``--mode train``
  step of the same network (``visionattn.cli.benchmark_e2e``; ``--config``, ``--workers``,
  ``--cfg-options`` adjust the run).
- ``--profile``: where each row's time goes, from ``torch.profiler`` over ``--iters`` more calls:
  ``device_ms`` per call (CUDA: time in GPU kernels and copies; CPU: self time in operators),
  ``launches`` per call, the ten costliest kernels or operators, and ``queued_ms``: the pace of
  ``--iters`` calls issued back to back with one sync at the end. Beside the latency (one call,
  synchronised) these tell a host-bound call (latency and queued pace well above the kernels) from a
  device-bound one. CUDA graph replays are profiled kernel by kernel.
- Results are printed as a table and saved as JSON under ``benchmarks/`` with the machine described.

In a clone, ``python tools/benchmark.py`` is the same program.
"""
import argparse
import copy
import datetime as dt
import importlib
import importlib.util
import inspect
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from mmengine.config import DictAction

from visionattn.cli.console import ArgumentParser, cli_main

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --- what is measured -------------------------------------------------------------------------

def _tensors(obj) -> List[torch.Tensor]:
    """Every tensor in a (nested) model/op output, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _backward(out) -> None:
    loss = sum(t.float().mean() for t in _tensors(out) if t.requires_grad)
    if isinstance(loss, torch.Tensor):
        loss.backward()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int,
            since: Optional[int] = None) -> Dict[str, Any]:
    """Median latency (ms) of ``fn()`` and, on CUDA, its peak allocated memory (MiB): over the timed
    calls above the memory they start from, or, with ``since`` (bytes allocated at an earlier point
    whose peak was reset), over everything from that point on."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        base = since
        if since is None:
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
    times = timed_calls(fn, device, iters)
    result = dict(_latency(times), peak_mem_mib=None, times_ms=times)
    if device.type == "cuda":
        result["peak_mem_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return result


def timed_calls(fn: Callable[[], Any], device: torch.device, iters: int) -> List[float]:
    """Milliseconds of each of ``iters`` calls of ``fn()`` (CUDA events on CUDA)."""
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _latency(times: List[float]) -> Dict[str, float]:
    return {"latency_ms": statistics.median(times), "latency_ms_min": min(times), "latency_ms_max": max(times)}


def interleave_rounds(timed: List[tuple], device: torch.device, rounds: int, iters: int) -> None:
    """``rounds - 1`` more rounds of ``iters`` calls per row, the rows taking turns, so that a slow
    drift of the machine (clocks, temperature, the host) reaches every row alike; each row's
    latency becomes the median over all its rounds (``rounds_ms``: the median of each round)."""
    for row, _ in timed:
        row["rounds_ms"] = [statistics.median(row["times_ms"])]
    for _ in range(rounds - 1):
        for row, fn in timed:
            times = timed_calls(fn, device, iters)
            row["rounds_ms"].append(statistics.median(times))
            row["times_ms"] += times
    for row, _ in timed:
        row.update(_latency(row["times_ms"]))
        row["throughput"] = (row["batch"] or 1) * 1e3 / row["latency_ms"]


def profile_calls(fn: Callable[[], Any], device: torch.device, iters: int, top: int = 10) -> Dict[str, Any]:
    """Where the time of ``fn()`` goes (see ``--profile``): ``queued_ms``, then ``device_ms``,
    ``launches`` and the ``top`` costliest kernels (CUDA) or operators (CPU) per call."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    queued = (time.perf_counter() - t0) * 1e3 / iters
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(iters):
            fn()
        _sync(device)
    entries = []
    for e in prof.key_averages():
        if cuda and e.device_type != DeviceType.CUDA:
            continue
        # the profiler's time fields are in microseconds; named *device* since torch 2.4
        us = getattr(e, "self_device_time_total", None) if cuda else e.self_cpu_time_total
        if cuda and us is None:
            us = e.self_cuda_time_total
        if us > 0 or not cuda:
            entries.append((e.key, us / 1e3 / iters, e.count / iters))
    entries.sort(key=lambda x: -x[1])
    total = sum(ms for _, ms, _ in entries)
    return {"device_ms": total, "launches": sum(n for _, _, n in entries), "queued_ms": queued,
            "top": [{"name": name, "ms": ms, "share": ms / total if total else 0.0, "per_call": n}
                    for name, ms, n in entries[:top]]}


# --- targets ----------------------------------------------------------------------------------

def load_official(spec: str) -> Callable:
    """``path/to/file.py:callable`` -> the callable (the file is imported as a module)."""
    if ":" not in spec:
        raise ValueError(f"--official expects path.py:callable, got {spec!r}")
    path, name = spec.rsplit(":", 1)
    if not Path(path).is_file():
        raise FileNotFoundError(f"--official file {path!r} does not exist")
    sys.path.insert(0, str(Path(path).resolve().parent))  # official code imports its siblings
    mod_spec = importlib.util.spec_from_file_location(f"_official_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise ValueError(f"{path} has no {name!r}")
    return getattr(module, name)


def find_op(name: str):
    """The op module ``visionattn.ops.<name>`` if it exists, else None."""
    if importlib.util.find_spec("visionattn.ops") is None or not re.fullmatch(r"\w+", name):
        return None
    if importlib.util.find_spec(f"visionattn.ops.{name}") is None:
        return None
    module = importlib.import_module(f"visionattn.ops.{name}")
    missing = [a for a in (name, "IMPLS", "example_inputs") if not hasattr(module, a)]
    if missing:
        raise ValueError(f"visionattn/ops/{name}.py lacks {missing} of the op-module contract "
                         f"(function {name}(..., impl=), IMPLS, example_inputs(device, dtype, **sizes))")
    return module


def _with_grad(inputs: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v.detach().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in inputs.items()}


def op_cases(name: str, module, impls: List[str], official: Optional[Callable], args, device, dtype):
    """(impl, fn, None, None) for an op: each fn runs one call (plus backward in train mode)."""
    inputs = module.example_inputs(device=device, dtype=dtype, **args.shape)
    op = getattr(module, name)
    if args.mode == "train":
        inputs = _with_grad(inputs)
    cases = []
    for impl in impls:
        call = (lambda **kw: official(**kw)) if impl == "official" else (lambda impl=impl, **kw: op(**kw, impl=impl))
        if args.compile:
            call = torch.compile(call, options=args.compile_options or None)
        cases.append((impl, _step(call, inputs, args.mode), None, None))
    return cases


def _step(call: Callable, inputs: Dict[str, Any], mode: str) -> Callable[[], Any]:
    if mode == "train":
        def fn():
            out = call(**inputs)
            _backward(out)
            return out
        return fn
    def fn():
        with torch.no_grad():
            return call(**inputs)
    return fn


def _network_info(name: str) -> Dict[str, Any]:
    """What a task network declares for benchmarking in ``register_network(..., **info)``:
    ``input_dtype`` (floating inputs keep this dtype whatever ``--dtype``, e.g. point coordinates
    in metres, which bfloat16 cannot hold), ``samples_in(*inputs) -> int`` (samples in one call when
    the first input's first dimension is not the batch, e.g. points of several frames) and
    ``throughput_unit``."""
    from visionattn.registry import NETWORKS

    return dict(NETWORKS[name].info) if name in NETWORKS else {}


def model_inputs(name: str, model, batch: int, sizes: Dict[str, Any], device, dtype) -> tuple:
    """Inputs at the model's default size: a task network's ``example_inputs`` or timm's input_size."""
    from visionattn.registry import NETWORKS

    if name in NETWORKS:
        entry = NETWORKS[name]
        dtype = entry.info.get("input_dtype", dtype)
        if entry.example_inputs is None:
            raise ValueError(f"network {name!r} registers no example_inputs to benchmark with")
        inputs = entry.example_inputs(batch, **sizes) if sizes else entry.example_inputs(batch)
    else:
        c, h, w = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))
        h, w = int(sizes.pop("h", h)), int(sizes.pop("w", w))
        if sizes:
            raise ValueError(f"unknown --shape keys {sorted(sizes)} for model {name!r} (use h=, w=)")
        inputs = (torch.randn(batch, c, h, w),)
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    return tuple(t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                 if isinstance(t, torch.Tensor) else t for t in inputs)


def _prepare(model, name, args, device, dtype):
    model = model.to(device=device, dtype=dtype)
    model.train(args.mode == "train")
    inputs = model_inputs(name, model, args.batch, dict(args.shape), device, dtype)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = tuple(t.contiguous(memory_format=torch.channels_last)
                       if isinstance(t, torch.Tensor) and t.dim() == 4 else t for t in inputs)
    return model, inputs


def _share_weights(official_model, ours, name: str) -> bool:
    """Give our model the official model's weights (through the family converter) so outputs compare."""
    from visionattn import hub
    from visionattn.factory import model_family

    try:
        hub.load_checkpoint(ours, {"state_dict": official_model.state_dict()}, family=model_family(name))
        return True
    except Exception:
        return False


def known_impls() -> set:
    """Every implementation name some op of the library has (what ``use_impl`` can force)."""
    import pkgutil

    import visionattn.ops

    names = {"auto", "reference"}  # every op has a reference path
    for info in pkgutil.iter_modules(visionattn.ops.__path__):
        if info.name.startswith("_") or info.name == "dispatch":
            continue
        names.update(getattr(importlib.import_module(f"visionattn.ops.{info.name}"), "IMPLS", ()))
    return names


def _scoped_impl_known(impl: str) -> bool:
    """``op:impl[+op:impl...]`` (forces single ops, see ``use_impl``): each op exists and has the impl."""
    if ":" not in impl:
        return False
    for pair in impl.split("+"):
        op, _, name = pair.partition(":")
        module = find_op(op)
        if module is None or name not in (*module.IMPLS, "reference"):
            return False
    return True


def model_cases(name: str, impls: List[str], official: Optional[Callable], args, device, dtype):
    """(impl, fn, batch, prime) for a model: one model and one input batch shared by every
    implementation; ``prime`` (graphed rows) is the same call without the graph."""
    import visionattn
    from visionattn.ops.dispatch import use_impl

    unknown = sorted(i for i in set(impls) - known_impls() - {"official"} if not _scoped_impl_known(i))
    if unknown:
        raise ValueError(f"no op of visionattn has implementation(s) {unknown}; choose from {sorted(known_impls())} "
                         f"or force single ops with op:impl (e.g. layer_norm:reference)")
    ours = visionattn.create_model(name, checkpoint=args.checkpoint, **args.model_kwargs)
    ours, inputs = _prepare(ours, name, args, device, dtype)
    cases = []
    graphs_inside = args.cuda_graph and "cuda_graph" in inspect.signature(ours.forward).parameters
    for impl in impls:
        model = ours
        if graphs_inside and cases and impl != "official":
            model = copy.deepcopy(ours)  # the network keeps its captured graphs: each row captures its own
        if impl == "official":
            model, _ = _prepare(official(**args.model_kwargs), name, args, device, dtype)
            if args.checkpoint is None and not _share_weights(model, ours, name):
                print(f"note: could not load the official {name} weights into ours; outputs are not compared",
                      file=sys.stderr)
        forward = torch.compile(model, options=args.compile_options or None) if args.compile else model
        forced = None if impl in ("auto", "official") else impl
        # the official code runs as released (eager): the baseline that graphs are measured against
        graph = args.cuda_graph and impl != "official"
        if graph and args.mode == "train":
            from visionattn.cuda_graph import TrainingGraph
            forward = TrainingGraph(model)
        elif graph and graphs_inside:
            # a network with data-dependent shapes (ScatterFormer) replays its fixed-shape part itself
            def forward(*xs, model=model):
                return model(*xs, cuda_graph=True)
        elif graph:
            from visionattn.cuda_graph import CUDAGraphRunner

            def graphed(*xs, model=model, forced=forced):
                with use_impl(forced):
                    return model(*xs)
            # outputs are the graph's own buffers (no copies timed); each impl gets its own graph
            forward = CUDAGraphRunner(graphed, clone_outputs=False, max_graphs=1)

        # a training step clears the gradients as an optimizer does, through its own list of the
        # parameters: nn.Module.zero_grad walks the module tree on every call (2.1 ms of host time for
        # BiFormer-S on the H200 machine, with the GPU idle before a graphed step, against 0.05 ms)
        params = list(model.parameters()) if args.mode == "train" else []

        def call(forward=forward, forced=forced, params=params):
            with use_impl(forced):
                if args.mode == "train":
                    for p in params:
                        p.grad = None
                    out = forward(*inputs)
                    _backward(out)
                    return out
                with torch.no_grad():
                    return forward(*inputs)
        info = _network_info(name)
        if "samples_in" in info:
            batch = info["samples_in"](*inputs)
        else:
            batch = inputs[0].shape[0] if inputs and isinstance(inputs[0], torch.Tensor) else args.batch
        def prime(call=call, model=model):
            # one eager call before a graph is captured: one-time cuDNN / Triton autotuning
            # workspaces are then not counted as the graph's memory
            call(forward=model)
            model.zero_grad(set_to_none=True)
        cases.append((impl, call, batch, prime if graph else None))
    return cases


def _train_step(name: str, args, device, shape: Dict[str, Any]) -> Dict[str, Any]:
    """The ``--mode train`` measurement of model ``name`` (impl auto) at input ``shape`` (train-e2e's
    companion row): latency, peak memory, throughput."""
    step_args = argparse.Namespace(**{**vars(args), "mode": "train", "impl": ["auto"], "shape": dict(shape)})
    (_, fn, batch, prime), = model_cases(name, ["auto"], None, step_args, device, DTYPES[args.dtype])
    since = None
    if args.cuda_graph and device.type == "cuda":
        prime()
        torch.cuda.reset_peak_memory_stats(device)
        since = torch.cuda.memory_allocated(device)
    fn()
    row = dict(measure(fn, device, args.warmup, args.iters, since=since), batch=batch)
    row.pop("times_ms")
    row["throughput"], row["throughput_unit"] = batch * 1e3 / row["latency_ms"], "img/s"
    return row


# --- the run ----------------------------------------------------------------------------------

def machine(device: torch.device) -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host_platform": platform.platform(),
            "python": platform.python_version(), "cpu": cpu, "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device), "gpu": None}
    try:
        import timm
        info["timm"] = timm.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return info


def run(args) -> Dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA GPU is available; use --device cpu")
    if device.type == "cuda":
        # as timm's benchmark does: let cuDNN pick its fastest algorithm per shape (warm-up absorbs it)
        torch.backends.cudnn.benchmark = True
    dtype = DTYPES[args.dtype]
    official = load_official(args.official) if args.official else None
    rows = []
    if args.mode == "train-e2e":
        from .benchmark_e2e import run_e2e

        for target in args.targets:
            if find_op(target) is not None:
                raise ValueError(f"--mode train-e2e trains models; {target!r} is an op")
            rows += run_e2e(target, args, device, lambda shape, target=target: _train_step(target, args, device, shape))
        return {"machine": machine(device), "settings": _settings(args), "results": rows}
    timed = []  # (row, fn) of every measured row: --rounds times them again, taking turns
    for target in args.targets:
        op = find_op(target)
        impls = list(args.impl) if args.impl else (list(op.IMPLS) if op is not None else ["auto"])
        if official is not None:
            impls.append("official")
        if op is not None:
            cases, kind = op_cases(target, op, impls, official, args, device, dtype), "op"
        else:
            cases, kind = model_cases(target, impls, official, args, device, dtype), "model"
        for impl, fn, batch, prime in cases:
            row = {"target": target, "kind": kind, "impl": impl, "batch": batch}
            try:
                since = None
                if args.cuda_graph and device.type == "cuda":
                    if prime is not None:
                        prime()
                    # a graph's memory pool is allocated while capturing (the first call): count it
                    torch.cuda.reset_peak_memory_stats(device)
                    since = torch.cuda.memory_allocated(device)
                t0 = time.perf_counter()
                out = fn()
                _sync(device)
                row["first_call_s"] = time.perf_counter() - t0  # includes compile / graph capture
                first = next(iter(_tensors(out)), None)
                row.update(measure(fn, device, args.warmup, args.iters, since=since))
                unit = _network_info(target).get("throughput_unit", "img/s") if kind == "model" else "calls/s"
                row["throughput"] = (batch or 1) * 1e3 / row["latency_ms"]
                row["throughput_unit"] = unit
                timed.append((row, fn))
            except Exception as err:  # one failing impl must not hide the others' numbers
                msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                # impls taken by default from IMPLS may not run here (e.g. a CUDA kernel on CPU)
                unsupported = isinstance(err, ValueError) and "does not support these inputs" in str(err)
                row["skipped" if unsupported and not args.impl else "error"] = msg
                first = None
            row["_out"] = first.detach().float() if first is not None else None
            rows.append(row)
    if args.rounds > 1:
        interleave_rounds(timed, device, args.rounds, args.iters)
    if args.profile:
        for row, fn in timed:
            row["profile"] = profile_calls(fn, device, args.iters)
    for row in rows:
        row.pop("times_ms", None)
    _compare(rows)
    return {"machine": machine(device), "settings": _settings(args), "results": rows}


def _compare(rows: List[Dict[str, Any]]) -> None:
    """Speed-up and output difference of each row against the first row that ran."""
    base = next((r for r in rows if "latency_ms" in r), None)
    for r in rows:
        out = r.pop("_out")
        if base is None or "latency_ms" not in r:
            continue
        r["speedup"] = base["latency_ms"] / r["latency_ms"]
        ref = base.get("_ref", None) if r is not base else None
        if r is base:
            base["_ref"] = out
        elif out is not None and ref is not None and out.shape == ref.shape and r["target"] == base["target"]:
            r["max_abs_diff"] = (out - ref).abs().max().item()
    if base is not None:
        base.pop("_ref", None)


def _settings(args) -> Dict[str, Any]:
    keys = ("targets", "impl", "official", "batch", "dtype", "device", "shape", "mode", "channels_last",
            "compile", "compile_options", "cuda_graph", "warmup", "iters", "rounds", "model_kwargs", "checkpoint",
            "profile")
    out = {k: getattr(args, k) for k in keys}
    if args.mode == "train-e2e":
        out.update({k: getattr(args, k) for k in ("config", "workers", "detail_iters", "cfg_options")})
    return out


def table(report: Dict[str, Any]) -> str:
    head = ("target", "impl", "batch", "latency ms", "throughput", "peak MiB", "speed-up", "max|diff|")
    lines = []
    for r in report["results"]:
        if "error" in r or "skipped" in r:
            note = f"error: {r['error']}" if "error" in r else "skipped: does not support these inputs"
            lines.append((r["target"], r["impl"], str(r["batch"] or "–"), note[:70], "", "", "", ""))
            continue
        lines.append((r["target"], r["impl"], str(r["batch"] or "–"), f"{r['latency_ms']:.3f}",
                      f"{r['throughput']:.1f} {r['throughput_unit']}",
                      "–" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.1f}",
                      f"{r['speedup']:.2f}x" if "speedup" in r else "–",
                      f"{r['max_abs_diff']:.2e}" if "max_abs_diff" in r else "–"))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    m = report["machine"]
    s = report["settings"]
    title = (f"{m['gpu'] or m['cpu']} | torch {m['torch']} | {s['device']} {s['dtype']} {s['mode']}"
             f"{' channels_last' if s['channels_last'] else ''}{' compiled' if s['compile'] else ''}"
             f"{' cuda-graph' if s.get('cuda_graph') else ''}")
    out = "\n".join([title, fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)])
    profiled = [r for r in report["results"] if "profile" in r]
    if profiled:
        what = "kernels" if s["device"].startswith("cuda") else "operators"
        out += f"\nprofile, per call ({what}; queued = calls back to back, one sync at the end):"
        for r in profiled:
            p = r["profile"]
            out += (f"\n  {r['target']} {r['impl']}: latency {r['latency_ms']:.3f} ms, queued {p['queued_ms']:.3f} ms, "
                    f"{what} {p['device_ms']:.3f} ms in {p['launches']:.0f}")
            for t in p["top"][:5]:
                out += f"\n    {t['share']:6.1%}  {t['ms']:.3f} ms  x{t['per_call']:g}  {t['name'][:90]}"
    if s["mode"] == "train-e2e":
        from .benchmark_e2e import breakdown_table

        out += "\n" + breakdown_table(report["results"])
    return out


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", metavar="MODEL_OR_OP")
    p.add_argument("--impl", "--compare", dest="impl", type=lambda s: [x for x in s.split(",") if x],
                   help="comma-separated implementations; the first is the baseline")
    p.add_argument("--official", metavar="PATH.py:CALLABLE", help="add an 'official' row from a local file")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", nargs="*", default={}, action=DictAction, metavar="K=V", help="op sizes / model h=, w=")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=DictAction, metavar="K=V", help="create_model kwargs")
    p.add_argument("--checkpoint", help="weights for our model(s): create_model(name, checkpoint=...)")
    p.add_argument("--mode", choices=("infer", "train", "train-e2e"), default="infer",
                   help="train: forward + backward; train-e2e: tools/train.py's loop on synthetic data "
                        "(optimiser, EMA, loader, hooks), beside the train step")
    p.add_argument("--config", help="train-e2e: the training recipe (default: the network family's)")
    p.add_argument("--workers", type=int, help="train-e2e: data loader workers (default: the recipe's)")
    p.add_argument("--detail-iters", type=int, default=30,
                   help="train-e2e: iterations timed part by part after the end-to-end window")
    p.add_argument("--cfg-options", nargs="*", default={}, action=DictAction, metavar="K=V",
                   help="train-e2e: overrides of the timing run's config, e.g. optim_wrapper.optimizer.fused=False")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-options", nargs="*", default={}, action=DictAction, metavar="K=V",
                   help="inductor options for --compile, e.g. layout_optimization=False")
    p.add_argument("--cuda-graph", action="store_true",
                   help="our models on CUDA: replay the forward (infer) or forward+backward (train) from "
                        "captured CUDA graphs; an --official row stays eager")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--rounds", type=int, default=1,
                   help="time every row this many times, the rows taking turns (all models stay loaded); "
                        "the latency is the median over the rounds: fairer ratios of rows of one run")
    p.add_argument("--profile", action="store_true",
                   help="also record where each row's time goes: kernel (CUDA) or operator (CPU) time per call, "
                        "launches, the costliest ten, and the pace of calls issued back to back")
    p.add_argument("--out", default="benchmarks", help="folder for the JSON result ('' to skip saving)")
    args = p.parse_args(argv)
    if args.warmup < 0 or args.iters < 1 or args.rounds < 1:
        p.error("--warmup must be >= 0, --iters and --rounds >= 1")
    if args.rounds > 1 and args.mode == "train-e2e":
        p.error("--rounds interleaves rows of --mode infer/train; a train-e2e run is timed once")
    if args.cuda_graph and args.compile:
        p.error("--cuda-graph is for eager models (not with --compile)")
    if args.compile_options and not args.compile:
        p.error("--compile-options needs --compile")
    if args.mode == "train-e2e" and (args.compile or args.official or args.impl or args.checkpoint or args.profile):
        p.error("--mode train-e2e runs a recipe as tools/train.py does: no --compile, --official, --impl, --checkpoint "
                "or --profile")
    if args.mode != "train-e2e" and (args.config or args.workers is not None or args.cfg_options):
        p.error("--config, --workers and --cfg-options are for --mode train-e2e")
    if args.detail_iters < 0:
        p.error("--detail-iters must be >= 0")
    return args


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(table(report))
    if args.out:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        tag = "-".join(re.sub(r"\W", "_", t) for t in args.targets)[:80]
        path = Path(args.out) / f"{tag}_{args.device.replace(':', '')}_{args.dtype}_{args.mode}_{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while path.exists():  # two runs in one second keep both results
            path, n = path.with_name(f"{path.stem.rsplit('~', 1)[0]}~{n}.json"), n + 1
        path.write_text(json.dumps(report, indent=1))
        print(f"saved {path}")
    return 1 if any("error" in r for r in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
