"""Scattered linear attention on CUDA: every kernel variant of ``VARIANTS`` in
``visionattn/ops/_scattered_linear_attention_triton.py`` side by side, forward+backward through autograd.

Per (voxels, dtype, variant), one line: the CUDA-event time of one forward+backward call with a sync after
it (median of 40), the time per call of 40 calls queued back to back (the GPU-bound rate), the kernel
times from ``torch.profiler`` over 10 calls (per kernel and their sum), and the largest error of out, dq,
dk, dv against the float64 reference run on the same (dtype-rounded) inputs, relative to the largest
reference value of each. A variant that fails to compile or run prints its error and the others go on.

    python benchmarks/sla_variants.py                       # all variants, 30k and 150k voxels, fp32 and bf16
    python benchmarks/sla_variants.py --variants default,split --n 150000 --dtypes float32
"""
import argparse
import statistics
import time
import traceback

import torch
from torch.profiler import ProfilerActivity, profile

import visionattn.ops._scattered_linear_attention_triton as K
from visionattn.ops.scattered_linear_attention import example_inputs, scattered_linear_attention

WARMUP, TIMED, PROFILED = 5, 40, 10  # calls


def max_rel_error(got, ref):
    return max(((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(got, ref))


def reference(x, g):
    ins = [x[t].double().requires_grad_() for t in "qkv"]
    out = scattered_linear_attention(*ins, x["offsets"], impl="reference")
    grads = torch.autograd.grad(out, ins, g.double())
    return [out.detach(), *grads]


def measure(x, g, ref):
    ins = [x[t].clone().requires_grad_() for t in "qkv"]

    def step():
        out = scattered_linear_attention(*ins, x["offsets"], impl="triton")
        return [out, *torch.autograd.grad(out, ins, g)]

    err = max_rel_error(step(), ref)
    for _ in range(WARMUP):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(TIMED):
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    t0 = time.perf_counter()
    for _ in range(TIMED):
        step()
    torch.cuda.synchronize()
    queued = (time.perf_counter() - t0) / TIMED * 1e3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED):
            step()
        torch.cuda.synchronize()
    kernels, other = {}, 0.0
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", 0) / PROFILED
        if e.key.startswith("_sla_"):
            kernels[e.key[len("_sla_"):-len("_kernel")]] = us
        elif us > 0:
            other += us
    return statistics.median(times), queued, kernels, other, err


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(K.VARIANTS), help="comma-separated names of VARIANTS")
    parser.add_argument("--n", default="30000,150000", help="voxel counts (comma-separated)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="input dtypes (comma-separated)")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {K.triton.__version__}; "
          f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}", flush=True)
    t_start = time.perf_counter()
    for n in (int(v) for v in args.n.split(",")):
        for dtype in (getattr(torch, v) for v in args.dtypes.split(",")):
            x = example_inputs("cuda", dtype, n_voxels=n)
            g = torch.randn_like(x["q"])
            ref = reference(x, g)
            for variant in args.variants.split(","):
                K.VARIANT = variant
                head = f"n={n:6d} {str(dtype)[6:]:8s} {variant:16s}"
                try:
                    call, queued, kernels, other, err = measure(x, g, ref)
                except Exception as e:  # a variant that does not compile or run: report, go on
                    print(f"{head} FAILED {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
                    traceback.print_exc(limit=-2)
                    torch.cuda.synchronize()
                    continue
                finally:
                    K.VARIANT = "default"
                print(f"{head} call {call * 1e3:7.1f} us  queued {queued * 1e3:7.1f} us  kernels "
                      f"{sum(kernels.values()):6.1f} us (" + ", ".join(f"{k} {v:.1f}" for k, v in kernels.items())
                      + f"; other {other:.1f})  max rel err {err:.1e}", flush=True)
            del x, g, ref
            torch.cuda.empty_cache()
    print(f"total {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
