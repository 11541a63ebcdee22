"""Where a MatchStereo forward spends its GPU time: per part of the network and per kernel.

    python benchmarks/matchstereo_parts.py matchstereo_tiny                    # 4K pair, fp16, CUDA
    python benchmarks/matchstereo_parts.py matchstereo_base --dtype float32 --size 1536 1536
    python benchmarks/matchstereo_parts.py matchstereo_tiny --breakdown level3.layer consistency_mask

Eager inference (``torch.inference_mode``) of one random pair after three warm-up calls. Each part
(encoder stages, each level's self / cross MatchAttention and ConvGLU, the upsampling heads, the
consistency checks) runs inside a ``torch.profiler.record_function`` range; the table gives the
kernel time launched inside each range per forward (nested ranges: a layer includes its
attentions), then the costliest kernels. The ranges add host time, so the eager latency printed
first is above that of an unlabelled forward; the kernel times are not affected.
"""
import argparse
import functools
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import visionattn
from visionattn.models.stereo import matchstereo as M


def _labelled(fn, tag):
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        with record_function("PART " + tag):
            return fn(*args, **kwargs)
    return inner


def label_parts(model) -> None:
    """Wrap the forwards of the model's parts (and the module-level helpers) in named ranges."""
    for i, (down, stage) in enumerate(zip(model.encoder.downsample_layers, model.encoder.stages)):
        down.forward = _labelled(down.forward, f"encoder.down{i}")
        for block in stage:
            block.forward = _labelled(block.forward, f"encoder.stage{i}")
            block.forward_in_place = _labelled(block.forward_in_place, f"encoder.stage{i}")
    for i, block in enumerate(model.match_attentions):  # level i: 1/32, 1/16, 1/8, 1/4
        for layer in block.layers:
            layer.forward = _labelled(layer.forward, f"level{i}.layer")
            layer.forward_in_place = _labelled(layer.forward_in_place, f"level{i}.layer")
            for part in ("match_attention_self", "match_attention_cross", "mlp"):
                module = getattr(layer, part)
                module.forward = _labelled(module.forward, f"level{i}.{part}")
    for i in range(1, 5):
        model.up_masks[i].forward = _labelled(model.up_masks[i].forward, f"up_mask{i}")
    for i in range(1, 4):
        model.up_decoders[i].forward = _labelled(model.up_decoders[i].forward, f"up_decoder{i}")
    model.init_correlation_volume.forward = _labelled(model.init_correlation_volume.forward, "init_correlation")
    for name in ("stem_forward", "convex_upsample", "field_outputs", "consistency_mask"):
        setattr(M, name, _labelled(getattr(M, name), name))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", default="matchstereo_tiny")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--size", type=int, nargs=2, default=(2176, 3840), metavar=("H", "W"))
    p.add_argument("--kernels", type=int, default=25, help="rows of the kernel table")
    p.add_argument("--breakdown", nargs="*", default=(), metavar="PART",
                   help="parts (e.g. level3.layer) whose kernels to list, each its costliest ten")
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    model = visionattn.create_model(args.model).cuda().to(getattr(torch, args.dtype)).eval()
    label_parts(model)
    g = torch.Generator().manual_seed(0)
    left = (torch.rand(1, 3, *args.size, generator=g) * 255).cuda()
    right = torch.roll(left, -4, -1)
    calls = 2
    with torch.inference_mode():
        for _ in range(3):
            model(left, right)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            model(left, right)
        torch.cuda.synchronize()
        print(f"{args.model} {args.dtype} {args.size[0]}x{args.size[1]}: eager {1e3 * (time.perf_counter() - t0) / 5:.2f} "
              f"ms per pair (with the ranges)")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                model(left, right)
            torch.cuda.synchronize()
    events = prof.key_averages()
    parts = {}
    # a range appears twice: on the host (device time = its kernels) and as a GPU annotation (device time = its
    # span, gaps between eager launches included); the table takes the host's, the kernel table neither
    for e in events:
        if e.key.startswith("PART ") and e.device_type.name == "CPU":
            ms, n = parts.get(e.key[5:], (0.0, 0))
            parts[e.key[5:]] = (ms + e.device_time_total / 1e3 / calls, n + e.count // calls)
    print(f"{'part':32s} {'kernel ms':>10s} {'calls':>6s}")
    for key, (ms, n) in sorted(parts.items(), key=lambda kv: -kv[1][0]):
        print(f"{key:32s} {ms:10.2f} {n:6d}")
    kernels = sorted((e for e in events if e.device_type.name == "CUDA" and not e.key.startswith("PART ")),
                     key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in kernels) / 1e3 / calls
    print(f"\nkernels: {total:.2f} ms per forward")
    for e in kernels[:args.kernels]:
        ms = e.self_device_time_total / 1e3 / calls
        print(f"  {ms:8.2f} ms {100 * ms / total:5.1f} %  x{e.count // calls:<4d} {e.key[:90]}")
    for part in args.breakdown:
        print(f"\n{part}: kernels launched inside it, per forward")
        for name, (ms, n) in part_kernels(prof.events(), part, calls)[:10]:
            print(f"  {ms:8.3f} ms  x{n:<4d} {name[:90]}")


def part_kernels(events, part: str, calls: int):
    """(kernel name, (ms, launches) per forward) of the kernels launched inside the host ranges of ``part``,
    costliest first."""
    totals = {}
    stack = [e for e in events if e.name == "PART " + part and e.device_type.name == "CPU"]
    while stack:
        e = stack.pop()
        for k in e.kernels:
            us, n = totals.get(k.name, (0.0, 0))
            totals[k.name] = (us + k.duration, n + 1)
        stack.extend(e.cpu_children)
    return sorted(((name, (us / 1e3 / calls, n // calls)) for name, (us, n) in totals.items()),
                  key=lambda kv: -kv[1][0])


if __name__ == "__main__":
    main()
