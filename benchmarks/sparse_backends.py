"""One sparse convolution through each sparse backend: time per call and agreement per output coordinate.

    python benchmarks/sparse_backends.py                                  # CUDA: torch vs spconv_triton, bf16 autocast
    python benchmarks/sparse_backends.py --device cpu --backends torch,spconv --dtype float32

A SubMConv3d (128 -> 128 channels, 3x3x3, with bias) in eval mode on ~39k random voxels of a 33 x 200 x
200 grid. Each call builds the sparse tensor, so the index pairs are built every call, as for a new
frame. The first call's time includes compiling (and, for spconv_triton, autotuning). The outputs of
each backend are compared with the first backend's at the same output coordinates.
"""
import argparse
import os
import time

import torch

from visionattn.models.detection3d import sparse_backend as sp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--backends", default="torch,spconv_triton", help="comma-separated; the first is the baseline")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"),
                   help="autocast dtype (float32: no autocast)")
    p.add_argument("--voxels", type=int, default=40000, help="random sites drawn (duplicates removed)")
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    g = torch.Generator().manual_seed(0)
    shape = (33, 200, 200)
    sites = [torch.zeros(args.voxels, dtype=torch.long)] + [torch.randint(0, s, (args.voxels,), generator=g) for s in shape]
    indices = torch.unique(torch.stack(sites, 1), dim=0).to(device)
    feats = torch.randn(len(indices), 128, generator=g).to(device, dtype)
    conv = sp.SubMConv3d(128, 128, 3, padding=1, bias=True, indice_key="a").to(device).eval()

    def call():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return conv(sp.sparse_tensor(feats, indices, shape, 1))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    outputs = {}
    for backend in args.backends.split(","):
        os.environ["VISIONATTN_SPARSE_BACKEND"] = backend
        t = time.perf_counter()
        call()
        sync()
        first = time.perf_counter() - t
        for _ in range(3):
            call()
        sync()
        t = time.perf_counter()
        for _ in range(args.iters):
            out = call()
        sync()
        ms = (time.perf_counter() - t) / args.iters * 1e3
        rows = {tuple(r): i for i, r in enumerate(out.indices.cpu().tolist())}
        outputs[backend] = (rows, out.features.float().cpu())
        print(f"{backend}: first call {first:.1f} s, {ms:.3f} ms per call ({len(indices)} voxels, {args.dtype}, "
              f"{device})", flush=True)
    base_name, (base_rows, base) = next(iter(outputs.items()))
    for name, (rows, out) in list(outputs.items())[1:]:
        if set(rows) != set(base_rows):
            raise SystemExit(f"{name} and {base_name} differ in their output coordinates")
        keys = list(base_rows)
        diff = (out[[rows[k] for k in keys]] - base[[base_rows[k] for k in keys]]).abs()
        print(f"{name} vs {base_name}: max|diff| {diff.max().item():.3g}, mean|diff| {diff.mean().item():.3g}, "
              f"max|out| {base.abs().max().item():.3g}")


if __name__ == "__main__":
    main()
