"""Launch settings of the Bi-WKV scan kernel (CUDA): the scan timed alone under alternative
(BLOCK_C, BLOCK_T, num_warps, programs) settings at the shapes Restore-RWKV runs at 256x256, batch 1.

    python benchmarks/wkv_tiles.py [--dtype float32] [--passes fwd bwd] [--budget 80] [--reps 20]

For each pass (``fwd``: the forward's scan; ``bwd``: the backward's, with distance-weighted sums)
and shape (T tokens, C channels) it times one scan launch pair (both directions; segment summaries
+ carries + outputs, row order) through CUDA-graph replay (median over samples of ``--reps`` replays, CUDA events),
in three stages so that it stays within ``--budget`` seconds (compiling dominates):

1. BLOCK_C in {16, 32, 64, all channels} x BLOCK_T in {32, 64, 128, 256} (tiles of 1k-16k
   elements) at 4 warps and 1024 programs, and each BLOCK_C with BLOCK_T = 1 (the
   one-token-per-step kernel) at 1024 and 4096 programs;
2. num_warps in {1, 2, 4, 8} for each shape's best tile;
3. programs in {512, 1024, 2048, 4096} for each shape's best tile and warps;

then the column-order scan (Re-WKV's vertical recurrence) for the default and the best setting.
Settings that fail to compile are skipped; when the budget runs out the remaining ones are skipped
and the results so far printed. Prints the best setting per shape next to the current default
(``visionattn.ops._wkv_triton.TILES``) and, per TILES row, the setting with the least time
weighted by how many scans Restore-RWKV runs at each shape.
"""
import argparse
import time

import torch

from visionattn.ops import _wkv_triton as kernels

# (T, C): number of Restore-RWKV blocks at that shape at 256x256 (0: not in the model, timed anyway)
SHAPES = {(65536, 48): 4, (65536, 96): 8, (16384, 96): 12, (16384, 192): 0, (4096, 192): 12, (4096, 384): 0,
          (1024, 384): 8}
BLOCK_C = (16, 32, 64, 0)  # 0: all channels in one program
BLOCK_T = (32, 64, 128, 256)
WARPS = (1, 2, 4, 8)
PROGRAMS = (512, 1024, 2048, 4096)


def graph_ms(fn, reps: int, samples: int = 5) -> float:
    """Median over ``samples`` of the time of one call, from replaying a graph of ``reps`` calls."""
    fn()  # compile outside the capture
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return sorted(times)[samples // 2]


def inputs(T: int, C: int, dtype, dist: bool):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, T, C, device="cuda", generator=g).to(dtype)
    v1 = torch.randn(1, T, C, device="cuda", generator=g).to(dtype)
    v2 = torch.randn(1, T, C, device="cuda", generator=g).to(dtype) if dist else None
    w = torch.randn(C, device="cuda", generator=g) / T  # the compute dtype: float32
    return x, v1, v2, w


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype of the scanned inputs (the kernel computes in float32 either way)")
    p.add_argument("--passes", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"])
    p.add_argument("--budget", type=float, default=75.0,
                   help="seconds, shared equally by the passes; later settings are skipped past it")
    p.add_argument("--reps", type=int, default=20, help="scans per graph replay")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    start = time.time()
    skipped = 0

    for i, name in enumerate(args.passes):
        dist = name == "bwd"
        deadline = start + args.budget * (i + 1) / len(args.passes)  # each pass its share of the budget
        data = {shape: inputs(*shape, dtype, dist) for shape in SHAPES}
        results = {shape: {} for shape in SHAPES}  # shape -> setting -> ms (None: failed)

        def run(shape, setting, cols_h=0):
            nonlocal skipped
            key = setting + (cols_h,)
            if key in results[shape]:
                return results[shape][key]
            if time.time() > deadline:
                skipped += 1
                return None
            x, v1, v2, w = data[shape]
            try:
                ms = graph_ms(lambda: kernels._scan(x, v1, v2, w, dist=dist, cols_h=cols_h,
                                                    tile=setting), args.reps)
            except Exception as e:  # e.g. out of registers/shared memory at compile time
                print(f"  {name} T={shape[0]} C={shape[1]} {setting}: failed ({type(e).__name__}: {str(e)[:80]})")
                ms = None
            results[shape][key] = ms
            return ms

        def best(shape, cols_h=0):
            timed = [(ms, key[:4]) for key, ms in results[shape].items() if ms is not None and key[4] == cols_h]
            return min(timed) if timed else (float("inf"), None)

        defaults = {shape: kernels.scan_tile(dist, shape[1]) for shape in SHAPES}
        for shape in SHAPES:  # the default first: always measured
            run(shape, defaults[shape])
        for shape in SHAPES:  # stage 1: tile shape (at the default warps and programs)
            for bc in BLOCK_C:
                width = bc or 1 << (shape[1] - 1).bit_length()
                for bt in BLOCK_T:
                    if 1024 <= width * bt <= 16384:
                        run(shape, (bc, bt, 4, 1024))
                for prog in (1024, 4096):  # one token per step: a warp per 32-64 channels, more segments
                    run(shape, (bc, 1, max(1, min(4, width // 64)), prog))
        for shape in SHAPES:  # stage 2: warps
            if best(shape)[1] is not None:
                (bc, bt, _, prog) = best(shape)[1]
                for warps in WARPS:
                    run(shape, (bc, bt, warps, prog))
        for shape in SHAPES:  # stage 3: programs target
            if best(shape)[1] is not None:
                (bc, bt, warps, _) = best(shape)[1]
                for prog in PROGRAMS:
                    run(shape, (bc, bt, warps, prog))
        H = {65536: 256, 16384: 128, 4096: 64, 1024: 32}
        for shape in SHAPES:  # column order (the vertical recurrence) for the default and the best
            run(shape, defaults[shape], H[shape[0]])
            if best(shape)[1] is not None:
                run(shape, best(shape)[1], H[shape[0]])

        print(f"\n{name} scan ({args.dtype} inputs), one scan call (both directions), ms (graph replay, median):")
        print(f"{'T':>6} {'C':>4} {'blocks':>6} | {'default setting':<22} {'ms':>7} {'cols ms':>8} | "
              f"{'best setting':<22} {'ms':>7} {'cols ms':>8} {'speed-up':>8}")
        for shape, blocks in SHAPES.items():
            d = defaults[shape]
            d_ms, d_cols = results[shape].get(d + (0,)), results[shape].get(d + (H[shape[0]],))
            b_ms, b = best(shape)
            b_cols = results[shape].get(b + (H[shape[0]],)) if b else None
            fmt = lambda v: f"{v:.4f}" if v is not None else "-"  # noqa: E731
            print(f"{shape[0]:>6} {shape[1]:>4} {blocks:>6} | {str(d):<22} {fmt(d_ms):>7} {fmt(d_cols):>8} | "
                  f"{str(b):<22} {fmt(b_ms):>7} {fmt(b_cols):>8} "
                  f"{(d_ms / b_ms if d_ms and b else float('nan')):>7.2f}x")

        # per TILES row (channel bound): the setting with the least block-weighted time over its shapes
        print(f"{name}: suggested TILES rows (setting with the least time weighted by blocks per shape, "
              f"over the settings timed at every shape of the row):")
        bounds = [bound for bound, _ in kernels.TILES[name]]
        lower = 0
        for bound in bounds:
            rows = [s for s in SHAPES if s[1] > lower and (bound is None or s[1] <= bound) and SHAPES[s]]
            lower = bound if bound is not None else lower
            if not rows:
                continue
            common = set.intersection(*[{k[:4] for k, ms in results[s].items() if ms is not None and k[4] == 0}
                                        for s in rows])
            if not common:
                continue
            total = lambda st: sum(SHAPES[s] * results[s][st + (0,)] for s in rows)  # noqa: E731
            pick = min(common, key=total)
            now = kernels.scan_tile(dist, rows[0][1])
            now_total = total(now) if now in common else float("nan")
            print(f"  C <= {bound}: {pick}  weighted {total(pick):.3f} ms (current {now}: {now_total:.3f} ms) "
                  f"over {rows}")
    print(f"\n{time.time() - start:.1f} s; {skipped} settings skipped past the {args.budget:.0f} s budget")


if __name__ == "__main__":
    main()
