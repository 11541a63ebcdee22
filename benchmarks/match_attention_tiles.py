"""Launch settings of the MatchAttention forward kernel at the shapes a MatchStereo forward calls it with.

    python benchmarks/match_attention_tiles.py matchstereo_tiny                 # 4K pair, fp16, CUDA
    python benchmarks/match_attention_tiles.py matchstereo_base --size 384 1248

One eager forward of a random pair records every call of the kernel (q/k/v are the model's own
views of its fused projections; the cross attention's calls keep their gate and write into their
buffer, as in the model); each distinct shape is then timed with the current setting (``_fwd_cfg``)
and with others: queries per program (BLOCK_N) x warps (``--quick``: fewer). Latency is the median
of 20 calls (CUDA events); ``max|diff|`` compares each setting's output with the current one (the
sums inside a tile may run in another order, so they differ by rounding only).
"""
import argparse
import collections

import torch

import visionattn
from visionattn.cli.benchmark import timed_calls
from visionattn.ops import _match_attention_triton as K


def launch(call, block_n: int, warps: int):
    (q, k, v, c, H, W, r, scale, kv_shift), extra = call
    cfg = K._fwd_cfg(r, q.shape[2] // c.shape[2])[:4] + (block_n, warps)
    return K._forward(q, k, v, c, H, W, r, scale, kv_shift, cfg=cfg, **extra)[0]


def median_ms(fn, n: int = 20) -> float:
    fn()  # compiles the setting
    return sorted(timed_calls(fn, torch.device("cuda"), n))[n // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", default="matchstereo_tiny")
    p.add_argument("--size", type=int, nargs=2, default=(2176, 3840), metavar=("H", "W"))
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--quick", action="store_true", help="BLOCK_N halved / doubled only, 1 or 2 warps")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)

    calls, counts = {}, collections.Counter()
    forward = K._forward

    def record(q, k, v, centers, H, W, radius, scale, kv_shift, gate=None, out=None):
        # the cross attention's gate and [output, weights] buffer come along (the kernel it launches)
        key = (tuple(q.shape), q.stride(), k.stride(), centers.stride(), H, W, radius, kv_shift, gate is not None)
        counts[key] += 1
        extra = dict(gate=gate, out=out)
        calls.setdefault(key, ((q, k, v, centers, H, W, radius, scale, kv_shift), extra))  # keeps the buffers alive
        return forward(q, k, v, centers, H, W, radius, scale, kv_shift, **extra)

    K._forward = record
    model = visionattn.create_model(args.model).cuda().to(dtype).eval()
    left = torch.rand(1, 3, *args.size, device="cuda", dtype=dtype) * 255
    with torch.inference_mode():
        model(left, torch.roll(left, -8, -1))
    K._forward = forward

    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {args.model} {args.size[0]}x{args.size[1]} "
          f"{args.dtype}, eager forward kernel only")
    now_total = best_total = 0.0
    with torch.inference_mode():
        for key, call in calls.items():
            q, c, r = call[0][0], call[0][3], call[0][6]
            D = q.shape[2] // c.shape[2]
            j1, j2, d1, d2, bn0, w0 = K._fwd_cfg(r, D)
            ref = launch(call, bn0, w0).clone()  # a view of the call's buffer, for the gated calls
            now = median_ms(lambda: launch(call, bn0, w0))
            rows = []
            factors = (2,) if args.quick else (2, 4)
            for bn in sorted({bn0, *(max(1, bn0 // f) for f in factors), *(min(256, bn0 * f) for f in factors)}):
                for warps in ((1, 2) if args.quick else (1, 2, 4)):
                    diff = (launch(call, bn, warps).float() - ref.float()).abs().max().item()
                    rows.append((median_ms(lambda: launch(call, bn, warps)), bn, warps, diff))
            rows.sort()
            n = counts[key]
            now_total += n * now
            best_total += n * min(now, rows[0][0])
            gated = " gated" if call[1]["gate"] is not None else ""
            print(f"\nN={q.shape[1]} C={q.shape[2]} r={r} D={D}{gated} (tiles ({j1}+{j2}) x ({d1}+{d2})), "
                  f"{n} calls per forward; "
                  f"current BLOCK_N={bn0} warps={w0}: {now:.3f} ms")
            for t, bn, warps, diff in rows[:5]:
                print(f"  BLOCK_N={bn:<4} warps={warps}  {t:.3f} ms  ({now / t:.2f}x)  max|diff| {diff:.1e}")
    print(f"\nper forward: current settings {now_total:.2f} ms, fastest timed {best_total:.2f} ms")


if __name__ == "__main__":
    main()
