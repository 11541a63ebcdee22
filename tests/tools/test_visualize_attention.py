"""tools/visualize_attention.py: BiFormer routing pictures and MatchStereo sampling windows."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from visionattn.engine import attention_maps
from visionattn.visualization import predictions as drawing

pytestmark = pytest.mark.usefixtures("one_thread")


def _tinted(pic: np.ndarray, grey: int, n_win: int, region: float):
    """Regions whose centre pixel is no longer the grey of the input (row-major region ids)."""
    out = set()
    for r in range(n_win * n_win):
        row, col = divmod(r, n_win)
        y, x = int((row + 0.75) * region), int((col + 0.75) * region)  # off the rank label and the grid lines
        if not (pic[y, x] == grey).all():
            out.add(r)
    return out


def test_biformer_cli_pictures_encode_the_routing(load_tool, tmp_path):
    image = tmp_path / "grey.png"
    Image.fromarray(np.full((100, 120, 3), 128, np.uint8)).save(image)
    written = load_tool("visualize_attention").main(
        ["biformer", str(image), "--model", "biformer_tiny", "--stage", "1", "--block", "1", "--query", "2", "5",
         "--query", "0", "0", "--out-dir", str(tmp_path / "out")])
    meta = json.loads((tmp_path / "out" / "grey_routing.json").read_text())
    n, region = meta["n_win"], meta["region_px"][0]
    assert meta["layer"] == "stages.1.blocks.1.attn" and n == 7 and region == 32.0  # 224 px / 7 regions
    assert len(meta["routing"]) == n * n and all(len(v) == 4 for v in meta["routing"].values())  # stage-1 topk 4
    for path, (qr, qc) in zip(written, [(2, 5), (0, 0)]):
        assert path.name == f"grey_s1b1_r{qr}c{qc}.png"
        pic = np.asarray(Image.open(path).convert("RGB"))
        routed = {r * n + c for r, c in meta["routing"][f"{qr},{qc}"]}
        assert _tinted(pic, 128, n, region) == routed  # exactly the top-k regions are highlighted
        y0, x0 = int(qr * region), int(qc * region)
        assert (pic[y0 + 1, x0 + 5] == (255, 0, 0)).all()  # the query region's red outline


def test_biformer_routing_matches_region_affinity():
    """The routed regions are the top-k of the region-mean q . k affinity (independent recomputation)."""
    import timm

    model = timm.create_model("biformer_tiny", depths=(1, 1, 1, 1), n_win=4).eval()
    x = torch.randn(1, 3, 64, 64)
    routing = attention_maps.biformer_routing(model, x, stage=0, block=0)
    layer = model.stages[0].blocks[0].attn
    seen = {}
    handle = layer.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    model(x)
    handle.remove()
    q, k, _ = layer.qkv(seen["x"]).chunk(3, dim=-1)  # (1, 16, 16, C): 4x4 regions of 4x4 tokens
    qr = q.reshape(1, 4, 4, 4, 4, -1).mean((2, 4)).reshape(16, -1)
    kr = k.reshape(1, 4, 4, 4, 4, -1).mean((2, 4)).reshape(16, -1)
    expected = (qr @ kr.T).topk(1, dim=-1).indices  # stage 0 topk 1
    assert torch.equal(routing["indices"], expected)
    assert routing["region"] == (16.0, 16.0)


def test_layer_without_routing_is_a_clear_error():
    import timm

    model = timm.create_model("biformer_tiny", depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="stage 3 block 0"):  # stage 3 is global attention: no routing
        attention_maps.biformer_routing(model, torch.zeros(1, 3, 64, 64), stage=3, block=0)


def test_matchstereo_windows_on_the_right_image(tmp_path):
    import visionattn

    model = visionattn.create_model("matchstereo_tiny").eval()
    g = torch.Generator().manual_seed(0)
    left = torch.rand(1, 3, 192, 192, generator=g) * 255
    right = torch.roll(left, shifts=-8, dims=-1)
    windows = attention_maps.matchstereo_windows(model, left, right, [(40, 60), (150, 100)])
    for win in windows:
        x0, y0, x1, y1 = win["window"]
        side = (2 * win["radius"] + 2) * win["stride"]
        assert (x1 - x0, y1 - y0) == (side, side) and win["stride"] == 4
        assert 0 <= x0 and x1 <= 192 and 0 <= y0 and y1 <= 192
        cx, cy = win["center"]
        assert x0 + win["radius"] * 4 <= cx <= x1 - win["radius"] * 4  # centre in the middle cell pair
        assert win["weights"].sum() == pytest.approx(1.0, abs=1e-4)  # BilinearSoftmax sums to one
    left_u8, right_u8 = (t[0].permute(1, 2, 0).round().byte().numpy() for t in (left, right))
    pic = attention_maps.draw_windows(left_u8, right_u8, windows)
    assert pic.shape == (192, 192 * 2 + 4, 3)
    colour = drawing.palette(2, seed=1)[0]
    x0, y0, x1, y1 = (int(v) for v in windows[0]["window"])
    assert (pic[y0, 196 + x0:196 + x1] == colour).all()  # the window's top edge, on the right image
    assert (pic[y1 - 1, 196 + x0:196 + x1] == colour).all()
