"""ScatterFormer-Waymo on one synthetic Waymo-sized frame (CUDA): forward fp32/bf16 (eager, and with the
dense part replayed from a CUDA graph: ``cuda_graph=True``), predict, a training step (forward + backward
of a stand-in loss), peak memory and the time of each stage.

    python benchmarks/scatterformer_frame.py [--backend torch|spconv_triton|spconv] [--points 160000] [--train]
        [--impl sparse_conv:reference]

``--impl`` forces ops' implementations inside the network (:func:`visionattn.ops.dispatch.use_impl`);
``sparse_conv:reference`` runs the ``torch`` backend's convolutions as per-offset gather / matmul /
index_add (the path before the Triton gather-GEMM), for a before/after comparison in one checkout.

Stage times come from CUDA events around each top-level module of the network (fp32, eval); the
first-call time includes cuDNN autotuning and, for spconv-triton, its kernel autotuning.
"""
import argparse
import os
import time

import torch


def median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[n // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="torch", help="sparse backend (VISIONATTN_SPARSE_BACKEND)")
    p.add_argument("--points", type=int, default=160000)
    p.add_argument("--train", action="store_true", help="also time a training step")
    p.add_argument("--impl", default=None, help="force op implementations, e.g. sparse_conv:reference")
    args = p.parse_args()
    os.environ["VISIONATTN_SPARSE_BACKEND"] = args.backend
    from visionattn.ops.dispatch import use_impl

    with use_impl(args.impl):
        run(args)


def run(args) -> None:
    import visionattn
    from visionattn.registry import NETWORKS

    torch.backends.cudnn.benchmark = True
    model = visionattn.create_model("scatterformer_waymo").cuda().eval()
    (points,) = NETWORKS["scatterformer_waymo"].example_inputs(batch_size=1, points=args.points)
    points = points.cuda()
    tag = f"[{args.backend}{', ' + args.impl if args.impl else ''}, {args.points} points]"
    with torch.no_grad():
        t0 = time.time()
        model(points)
        torch.cuda.synchronize()
        print(f"{tag} first forward {time.time() - t0:.2f} s")
        print(f"{tag} forward fp32 {median_ms(lambda: model(points), 10):.2f} ms")
        print(f"{tag} predict fp32 {median_ms(lambda: model(points, None, 'predict'), 10):.2f} ms")
        model(points, cuda_graph=True)
        print(f"{tag} forward fp32, dense part from a CUDA graph {median_ms(lambda: model(points, cuda_graph=True), 10):.2f} ms")
        with torch.autocast("cuda", torch.bfloat16):
            model(points)
            print(f"{tag} forward bf16 autocast {median_ms(lambda: model(points), 10):.2f} ms")
            model(points, cuda_graph=True)
            print(f"{tag} forward bf16 autocast, dense part from a CUDA graph "
                  f"{median_ms(lambda: model(points, cuda_graph=True), 10):.2f} ms")
        torch.cuda.reset_peak_memory_stats()
        model(points)
        torch.cuda.synchronize()
        print(f"{tag} forward peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    if args.train:
        model.train()

        def step():
            maps = model(points)
            sum(v.float().square().mean() for group in maps for v in group.values()).backward()

        step()
        print(f"{tag} training step fp32 {median_ms(step, 8):.2f} ms")
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        print(f"{tag} training peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
        model.eval()
    b3d = model.backbone_3d
    stages = {"vfe": model.vfe, "cpe": (b3d.cpe[0], b3d.cpe[-1]), "stage1": b3d.stage1, "stage2": b3d.stage2,
              "app": b3d.app, "backbone_2d": model.backbone_2d, "dense_head": model.dense_head}
    events = {}

    def mark(key):
        def hook(*_):
            events[key] = torch.cuda.Event(enable_timing=True)
            events[key].record()
        return hook

    for name, module in stages.items():  # a module, or the (first, last) modules of a stage
        first, last = module if isinstance(module, tuple) else (module, module)
        first.register_forward_pre_hook(mark(name))
        last.register_forward_hook(mark(name + "/end"))
    with torch.no_grad():
        for _ in range(3):
            model(points)
        torch.cuda.synchronize()
    print(f"{tag} stages (ms, fp32 eval): " +
          ", ".join(f"{n} {events[n].elapsed_time(events[n + '/end']):.2f}" for n in stages))


if __name__ == "__main__":
    main()
