"""MatchStereo's fused kernels (depthwise_glu, convex_upsample) against their references, per op and per model.

    python benchmarks/matchstereo_fused_ops_parity.py matchstereo_tiny              # 4K pair, CUDA
    python benchmarks/matchstereo_fused_ops_parity.py matchstereo_base --size 384 1248

For fp32 and fp16, on a textured pair whose right view is the left one shifted by 24 px:
1. one forward records the inputs of every call of the two ops; each is rerun with the kernel and
   with the reference, and the largest difference relative to the output's range is printed;
2. the model's field with the kernels against the field with both ops on their references;
3. the field's sensitivity: the reference model on the left view plus 0.01 of Gaussian noise.
With random weights (3) is large: the network amplifies any rounding, so (2) is only meaningful
next to it, and in fp32.
"""
import argparse

import torch

import visionattn
from visionattn.models.stereo import matchstereo as M
from visionattn.ops.dispatch import use_impl

REFERENCE = "depthwise_glu:reference+convex_upsample:reference"


def textured_pair(height: int, width: int):
    """A smooth random texture (noise upsampled x8 bicubically, 0-255) and the same texture 24 px further."""
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, height // 8, width // 8 + 8, generator=g),
                                           scale_factor=8, mode="bicubic")
    return ((base[..., 64:64 + width] * 255).clamp(0, 255), (base[..., 40:40 + width] * 255).clamp(0, 255))


def field_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    d = (a.float() - b.float()).abs().flatten()
    p9999 = d.kthvalue(max(1, int(d.numel() * 0.9999))).values.item()
    return (f"max {d.max().item():.3g} px, mean {d.mean().item():.3g}, 99.99th percentile {p9999:.3g}, "
            f"share above 0.5 px {(d > 0.5).float().mean().item():.2e}")


def relative_error(fn, args) -> float:
    fast, ref = fn(*args, impl="triton").float(), fn(*args, impl="reference").float()
    return ((fast - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", default="matchstereo_tiny")
    p.add_argument("--size", type=int, nargs=2, default=(2176, 3840), metavar=("H", "W"))
    args = p.parse_args()
    left, right = textured_pair(*args.size)
    torch.manual_seed(0)  # the noise of (3)
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {args.model} {args.size[0]}x{args.size[1]}")
    glu, upsample = M.depthwise_glu, M.convex_upsample
    for dtype in (torch.float32, torch.float16):
        model = visionattn.create_model(args.model).cuda().to(dtype).eval()
        lv, rv = left.cuda().to(dtype), right.cuda().to(dtype)
        glu_calls, upsample_calls = [], []

        def record_glu(h, weight, bias, inplace=False):
            glu_calls.append((h.clone(), weight, bias))  # before the kernel writes into h
            return glu(h, weight, bias, inplace=inplace)

        def record_upsample(x, mask, factor):
            upsample_calls.append((x, mask, factor))
            return upsample(x, mask, factor)

        M.depthwise_glu, M.convex_upsample = record_glu, record_upsample
        try:
            with torch.inference_mode():
                field = model(lv, rv)["field"]
        finally:
            M.depthwise_glu, M.convex_upsample = glu, upsample
        with torch.inference_mode():
            glu_err = max(relative_error(glu, c) for c in glu_calls)
            upsample_err = max(relative_error(upsample, c) for c in upsample_calls)
            with use_impl(REFERENCE):
                ref = model(lv, rv)["field"]
                noisy = model(lv + 0.01 * torch.randn_like(lv), rv)["field"]
        print(f"\n{dtype}: largest error relative to the output range: depthwise_glu {glu_err:.2e} "
              f"({len(glu_calls)} calls), convex_upsample {upsample_err:.2e} ({len(upsample_calls)} calls)")
        print(f"  field, kernels vs references:     {field_diff(field, ref)}")
        print(f"  field, references vs noisy input: {field_diff(ref, noisy)}")
        del model, glu_calls, upsample_calls
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
