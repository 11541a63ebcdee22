"""Per-layer query allocation and key-head norms of a GQA-variant ViT checkpoint (the paper's analysis).

    python tools/analyze_gqa.py CHECKPOINT [--images DIR] [--out allocation.png] [--json stats.json]

CHECKPOINT: weights of a ``vit_*_patch16_224_{gqa,kdgqa,dgqa,pgqa}`` model (a bare state dict, or
an mmengine checkpoint of the ``ImageClassifier`` recipes). The architecture (width, depth, patch
and image size, KV heads) is read from the weights; the head count defaults to width / 64 and the
variant to ``dgqa`` when DGQA state is present, else ``kdgqa``. The model runs in eval mode on the
images of ``--images`` (resized, normalised with mean = std = 0.5) or on random inputs, and the
figure shows, per layer and KV head, the mean number of query heads allocated and the mean
Frobenius norm of the key head.
"""
import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import visionattn  # noqa: E402,F401  (registers the models)
from visionattn.hub import extract_state_dict, read_checkpoint  # noqa: E402
from visionattn.models.backbones.gqa_vit import ATTENTIONS, key_head_norms  # noqa: E402

PREFIXES = ("network.", "module.", "backbone.", "model.")


def load_model(checkpoint: str, num_heads=None, variant=None) -> torch.nn.Module:
    state = extract_state_dict(read_checkpoint(checkpoint))
    for prefix in PREFIXES:
        if "patch_embed.proj.weight" not in state and any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if "patch_embed.proj.weight" not in state or "blocks.0.attn.qkv.weight" not in state:
        raise RuntimeError(f"{checkpoint!r} does not hold a visionattn GQA ViT (no patch_embed/blocks.0.attn.qkv)")
    dim = state["pos_embed"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    heads = num_heads or dim // 64
    head_dim = dim // heads
    kv_heads = (state["blocks.0.attn.qkv.weight"].shape[0] - dim) // (2 * head_dim)
    variant = variant or ("dgqa" if "blocks.0.attn.group_sizes_now" in state else "kdgqa")
    if variant not in ATTENTIONS:
        raise ValueError(f"--variant must be one of {sorted(ATTENTIONS)}, got {variant!r}")
    model = timm.create_model(f"vit_small_patch16_224_{variant}", embed_dim=dim, depth=depth, num_heads=heads,
                              num_kv_heads=kv_heads, patch_size=patch, img_size=grid * patch,
                              num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0)
    model.load_state_dict(state)
    return model.eval()


def read_images(folder, size: int, count: int) -> torch.Tensor:
    """(N, 3, size, size) normalised with mean = std = 0.5; random when no folder is given."""
    if folder is None:
        return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0))
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    if not paths:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png/.bmp images under {str(folder)!r}")
    arrays = []
    for p in paths[:count]:
        with Image.open(p) as img:
            arrays.append(np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    return (x - 0.5) / 0.5


@torch.no_grad()
def layer_statistics(model: torch.nn.Module, images: torch.Tensor) -> dict:
    """Per layer: mean query heads per KV head (L, G) and mean key-head norm (L, G)."""
    allocation, norms = [], []

    def record(attn, args):
        k = attn.split_heads(args[0])[1]  # (B, G, N, d)
        norms.append(key_head_norms(k).mean(0))
        if hasattr(attn, "group_sizes_now"):  # DGQA: the stored allocation
            sizes = attn.group_sizes_now
        else:
            sizes = attn.group_sizes(k)
            if sizes is None:
                sizes = torch.full((attn.num_kv_heads,), attn.num_heads // attn.num_kv_heads)
        allocation.append(sizes.float().reshape(-1, attn.num_kv_heads).mean(0))

    handles = [b.attn.register_forward_pre_hook(record) for b in model.blocks]
    try:
        model(images)
    finally:
        for h in handles:
            h.remove()
    return dict(allocation=torch.stack(allocation).tolist(), key_norms=torch.stack(norms).tolist())


def plot(stats: dict, out: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.35 * len(stats["allocation"]) + 2.5))
    for ax, key, label in zip(axes, ("allocation", "key_norms"), ("query heads per KV head", "key-head norm")):
        data = np.array(stats[key])
        im = ax.imshow(data, aspect="auto", cmap="viridis")
        ax.set_xlabel("KV head")
        ax.set_ylabel("layer")
        ax.set_title(label)
        ax.set_xticks(range(data.shape[1]))
        ax.set_yticks(range(data.shape[0]))
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, f"{v:.1f}" if key == "allocation" else f"{v:.3g}", ha="center", va="center",
                    fontsize=7, color="w")
        fig.colorbar(im, ax=ax)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--images", help="folder of images (default: random inputs)")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--num-heads", type=int, help="query heads (default: width / 64)")
    p.add_argument("--variant", choices=sorted(ATTENTIONS), help="default: dgqa if DGQA state is saved, else kdgqa")
    p.add_argument("--out", default=None, help="PNG path (default: next to the checkpoint)")
    p.add_argument("--json", default=None, help="also write the numbers as JSON")
    args = p.parse_args(argv)
    model = load_model(args.checkpoint, args.num_heads, args.variant)
    images = read_images(args.images, model.patch_embed.img_size[0], args.num_images)
    stats = layer_statistics(model, images)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".allocation.png")
    attn = model.blocks[0].attn
    plot(stats, out, f"{Path(args.checkpoint).name}: {type(attn).__name__}, {attn.num_heads} query heads, "
                     f"{attn.num_kv_heads} KV heads, {len(images)} images")
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=1))
    print(f"wrote {out}")
    return stats


if __name__ == "__main__":
    main()
