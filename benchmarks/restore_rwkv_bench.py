"""Restore-RWKV benchmarks (GPU): Bi-WKV op and whole model, ours (Triton) vs our exact reference
[vs the official CUDA kernel when --official DIR holds a built-from-source copy].

python benchmarks/restore_rwkv_bench.py --out results.json [--official path/to/cuda]
Prints one table per part; stores JSON with the machine described.
"""
import argparse
import json
import platform
import time

import torch

import visionattn
from visionattn.ops import wkv
from visionattn.ops.dispatch import use_impl


def timed(fn, warmup=2, reps=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3


def peak_mem(fn):
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def op_bench(official=None):
    rows = []
    for C in (48, 96, 192, 384):
        ex = wkv.example_inputs("cuda", torch.float32, tokens=256 * 256, channels=C, requires_grad=True)
        gy = torch.randn_like(ex["k"])
        impls = {"triton": lambda: wkv.bi_wkv(**ex, impl="triton"), "reference": lambda: wkv.bi_wkv(**ex, impl="reference")}
        if official is not None:
            impls["official"] = lambda: official(ex["w"], ex["u"], ex["k"], ex["v"])
        for name, f in impls.items():
            try:
                fwd = timed(lambda: f().detach())
                fb = timed(lambda: torch.autograd.grad(f(), list(ex.values()), gy))
                rows.append(dict(part="bi_wkv", T=65536, C=C, impl=name, fwd_ms=fwd, fwd_bwd_ms=fb))
            except Exception as err:  # noqa: BLE001 (report, continue)
                rows.append(dict(part="bi_wkv", T=65536, C=C, impl=name, error=str(err)[:200]))
            print(rows[-1], flush=True)
    return rows


def model_bench(impls=("triton", "reference")):
    rows = []
    model = visionattn.create_model("restore_rwkv").cuda()
    for impl in impls:
        with use_impl(impl):
            model.eval()
            for s in ((256, 512) if impl == "triton" else (256,)):
                x = torch.rand(1, 1, s, s, device="cuda")
                with torch.no_grad():
                    ms = timed(lambda: model(x), warmup=1, reps=3)
                rows.append(dict(part="infer", size=s, impl=impl, ms=ms))
                print(rows[-1], flush=True)
            model.train()
            x = torch.rand(4, 1, 128, 128, device="cuda")
            opt = torch.optim.Adam(model.parameters(), 2e-4)

            def step():
                opt.zero_grad()
                (model(x) - x).abs().mean().backward()
                opt.step()
            rows.append(dict(part="train_step_b4_128", impl=impl, ms=timed(step, warmup=1, reps=3)))
            print(rows[-1], flush=True)
    return rows


def scaling_bench():
    rows = []
    model = visionattn.create_model("restore_rwkv").cuda().eval()
    for s in (128, 256, 512, 1024, 2048):
        x = torch.rand(1, 1, s, s, device="cuda")
        with torch.no_grad():
            ms = timed(lambda: model(x), warmup=1, reps=2)
            mem = peak_mem(lambda: model(x))
        rows.append(dict(part="scaling", size=s, pixels=s * s, ms=ms, peak_mib=mem))
        print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="restore_rwkv_bench.json")
    ap.add_argument("--parts", default="op,model,scaling")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    machine = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, python=platform.python_version())
    rows = []
    for part in args.parts.split(","):
        rows += dict(op=op_bench, model=model_bench, scaling=scaling_bench)[part]()
        json.dump(dict(machine=machine, rows=rows), open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
