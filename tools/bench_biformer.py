"""BiFormer benchmark in one process (to be folded into tools/benchmark.py once that lands on main).

    python tools/bench_biformer.py [--official path.py] [--cases infer_bf16,train,dense512:fast/official,...]
        [--budget SECONDS] [--out benchmarks/]

Rows per case: ``fast`` (impl auto = FlexAttention on CUDA, eager model), ``fast+compile`` (same,
every block torch.compile'd), ``reference`` (gather-based op), ``official`` (the official model from a
scratch checkout, loaded from ``--official``: a file defining ``classifier(name) -> nn.Module`` and
``backbone(name, n_win) -> nn.Module`` returning the 4 stage maps; never part of the repository).
All rows share the official model's random weights (converted with the biformer converter);
``max|diff|`` is against the official output. Latency: median of CUDA-event timings.
Cases run in the order given and stop when ``--budget`` seconds are spent; the JSON is rewritten
after every row.
"""
import argparse
import datetime as dt
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import visionattn
from visionattn.hub import load_checkpoint
from visionattn.ops.dispatch import use_impl

ARGS = DEVICE = None
CASES = {
    # name: (model, input size, batch, dtype, mode, n_win)
    "infer_bf16": ("biformer_small", 224, 128, torch.bfloat16, "infer", 7),
    "infer_fp32": ("biformer_small", 224, 128, torch.float32, "infer", 7),
    "train": ("biformer_small", 224, 64, torch.bfloat16, "train", 7),
    "dense512": ("biformer_small", 512, 8, torch.bfloat16, "features", 8),
    "dense1024": ("biformer_small", 1024, 2, torch.bfloat16, "features", 16),
}


def timed(fn, warmup=3, iters=10):
    for _ in range(warmup):
        fn()
    if DEVICE == "cpu":  # dry run of the script itself
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3, 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def build(kind, name, n_win, state):
    model = visionattn.create_model(name, features_only=n_win != 7, n_win=n_win)
    load_checkpoint(model, {"model": state}, family="biformer")
    if kind == "fast+compile":
        inner = getattr(model, "model", model)
        for stage in inner.stages:
            for block in stage.blocks:
                block.compile(dynamic=False)  # dynamic shapes trip the flex lowering (torch 2.11)
    return model


def run_case(case, kinds, official_mod, rows, record):
    name, size, batch, dtype, mode, n_win = CASES[case]
    torch.manual_seed(0)
    batch, size = ARGS.batch or batch, ARGS.size or size
    kinds = [k for k in kinds if official_mod or k != "official"]
    x = torch.randn(batch, 3, size, size, device=DEVICE)
    ref_out = None
    src = official_mod.classifier(name) if official_mod else visionattn.create_model(name)
    state = dict(src.state_dict())
    for kind in kinds:
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        if kind == "official":
            model = official_mod.backbone(name, n_win) if mode == "features" else src
            if mode == "features":
                model.m.load_state_dict(state)
        else:
            model = build(kind, name, n_win, state)
        model = model.to(DEVICE)
        impl = "reference" if kind == "reference" else None
        row = dict(case=case, impl=kind, model=name, size=size, batch=batch, dtype=str(dtype), mode=mode, n_win=n_win)
        try:
            with use_impl(impl):
                if mode == "train":
                    model.train()
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                    target = torch.randint(0, 1000, (batch,), device=DEVICE)

                    def step():
                        with torch.autocast(DEVICE, dtype=dtype):
                            loss = torch.nn.functional.cross_entropy(model(x), target)
                        loss.backward()
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                    ms, mem = timed(step)
                else:
                    model = model.eval().to(dtype)
                    xd = x.to(dtype)

                    @torch.no_grad()
                    def fwd():
                        return model(xd)
                    ms, mem = timed(fwd)
                    out = fwd()
                    out = out[-1] if isinstance(out, (list, tuple)) else out
                    if ref_out is None:
                        ref_out = out.float()
                    else:
                        row["max_abs_diff_vs_first"] = (out.float() - ref_out).abs().max().item()
            row.update(latency_ms=ms, img_per_s=batch * 1000 / ms, peak_mem_gib=mem)
        except Exception as err:  # record OOM / failures as rows, keep going
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        rows.append(row)
        record()
        print(json.dumps(row), flush=True)
        del model
    del src
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", help="file defining classifier(name) and backbone(name, n_win)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--budget", type=float, default=1e9, help="stop starting new cases after this many s")
    parser.add_argument("--out", default="benchmarks")
    parser.add_argument("--device", default="cuda", help="cpu: dry run of the script (use small --batch/--size)")
    parser.add_argument("--kinds", default="official,fast,fast+compile,reference")
    parser.add_argument("--batch", type=int, help="override every case's batch")
    parser.add_argument("--size", type=int, help="override every case's input size")
    global ARGS, DEVICE
    ARGS = args = parser.parse_args()
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench_biformer.py measures CUDA throughput: run it on a machine with an NVIDIA GPU")
    official_mod = None
    if args.official:
        if not Path(args.official).is_file():
            raise FileNotFoundError(f"--official file {args.official!r} does not exist")
        spec = importlib.util.spec_from_file_location("_official_biformer", args.official)
        official_mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(official_mod)
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"biformer_{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}.json"
    rows = []
    machine = dict(gpu=torch.cuda.get_device_name() if DEVICE == "cuda" else platform.processor(),
                   torch=torch.__version__, python=platform.python_version(),
                   cuda=torch.version.cuda)

    def record():
        path.write_text(json.dumps(dict(machine=machine, rows=rows), indent=1))

    for spec in args.cases.split(","):
        case, _, only = spec.partition(":")  # "case:kind1/kind2" limits the rows of one case
        kinds = only.split("/") if only else args.kinds.split(",")
        if case not in CASES:
            raise ValueError(f"unknown case {case!r}; choose from {sorted(CASES)}")
        if time.time() - t0 > args.budget:
            print(f"budget spent, skipping {case}", flush=True)
            continue
        run_case(case, kinds, official_mod, rows, record)
    print("wrote", path)


if __name__ == "__main__":
    sys.exit(main())
