"""Scattered linear attention, fp32 forward+backward on CUDA: the backward kernels' dot precision (IEEE
or three-TF32 products; the default is ``TILES`` of the kernel module), wall time, kernel times and the
error against the float64 reference.

    python benchmarks/sla_precision.py
"""
import torch
import visionattn.ops._scattered_linear_attention_triton as K
from visionattn.ops.scattered_linear_attention import scattered_linear_attention, example_inputs
for n in (30000, 150000):
    x = example_inputs("cuda", torch.float32, n_voxels=n)
    g = torch.randn_like(x["q"])
    ref_in = [x[t].double().requires_grad_() for t in "qkv"]
    ref = scattered_linear_attention(*ref_in, x["offsets"], impl="reference")
    ref_grads = torch.autograd.grad(ref, ref_in, g.double())
    default = dict(K.TILES)
    for prec in ("default", "ieee", "tf32x3"):
        K.TILES = {k: (t[0], t[1], t[2] if prec == "default" or k.startswith("fwd") else prec)
                   for k, t in default.items()}
        ins = [x[t].clone().requires_grad_() for t in "qkv"]
        def step():
            out = scattered_linear_attention(*ins, x["offsets"], impl="triton")
            return out, torch.autograd.grad(out, ins, g)
        out, grads = step()
        err = max([((out.double() - ref).abs().max() / ref.abs().max()).item()] +
                  [((a.double() - b).abs().max() / b.abs().max()).item() for a, b in zip(grads, ref_grads)])
        for _ in range(10): step()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        ts = []
        for _ in range(40):
            s.record(); step(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
        ts.sort()
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(10): step()
            torch.cuda.synchronize()
        kern = {e.key: getattr(e, "device_time_total", 0) / 10 for e in p.key_averages() if e.key.startswith("_sla")}
        print(f"n={n} {prec}: fwd+bwd median {ts[20]:.3f} ms, max rel err {err:.2e}, kernels (us) " +
              ", ".join(f"{k[5:-7]} {v:.0f}" for k, v in sorted(kern.items())), flush=True)
