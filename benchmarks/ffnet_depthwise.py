"""FFNet's depth-wise convolutions: cuDNN (+ the separate epilogue pass) against the
``depthwise_conv2d`` op's Triton kernel with the epilogue fused, per layer shape and in the model.

    python benchmarks/ffnet_depthwise.py [--model ffnet_1] [--sizes 224 256] [--batch 128] [--sweep]

GPU only (CUDA), bfloat16, channels_last, ``torch.backends.cudnn.benchmark = True`` (as
``tools/benchmark.py``). Three parts:

1. Every distinct stride-1 depth-wise layer of the fused model at each input size, in the role it
   has in the block:
   - ``key``   token mixer DW_k1: today cuDNN conv (no bias) + ``channel_bias_act`` (bias + GELU);
   - ``value`` token mixer DW_k2: today cuDNN conv (no bias) + ``channel_bias_act`` (bias [+ layer
     scale] + residual);
   - ``ffn``   channel mixer DW: cuDNN conv (no bias; its bias is folded into the next 1x1 conv).
   Against it: one ``depthwise_conv2d(..., impl="triton")`` call with the same epilogue. Each is
   timed as a CUDA graph of ``--reps`` calls (no host launch cost), median over ``--samples``
   replays, CUDA events. Prints us per call, the effective bandwidth of the Triton kernel
   (x + out [+ residual] bytes) and the total per forward (times the number of such layers).
2. ``--sweep``: for each distinct (C, H, K) at the first size the Triton kernel under other tiles (BLOCK_C x tile
   size x warps) with the ``key`` epilogue, against the default
   (``visionattn.ops._depthwise_conv2d_triton.pick_tiles``), within ``--budget`` seconds.
3. The whole fused model built with ``depthwise_impl="auto"``, eager, ``torch.no_grad``: the op
   forced to its reference (``use_impl("depthwise_conv2d:reference")``: the current path, cuDNN
   + ``channel_bias_act``) against the Triton kernel, img/s (median of ``--iters`` calls after
   ``--warmup``, alternated over 2 rounds) and max|diff| of the logits. The same comparison with
   ``tools/benchmark.py`` (one table, JSON under benchmarks/):

       python tools/benchmark.py ffnet_1 --impl depthwise_conv2d:reference,auto \\
           --model-kwargs fuse=True depthwise_impl=auto --shape h=224 w=224 --batch 128 \\
           --dtype bfloat16 --channels-last --warmup 5 --iters 20
"""
import argparse
import statistics
import time
from collections import Counter

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerScale2d

import visionattn  # noqa: F401  (registers ffnet_*)
from visionattn.ops import _depthwise_conv2d_triton as kernels
from visionattn.ops import channel_bias_act as cba
from visionattn.ops import depthwise_conv2d as dwc
from visionattn.ops.dispatch import use_impl


def layer_shapes(model, size: int) -> Counter:
    """(role, C, H, K, layer_scale) -> number of such layers per forward, read from the fused FFNet."""
    shapes = Counter()
    for i, stage in enumerate(model.stages):
        H = size // (4 * 2 ** i)
        for block in stage.blocks:
            tm, cm = block.token_mixer, block.channel_mixer
            ls = isinstance(block.ls1, LayerScale2d)
            shapes["key", tm.key.in_channels, H, tm.key.kernel_size[0], False] += 1
            shapes["value", tm.value.in_channels, H, tm.value.kernel_size[0], ls] += 1
            shapes["ffn", cm.query.in_channels, H, cm.query.kernel_size[0], False] += 1
    return shapes


def graph_us(fn, reps: int, samples: int) -> float:
    """Median over ``samples`` replays of a CUDA graph of ``reps`` calls of ``fn``: microseconds per call."""
    fn()  # compile / pick cuDNN algorithms outside the capture
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
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / reps)
    return statistics.median(times)


def layer_inputs(role, C, H, K, ls, batch, dtype):
    g = torch.Generator(device="cuda").manual_seed(C * 100 + K)
    nhwc = lambda: torch.randn(batch, C, H, H, device="cuda", dtype=dtype, generator=g).contiguous(  # noqa: E731
        memory_format=torch.channels_last)
    vec = lambda: torch.randn(C, device="cuda", dtype=dtype, generator=g)  # noqa: E731
    x, weight = nhwc(), torch.randn(C, 1, K, K, device="cuda", dtype=dtype, generator=g) / K
    if role == "key":
        return dict(x=x, weight=weight, bias=vec(), gelu=True)
    if role == "value":
        return dict(x=x, weight=weight, bias=vec(), residual=nhwc(), scale=vec() if ls else None)
    return dict(x=x, weight=weight)


def current_path(x, weight, bias=None, residual=None, scale=None, gelu=False):
    """What the fused model runs today: cuDNN conv without bias, then the Triton epilogue pass (if any)."""
    y = F.conv2d(x, weight, None, padding=weight.shape[-1] // 2, groups=x.shape[1])
    if bias is None:
        return y if residual is None else y + residual
    return cba.channel_bias_act(y, bias, residual, scale, gelu=gelu, impl="triton")


def per_layer(args, dtype):
    print(f"\n## per layer: batch {args.batch}, {args.dtype}, channels_last (CUDA-graph timing, us per call)")
    head = f"{'size':>4} {'role':>5} {'C':>4} {'H':>3} {'K':>2} {'n':>3} {'cuDNN+epi':>10} {'triton':>8} " \
           f"{'speed-up':>8} {'GB/s':>6} {'max|diff|':>9}"
    distinct = {}
    for size in args.sizes:
        model = timm.create_model(args.model, fuse=True)
        totals = [0.0, 0.0]
        print(head)
        for (role, C, H, K, ls), n in layer_shapes(model, size).items():
            kw = layer_inputs(role, C, H, K, ls, args.batch, dtype)
            with torch.no_grad():
                t_ref = graph_us(lambda: current_path(**kw), args.reps, args.samples)
                t_tri = graph_us(lambda: dwc.depthwise_conv2d(**kw, impl="triton"), args.reps, args.samples)
                ref = dwc.depthwise_conv2d(**{k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kw.items()},
                                           impl="reference")
                diff = (dwc.depthwise_conv2d(**kw, impl="triton").float() - ref).abs().max().item()
            nbytes = kw["x"].numel() * kw["x"].element_size() * (3 if role == "value" else 2)
            totals[0] += n * t_ref
            totals[1] += n * t_tri
            if size == args.sizes[0]:
                distinct.setdefault((C, H, K), None)
            print(f"{size:>4} {role:>5} {C:>4} {H:>3} {K:>2} {n:>3} {t_ref:>10.1f} {t_tri:>8.1f} "
                  f"{t_ref / t_tri:>7.2f}x {nbytes / t_tri / 1e3:>6.0f} {diff:>9.2e}")
        print(f"{size:>4} total per forward: cuDNN+epilogue {totals[0]:.0f} us, triton {totals[1]:.0f} us "
              f"({totals[0] / totals[1]:.2f}x, saves {totals[0] - totals[1]:.0f} us)\n")
    return distinct


def sweep(args, dtype, distinct):
    print(f"## tile sweep (key epilogue: bias + GELU), budget {args.budget:.0f} s; default = pick_tiles")
    t0 = time.time()
    for (C, H, K) in distinct:
        kw = layer_inputs("key", C, H, K, False, args.batch, dtype)
        default = kernels.pick_tiles(C)
        configs = [default] + [(tile // bc, bc, warps) for bc in (16, 32, 64) for tile in (2048, 4096, 8192)
                               for warps in (tile // 1024, 2 * tile // 1024) if (tile // bc, bc, warps) != default]
        results = []
        for cfg in configs:
            if time.time() - t0 > args.budget:
                break
            try:
                with torch.no_grad():
                    t = graph_us(lambda: kernels.launch_with_tiles(kw["x"], kw["weight"], kw["bias"], None, None, True,
                                                                   *cfg), args.reps, args.samples)
            except Exception as err:  # e.g. out of resources
                print(f"  C={C} H={H} K={K} {cfg}: {type(err).__name__}")
                continue
            results.append((t, cfg))
        if not results:
            print("  budget spent; remaining shapes skipped")
            break
        best = min(results)
        t_default = next((t for t, cfg in results if cfg == default), float("nan"))
        print(f"  C={C:>4} H={H:>3} K={K}: default {default} {t_default:.1f} us; best (BLOCK_P, BLOCK_C, warps) "
              f"{best[1]} {best[0]:.1f} us ({len(results)} tried)")


def whole_model(args, dtype):
    print(f"\n## {args.model} fused, depthwise_impl='auto', eager, batch {args.batch}, {args.dtype}, channels_last")
    for size in args.sizes:
        model = timm.create_model(args.model, fuse=True, depthwise_impl="auto").eval().to(
            "cuda", dtype, memory_format=torch.channels_last)
        x = torch.randn(args.batch, 3, size, size, device="cuda", dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        rows = {"depthwise_conv2d:reference (cuDNN + channel_bias_act)": "depthwise_conv2d:reference",
                "auto (Triton depthwise, fused epilogue)": None}
        times = {name: [] for name in rows}
        outs = {}
        with torch.no_grad():
            for _ in range(2):  # rounds, alternated
                for name, forced in rows.items():
                    with use_impl(forced):
                        for _ in range(args.warmup):
                            outs[name] = model(x)
                        torch.cuda.synchronize()
                        for _ in range(args.iters):
                            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                            start.record()
                            model(x)
                            end.record()
                            end.synchronize()
                            times[name].append(start.elapsed_time(end))
        base = None
        for name, ts in times.items():
            ms = statistics.median(ts)
            base = base or ms
            diff = (outs[name].float() - next(iter(outs.values())).float()).abs().max().item()
            print(f"  {size}: {name:<55} {ms:7.3f} ms  {args.batch / ms * 1e3:8.0f} img/s  {base / ms:.2f}x  "
                  f"max|diff| {diff:.2e}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ffnet_1")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 256])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--reps", type=int, default=20, help="calls per CUDA graph")
    p.add_argument("--samples", type=int, default=7, help="graph replays; the median is reported")
    p.add_argument("--sweep", action="store_true", help="also sweep the Triton kernel's tiles per shape")
    p.add_argument("--budget", type=float, default=60.0, help="seconds for the sweep")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--skip-model", action="store_true", help="per-layer timings only")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/ffnet_depthwise.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    dtype = getattr(torch, args.dtype)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"model {args.model}, sizes {args.sizes}")
    t0 = time.time()
    distinct = per_layer(args, dtype)
    if args.sweep:
        sweep(args, dtype, distinct)
    if not args.skip_model:
        whole_model(args, dtype)
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
