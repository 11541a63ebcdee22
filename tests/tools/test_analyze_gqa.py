import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import analyze_gqa  # noqa: E402

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_kv_heads=2, num_classes=5)


@pytest.mark.parametrize("variant", ["kdgqa", "dgqa"])
def test_analyze_tiny_checkpoint(tmp_path, variant):
    torch.manual_seed(0)
    model = timm.create_model(f"vit_small_patch16_224_{variant}", **TINY)
    if variant == "dgqa":
        model.blocks[1].attn.group_sizes_now.copy_(torch.tensor([3, 1]))
    ckpt = tmp_path / "epoch_1.pth"  # an mmengine checkpoint of the ImageClassifier recipes
    torch.save({"meta": {}, "state_dict": {f"network.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (80 * i, 50, 200 - 60 * i)).save(images / f"{i}.png")
    out = tmp_path / "alloc.png"
    stats = analyze_gqa.main([str(ckpt), "--num-heads", "4", "--images", str(images), "--out", str(out),
                              "--json", str(tmp_path / "s.json")])
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size[0] > 100
    assert len(stats["allocation"]) == 3 and all(abs(sum(row) - 4) < 1e-6 for row in stats["allocation"])
    assert all(n > 0 for row in stats["key_norms"] for n in row)
    if variant == "dgqa":
        assert stats["allocation"][1] == [3.0, 1.0]
    assert json.loads((tmp_path / "s.json").read_text()) == stats


def test_analyze_rejects_other_checkpoints(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(RuntimeError, match="GQA ViT"):
        analyze_gqa.main([str(tmp_path / "x.pth")])
