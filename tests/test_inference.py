"""visionattn.inference: input checks, padding, tiling, CUDA-graph replay and the task predictors."""
import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from visionattn import inference as inf
from visionattn.cuda_graph import graph_runners
from visionattn.models.restoration.restore_rwkv import RestoreRWKV
from visionattn.models.stereo import matchstereo as ms


def _stereo_model(task="stereo"):
    """A narrow 4-level MatchStereo with one layer per level: same code paths, fast on CPU."""
    torch.manual_seed(0)
    return ms.MatchStereo((8, 16, 16, 24), task=task, depths=(1, 1, 1, 1), num_layers=(1, 1, 1, 1),
                          num_heads=(2, 2, 2, 2)).eval()


def _rwkv(**kw):
    torch.manual_seed(0)
    return RestoreRWKV(**{"dim": 8, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1, **kw}).eval()


def test_inference_imports_no_higher_layer():
    tree = ast.parse(Path(inf.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    higher = [m for m in imported if m.lstrip(".").split(".")[0] in ("engine", "datasets", "evaluation", "tools")
              or m.startswith("visionattn.") and m.split(".")[1] in ("engine", "datasets", "evaluation")]
    assert not higher, higher


# --- check_image ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (torch.rand(3, 8, 8), r"3-D .*x\[None\]"),
    (torch.rand(8, 8), r"2-D .*x\[None, None\]"),
    (torch.rand(0, 3, 8, 8), "empty"),
    (torch.rand(1, 1, 8, 8), r"3 channels, got 1 .*expand\(-1, 3, -1, -1\)"),
    (torch.rand(1, 8, 8, 3), r"channels-last .*permute\(0, 3, 1, 2\)"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), r"uint8.*x\.float\(\) / 255"),
    (torch.rand(1, 3, 8, 8, dtype=torch.float64), r"float64.*x\.to\(torch\.float32\)"),
    (torch.rand(1, 3, 8, 8) * 2, r"values must lie in \[0, 1\], got \[.*, [12](\.\d+)?\]; scale"),
    (torch.rand(1, 3, 8, 8).numpy(), "torch.Tensor"),
])
def test_check_image_names_the_fix(bad, match):
    with pytest.raises(ValueError, match=match):
        inf.check_image(bad, channels=3, value_range=(0, 1), hint="scale to [0, 1]")


def test_check_image_accepts_valid_batches():
    inf.check_image(torch.rand(2, 3, 5, 7), channels=3, value_range=(0, 1))
    inf.check_image(torch.rand(1, 1, 4, 4, dtype=torch.bfloat16), channels=(1, 3))
    inf.check_image(torch.full((1, 3, 4, 4), 255, dtype=torch.uint8), value_range=(0, 255),
                    dtypes=(torch.uint8, torch.float32))
    inf.check_image(torch.empty(1, 3, 4, 4, device="meta"), value_range=(0, 1))  # no values to check


def test_rescale_round_trip():
    x = torch.rand(2, 1, 5, 5)
    y = inf.rescale(x, (0, 1), (-1, 1))
    assert y.min() >= -1 and y.max() <= 1
    torch.testing.assert_close(inf.rescale(y, (-1, 1), (0, 1)), x)
    torch.testing.assert_close(inf.rescale(x * 255, (0, 255), (0, 1)), x)
    with pytest.raises(ValueError, match="empty"):
        inf.rescale(x, (1, 1), (0, 1))


# --- padding -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", inf.PAD_MODES)
@pytest.mark.parametrize("anchor", inf.ANCHORS)
@pytest.mark.parametrize("hw, multiple, min_size", [((13, 21), 8, 1), ((70, 100), 32, 192), ((5, 3), 8, 1),
                                                    ((200, 240), 32, 192)])
def test_pad_to_multiple_round_trip(mode, anchor, hw, multiple, min_size):
    x = torch.rand(2, 3, *hw)
    padded, padding = inf.pad_to_multiple(x, multiple, min_size=min_size, mode=mode, anchor=anchor)
    H, W = padded.shape[-2:]
    assert H % multiple == 0 and W % multiple == 0 and min(H, W) >= min_size
    assert H - hw[0] < multiple + max(min_size - hw[0], 0) and W - hw[1] < multiple + max(min_size - hw[1], 0)
    assert torch.equal(padding.crop(padded), x)
    assert (padding.top + padding.bottom, padding.left + padding.right) == (H - hw[0], W - hw[1])
    if anchor == "top_left":
        assert padding.top == padding.left == 0
    elif anchor == "bottom_left":
        assert padding.bottom == padding.left == 0
    else:
        assert abs(padding.top - padding.bottom) <= 1 and abs(padding.left - padding.right) <= 1


def test_pad_modes_fill_as_named():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    padded, padding = inf.pad_to_multiple(x, 8, mode="replicate", anchor="bottom_left")
    assert padding == (5, 0, 0, 4)
    assert torch.equal(padded[..., :5, :4], x[..., :1, :].expand(1, 1, 5, 4))  # top rows copy the first row
    assert torch.equal(padded[..., 5:, 4:], x[..., -1:].expand(1, 1, 3, 4))  # right columns copy the last one
    y = torch.arange(20.0).view(1, 1, 4, 5)
    padded, _ = inf.pad_to_multiple(y, 6, mode="reflect")  # 4x5 -> 6x6: small pads, a real mirror
    assert torch.equal(padded[0, 0, 4, :5], y[0, 0, 2]) and torch.equal(padded[0, 0, :4, 5], y[0, 0, :, 3])
    padded, _ = inf.pad_to_multiple(x, 8, mode="reflect")  # too small to mirror: replicate
    assert torch.equal(padded[0, 0, 7, :4], x[0, 0, 2])
    padded, _ = inf.pad_to_multiple(x, 8, mode="constant", value=-1.0)
    assert (padded[..., 3:, :] == -1).all() and (padded[..., :, 4:] == -1).all()
    same, none = inf.pad_to_multiple(torch.rand(1, 1, 16, 8), 8)
    assert not any(none) and same.shape == (1, 1, 16, 8)
    for kwargs, match in ((dict(multiple=0), "multiple"), (dict(multiple=8, mode="wrap"), "pad mode"),
                          (dict(multiple=8, anchor="middle"), "anchor")):
        with pytest.raises(ValueError, match=match):
            inf.pad_to_multiple(x, **kwargs)


def test_run_padded_meets_the_size_contract():
    seen = []

    class Net(torch.nn.Module):
        size_multiple, min_size = 8, 16

        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return x * 2

    x = torch.rand(1, 2, 13, 21)
    torch.testing.assert_close(inf.run_padded(Net(), x), x * 2)
    assert seen == [(16, 24)]
    with pytest.raises(ValueError, match="input's size"):
        inf.run_padded(lambda t: t[..., :4, :4], x, multiple=8)


# --- tiling --------------------------------------------------------------------------------------

def test_tiled_pointwise_equals_untiled_and_is_bounded():
    x = torch.rand(1, 2, 70, 45)
    seen = []

    def fn(crop):
        seen.append(crop.shape[-2:])
        return torch.cat((crop * 3.0, crop.sum(1, keepdim=True)), 1)  # pixel-wise, 2 -> 3 channels

    out = inf.tiled(fn, x, tile=24, overlap=8)
    torch.testing.assert_close(out, fn(x))
    assert all(s == (24, 24) for s in seen[:-1]) and len(seen) > 4  # the last seen call is fn(x) above
    seen.clear()
    assert torch.equal(inf.tiled(fn, x[..., :20, :20], tile=24, overlap=8), fn(x[..., :20, :20]))  # one tile
    with pytest.raises(ValueError, match="larger than overlap"):
        inf.tiled(fn, x, tile=8, overlap=8)
    with pytest.raises(ValueError, match="keep the spatial size"):
        inf.tiled(lambda t: t[..., ::2, ::2], x, tile=24, overlap=8)


def test_tiled_local_network_equals_untiled_away_from_seams():
    """A 3x3 conv differs from the whole-image result only on each tile's inner edge pixels (zero
    padding there), and those carry the ramp's smallest weight."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    H, W, tile, overlap = 64, 50, 24, 8
    x = torch.rand(1, 1, H, W)
    coords = torch.stack(torch.meshgrid(torch.arange(float(H)), torch.arange(float(W)), indexing="ij"))[None]
    boxes = []

    def fn(crop):
        ys, xs = crop[0, 1], crop[0, 2]
        boxes.append((int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())))
        return conv(crop[:, :1])

    with torch.no_grad():
        tiled = inf.tiled(fn, torch.cat((x, coords), 1), tile, overlap)
        whole = conv(x)
    seam = torch.zeros(H, W, dtype=torch.bool)
    for y0, y1, x0, x1 in boxes:  # inner edges: crop borders that are not image borders
        if y0 > 0:
            seam[y0, x0:x1 + 1] = True
        if y1 < H - 1:
            seam[y1, x0:x1 + 1] = True
        if x0 > 0:
            seam[y0:y1 + 1, x0] = True
        if x1 < W - 1:
            seam[y0:y1 + 1, x1] = True
    diff = (tiled - whole).abs()[0, 0]
    assert diff[~seam].max() < 1e-6
    assert 0 < diff[seam].max() < 0.5 * whole.abs().max()


# --- restoration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(16, 16), (13, 21), (5, 3)])
def test_restore_image_any_size(hw):
    m = _rwkv()
    x = torch.rand(2, 1, *hw)
    out = inf.restore_image(m, x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    if hw == (16, 16):
        with torch.no_grad():
            torch.testing.assert_close(out, m(x))  # a multiple of 8: the forward itself
    else:  # the forward on the reflect-padded (or, too small to mirror, replicate-padded) image, cropped
        mode = "reflect" if hw[0] > 8 else "replicate"
        padded = F.pad(x, (0, -hw[1] % 8, 0, -hw[0] % 8), mode=mode)
        with torch.no_grad():
            torch.testing.assert_close(out, m(padded)[..., :hw[0], :hw[1]])
    rgb = _rwkv(in_chans=3, out_chans=3)
    assert inf.restore_image(rgb, torch.rand(1, 3, *hw)).shape == (1, 3, *hw)


def test_restore_image_tiled_close_to_whole():
    m = _rwkv()
    x = torch.rand(1, 1, 40, 40)
    whole = inf.restore_image(m, x)
    tiled = inf.restore_image(m, x, tile=32, overlap=16)
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
    assert (tiled - whole).abs().mean() < 0.5 * whole.abs().mean()


def test_restore_image_errors_and_ranges():
    m = _rwkv()
    with pytest.raises(ValueError, match="multiple of 8"):
        inf.restore_image(m, torch.rand(1, 1, 40, 40), tile=30)
    with pytest.raises(ValueError, match=r"float64.*x\.to\(torch\.float32\)"):
        inf.restore_image(m, torch.rand(1, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="1 channel, got 3"):
        inf.restore_image(m, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="CUDA"):
        inf.restore_image(m, torch.rand(1, 1, 8, 8), cuda_graph=True)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append((float(x.min()), float(x.max())))
            return x

    x = torch.linspace(0, 1, 64).view(1, 1, 8, 8)
    torch.testing.assert_close(inf.restore_image(Recorder(), x, value_range=(0, 1), network_range=(-1, 1)), x)
    assert seen == [(-1.0, 1.0)]  # the network saw its own range; the output came back to the caller's
    with pytest.raises(ValueError, match="values must lie in"):
        inf.restore_image(Recorder(), x + 1, value_range=(0, 1))
    with pytest.raises(ValueError, match="needs value_range"):
        inf.restore_image(Recorder(), x, network_range=(-1, 1))


# --- stereo --------------------------------------------------------------------------------------

def test_predict_stereo_pads_and_crops_any_size():
    model = _stereo_model()
    left = torch.rand(1, 3, 70, 100) * 255
    right = left.roll(-3, dims=-1)
    out = inf.predict_stereo(model, left, right)
    assert set(out) == {"field", "consistency", "disparity", "disparity_right"}
    assert out["disparity"].shape == (1, 1, 70, 100) and out["field"].shape == (2, 2, 70, 100)
    assert out["consistency"].shape == (1, 1, 70, 100) and out["consistency"].dtype == torch.bool
    # the official layout: replicate padding at the top and right to 192x192, outputs cropped back
    pad = (0, 192 - 100, 192 - 70, 0)
    with torch.no_grad():
        full = model(F.pad(left, pad, mode="replicate"), F.pad(right, pad, mode="replicate"))
    torch.testing.assert_close(out["disparity"], full["disparity"][..., 192 - 70:, :100])
    torch.testing.assert_close(out["field"], full["field"][..., 192 - 70:, :100])
    # already a valid size: the forward's outputs as they are
    big = torch.rand(1, 3, 192, 224) * 255
    with torch.no_grad():
        direct = model(big, big.roll(-2, dims=-1))
    again = inf.predict_stereo(model, big, big.roll(-2, dims=-1))
    for k in again:
        assert torch.equal(again[k], direct[k]), k
    # the model's method is a shim over inference.predict_disparity
    torch.testing.assert_close(model.predict_disparity(left, right), out["disparity"])


def test_predict_stereo_input_errors():
    model = _stereo_model()
    img = torch.rand(1, 3, 64, 64) * 255
    with pytest.raises(ValueError, match="0, 255"):
        inf.predict_stereo(model, img / 255 - 0.5, img)
    with pytest.raises(ValueError, match="3 channels"):
        inf.predict_stereo(model, img[:, :2], img[:, :2])
    with pytest.raises(ValueError, match="differ"):
        inf.predict_stereo(model, img, img[..., :32])
    with pytest.raises(ValueError, match=r"3-D .*x\[None\]"):
        inf.predict_disparity(model, img[0], img[0])
    with pytest.raises(ValueError, match="CUDA images"):
        inf.predict_disparity(model, img, img, cuda_graph=True)


def test_predict_flow_and_task_check():
    flow = _stereo_model(task="flow")
    a = torch.rand(1, 3, 64, 80) * 255
    out = inf.predict_stereo(flow, a, a.roll(2, dims=-1))
    assert set(out) == {"field", "consistency", "flow", "flow_backward"}
    torch.testing.assert_close(inf.predict_flow(flow, a, a.roll(2, dims=-1)), out["flow"])
    torch.testing.assert_close(flow.predict_flow(a, a.roll(2, dims=-1)), out["flow"])  # the shim
    with pytest.raises(RuntimeError, match="flow"):
        inf.predict_disparity(flow, a, a)
    with pytest.raises(RuntimeError, match="flow"):
        flow.predict_disparity(a, a)


# --- CUDA ----------------------------------------------------------------------------------------

def _pair(h=192, w=256, shift=6, device="cuda"):
    g = torch.Generator().manual_seed(0)
    left = F.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=g), (h, w), mode="bilinear") * 255
    return left.to(device), left.roll(-shift, dims=-1).to(device)


@pytest.mark.cuda
def test_cuda_stereo_graph_replay_equals_eager():
    import visionattn

    model = visionattn.create_model("matchstereo_tiny").cuda().eval()
    left, right = _pair()
    # captured per shape, replays give the eager result for new inputs of that shape
    eager = inf.predict_disparity(model, left, right)
    torch.testing.assert_close(inf.predict_disparity(model, left, right, cuda_graph=True), eager)
    left2, right2 = _pair(shift=3)
    torch.testing.assert_close(inf.predict_disparity(model, left2, right2, cuda_graph=True),
                               inf.predict_disparity(model, left2, right2))
    odd = [t[..., :100, :200] for t in (left, right)]  # padded inside the graph
    torch.testing.assert_close(inf.predict_stereo(model, *odd, cuda_graph=True)["consistency"],
                               inf.predict_stereo(model, *odd)["consistency"])
    torch.testing.assert_close(model.predict_disparity(*odd, cuda_graph=True), model.predict_disparity(*odd))
    assert len(graph_runners(model)["predict_stereo"]) == 2
    with pytest.raises(ValueError, match="0, 255"):  # checked before every replay
        inf.predict_disparity(model, left - 300, right, cuda_graph=True)
    model.half()  # a re-cast model is captured again
    torch.testing.assert_close(inf.predict_disparity(model, left, right, cuda_graph=True),
                               inf.predict_disparity(model, left, right))
    assert len(graph_runners(model)["predict_stereo"]) == 3


@pytest.mark.cuda
def test_cuda_restore_image_graph_replay_equals_eager():
    m = _rwkv(dim=16).cuda()
    x = torch.rand(1, 1, 70, 45, device="cuda")
    for tile in (None, 32):
        torch.testing.assert_close(inf.restore_image(m, x, tile=tile, overlap=8, cuda_graph=True),
                                   inf.restore_image(m, x, tile=tile, overlap=8))
    assert len(graph_runners(m)["restore_image/reflect"]) == 2  # the whole image + one tile shape
