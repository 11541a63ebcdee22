"""Tile settings of the sparse-convolution kernels (CUDA): each kernel timed alone under alternative
``TILES`` entries, at a ScatterFormer CPE convolution (100k voxels, 128 -> 128 channels, 3x3x3).

    python benchmarks/sparse_conv_tiles.py [--voxels 100000] [--channels 128]

Prints, per dtype, the forward (gather-GEMM), input-gradient (the same kernel through the inverse
table) and weight-gradient kernel times for each setting (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages),
then the whole forward + backward of the triton path and of the per-offset reference. The first
entry of each list is the current default.
"""
import argparse

import torch

from visionattn.ops import _sparse_conv_triton as kernels
from visionattn.ops.sparse_conv import example_inputs, sparse_conv

from scatterformer_frame import median_ms  # benchmarks/ is the script's folder


def _median_ms(fn, n: int = 20) -> float:
    fn()  # compile and build the derived tables outside the timing
    torch.cuda.synchronize()
    return median_ms(fn, n)

GEMM = [None, (64, 64, 32, 4, 3), (128, 128, 32, 8, 3), (128, 64, 32, 4, 3), (32, 128, 32, 4, 3),
        (64, 128, 64, 4, 2), (64, 128, 64, 8, 3), (128, 128, 64, 8, 2)]
WEIGHT_GRAD = [None, (64, 128, 128, 8, 3), (64, 128, 64, 8, 3), (128, 64, 64, 4, 3), (32, 64, 64, 4, 3),
               (64, 64, 64, 4, 2), (128, 128, 128, 8, 2)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voxels", type=int, default=100000)
    p.add_argument("--channels", type=int, default=128)
    args = p.parse_args()
    for dtype in (torch.float32, torch.bfloat16):
        kw = example_inputs("cuda", dtype, n_voxels=args.voxels, channels=args.channels)
        x, w, b, table = kw["features"], kw["weight"], kw["bias"], kw["table"]
        size = x.element_size()
        order = kernels.row_order(table)
        inverse, inverse_order = kernels._inverse_and_order(table, x.shape[0])
        grad = torch.randn(table.shape[1], w.shape[0], device="cuda", dtype=dtype)
        tiles = order.numel() // 64
        used = (table[:, order[: tiles * 64]].view(table.shape[0], tiles, 64) >= 0).any(-1).float().mean()
        print(f"{dtype}: {x.shape[0]} voxels, {(table >= 0).float().mean():.3f} of the (offset, row) pairs exist, "
              f"64-row tiles in mask order touch {used:.3f} of the offsets")
        default = {name: entry[size] for name, entry in kernels.TILES.items()}
        for setting in GEMM:
            kernels.TILES["gemm"][size] = setting or default["gemm"]
            try:
                fwd = _median_ms(lambda: kernels._gather_gemm(x, w, b, table, order))
                dx = _median_ms(lambda: kernels._input_grad(grad, w, inverse, inverse_order))
                print(f"  gemm {kernels.TILES['gemm'][size]}: forward {fwd:.3f} ms, input grad {dx:.3f} ms")
            except Exception as e:  # e.g. a setting needing more shared memory than the GPU has
                print(f"  gemm {kernels.TILES['gemm'][size]}: failed ({type(e).__name__}: {str(e)[:100]})")
        kernels.TILES["gemm"][size] = default["gemm"]
        for setting in WEIGHT_GRAD:
            kernels.TILES["weight_grad"][size] = setting or default["weight_grad"]
            try:
                dw = _median_ms(lambda: kernels._weight_grad(grad, x, table, order, w.dtype, w.shape[1]))
                print(f"  weight_grad {kernels.TILES['weight_grad'][size]}: {dw:.3f} ms")
            except Exception as e:
                print(f"  weight_grad {kernels.TILES['weight_grad'][size]}: failed ({type(e).__name__}: "
                      f"{str(e)[:100]})")
        kernels.TILES["weight_grad"][size] = default["weight_grad"]
        leaves = [t.detach().requires_grad_() for t in (x, w, b)]
        for impl in ("triton", "reference"):
            cache = {}

            def step():
                out = sparse_conv(*leaves[:2], table, leaves[2], impl=impl, cache=cache)
                torch.autograd.grad(out, leaves, grad)

            print(f"  {impl}: forward + backward {_median_ms(step, 10):.3f} ms (derived tables cached)")


if __name__ == "__main__":
    main()
