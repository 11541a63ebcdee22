"""Inference throughput of the GQA-variant ViT-B/16 (ours vs the official per-group loop vs timm MHA).

Stand-in until ``tools/benchmark.py`` covers models with an official counterpart. Usage (GPU):
    python tools/benchmark_gqa_vit.py --official-dir PATH/TO/key-driven-gqa --out benchmarks/gqa_vit.json
``--official-dir`` is a checkout of zohaib-khan5040/key-driven-gqa (not shipped with visionattn);
without it only our models and timm's are measured.
"""
import argparse
import json
import platform
import sys

import timm
import torch

import visionattn  # noqa: F401  (registers the models)
from visionattn.ops.dispatch import use_impl


def throughput(model: torch.nn.Module, x: torch.Tensor, warmup: int, iters: int, impl=None) -> float:
    """Images per second of ``model(x)`` (CUDA events, after warm-up)."""
    with torch.inference_mode(), use_impl(impl):
        for _ in range(warmup):
            model(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            model(x)
        end.record()
        torch.cuda.synchronize()
    return x.shape[0] * iters / (start.elapsed_time(end) / 1000)


def official_models(path: str, kv_heads: int):
    sys.path.insert(0, path)
    import model as official  # noqa: E402  (the official repo's model.py)

    for scheme in ("mhsa", "gqa", "kdgqa", "dgqa_ema"):
        yield f"official_{scheme}", lambda s=scheme: official.vit_base_patch16_224(
            num_classes=1000, att_scheme=s, num_kv_heads=kv_heads, window_size=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--kv-heads", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--official-dir", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise RuntimeError("benchmark_gqa_vit needs a CUDA GPU")
    dtype, dev = torch.bfloat16, "cuda"
    x = torch.randn(args.batch, 3, 224, 224, device=dev, dtype=dtype)
    G = args.kv_heads
    uneven = torch.tensor([1, 3, 2, 2, 1, 3][:G] if G == 6 else [12 // G] * G)
    candidates = [("timm_vit_base_patch16_224", lambda: timm.create_model("vit_base_patch16_224"), None)]
    for attn in ("mha", "gqa", "kdgqa", "dgqa"):
        kw = {} if attn == "mha" else dict(num_kv_heads=G)
        candidates.append((f"ours_{attn}", lambda a=attn, kw=kw: timm.create_model(f"vit_base_patch16_224_{a}", **kw), None))
    candidates.append(("ours_gqa[sdpa_index]", lambda: timm.create_model("vit_base_patch16_224_gqa", num_kv_heads=G),
                       "sdpa_index"))
    if args.official_dir:
        candidates += [(n, b, None) for n, b in official_models(args.official_dir, G)]
    rows = []
    for name, build, impl in candidates:
        torch.manual_seed(0)
        try:
            model = build().to(dev, dtype).eval()
            for m in model.modules():  # DGQA: a stored non-uniform allocation, as after training
                if hasattr(m, "group_sizes_now") and G == 6:
                    m.group_sizes_now.copy_(uneven)
            ips = throughput(model, x, args.warmup, args.iters, impl)
            rows.append(dict(model=name, impl=impl or "auto", img_per_s=round(ips, 1)))
        except Exception as err:  # report and continue: one failing variant must not lose the others
            rows.append(dict(model=name, impl=impl or "auto", error=f"{type(err).__name__}: {err}"[:300]))
        print(rows[-1], flush=True)
        del model
        torch.cuda.empty_cache()
    result = dict(
        task="ViT-B/16 inference throughput, 224x224, bf16 weights+inputs, torch.inference_mode",
        batch=args.batch, kv_heads=G, warmup=args.warmup, iters=args.iters,
        machine=dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                     timm=timm.__version__, python=platform.python_version()),
        results=rows,
    )
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
