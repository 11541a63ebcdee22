"""MHA -> GQA conversion of timm ViT weights, and strict loading of the official checkpoint layout."""
import re
from pathlib import Path

import pytest
import timm
import torch

import visionattn
from visionattn.hub import load_checkpoint
from visionattn.models import convert_mha_to_gqa

KEYS = Path(__file__).resolve().parents[1] / "data" / "reference_keys"
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)


def _timm_vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", **TINY).eval()
    with torch.no_grad():  # non-trivial final norm, so dropping it would show
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.normal_()
    return model


def test_g_equals_h_reproduces_mha_exactly(tmp_path):
    src = _timm_vit()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)
    for attn in ("gqa", "kdgqa", "dgqa"):
        model = timm.create_model(f"vit_small_patch16_224_{attn}", **TINY, num_kv_heads=4).eval()
        load_checkpoint(model, convert_mha_to_gqa(path, 4, num_heads=4), family="gqa_vit")
        assert torch.equal(model(x), src(x)), attn


def test_mean_pooling_and_final_norm_kept():
    src = _timm_vit()
    sd = src.state_dict()
    out = convert_mha_to_gqa(src, 2)  # heads read from the model
    w, b = sd["blocks.1.attn.qkv.weight"], sd["blocks.1.attn.qkv.bias"]
    ow, ob = out["blocks.1.attn.qkv.weight"], out["blocks.1.attn.qkv.bias"]
    d = 8
    assert ow.shape == (32 + 2 * 2 * d, 32)
    assert torch.equal(ow[:32], w[:32]) and torch.equal(ob[:32], b[:32])  # queries copied
    for g in range(2):  # key head g = mean of MHA key heads 2g, 2g+1; values likewise
        heads = [w[32 + h * d: 32 + (h + 1) * d] for h in (2 * g, 2 * g + 1)]
        torch.testing.assert_close(ow[32 + g * d: 32 + (g + 1) * d], (heads[0] + heads[1]) / 2)
        vheads = [b[64 + h * d: 64 + (h + 1) * d] for h in (2 * g, 2 * g + 1)]
        torch.testing.assert_close(ob[48 + g * d: 48 + (g + 1) * d], (vheads[0] + vheads[1]) / 2)
    for key in ("norm.weight", "norm.bias", "head.weight", "cls_token", "blocks.0.mlp.fc1.weight"):
        assert torch.equal(out[key], sd[key]), key
    model = timm.create_model("vit_small_patch16_224_dgqa", **TINY, num_kv_heads=2)
    load_checkpoint(model, out, family="gqa_vit")  # strict; DGQA state added fresh
    assert torch.equal(model.norm.weight, sd["norm.weight"])
    assert model.blocks[0].attn.group_sizes_now.tolist() == [2, 2]


def test_pretrained_filter_converts_timm_weights():
    from visionattn.models.backbones.gqa_vit import checkpoint_filter_fn

    src = _timm_vit()
    model = timm.create_model("vit_small_patch16_224_kdgqa", **TINY, num_kv_heads=2)
    model.load_state_dict(checkpoint_filter_fn(src.state_dict(), model))
    assert torch.equal(model.blocks[0].attn.qkv.weight, convert_mha_to_gqa(src, 2)["blocks.0.attn.qkv.weight"])


def test_bad_conversion_args():
    src = _timm_vit()
    with pytest.raises(ValueError, match="divide"):
        convert_mha_to_gqa(src, 3)
    with pytest.raises(ValueError, match="not a multi-head"):
        convert_mha_to_gqa(convert_mha_to_gqa(src, 2), 1, num_heads=4)
    with pytest.raises(ValueError, match="attn.qkv"):
        convert_mha_to_gqa({"w": torch.zeros(1)}, 1)


def _official_state_dict(listing: Path):
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for line in listing.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        sd[key] = torch.randn(tuple(int(s) for s in re.findall(r"\d+", shape)), generator=gen)
    header = listing.read_text().splitlines()[1]
    return sd, int(re.search(r"parameters: (\d+)", header).group(1))


@pytest.mark.parametrize("listing,name,kwargs", [
    ("kdgqa_vit_small.txt", "vit_small_patch16_224_kdgqa", dict(num_kv_heads=3)),
    ("kdgqa_vit_small_dgqa.txt", "vit_small_patch16_224_dgqa", dict(num_kv_heads=3)),
    ("kdgqa_vit_small_mhsa.txt", "vit_small_patch16_224_mha", {}),
    pytest.param("kdgqa_vit_base.txt", "vit_base_patch16_224_kdgqa", dict(num_kv_heads=6), marks=pytest.mark.slow),
])
def test_official_layout_loads_strictly(listing, name, kwargs, tmp_path):
    official, n_params = _official_state_dict(KEYS / listing)
    torch.save(official, tmp_path / "best.pth")  # the official train.py saves a bare state dict
    # strict load; the family's converter is found from the model name
    model = visionattn.create_model(name, num_classes=10, weight_init="skip", checkpoint=str(tmp_path / "best.pth"),
                                    **kwargs)
    assert sum(p.numel() for p in model.parameters()) == n_params  # same size as the official model
    ours = model.state_dict()
    for key, value in official.items():
        prefix, _, leaf = key.rpartition(".attn.")
        if leaf in ("q.weight", "q.bias"):
            kind = leaf[2:]
            expected = torch.cat([value, official[f"{prefix}.attn.k.{kind}"], official[f"{prefix}.attn.v.{kind}"]])
            assert torch.equal(ours[f"{prefix}.attn.qkv.{kind}"], expected), key
        elif leaf == "cache":
            assert torch.equal(ours[f"{prefix}.attn.key_norm_stat"], value), key
        elif not leaf.startswith(("k.", "v.")):
            assert torch.equal(ours[key], value), key
