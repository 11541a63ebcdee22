"""ScatterFormer: layout (parameter counts), forward contract and edge cases, window grouping,
sparse backend against dense convolutions, decoding, strict official checkpoints.

Most forward tests use the Waymo network on a 7.68 m x 7.68 m range (every layer shape is the
official one; only the grid is smaller) so that they run in seconds on a CPU.
"""
import importlib
import importlib.util
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("spconv") is None and importlib.util.find_spec("spconv_triton") is None:
    pytest.skip("needs a sparse-convolution library: pip install -e .[3d]", allow_module_level=True)

import visionattn  # noqa: E402
from visionattn import hub  # noqa: E402
from visionattn.inference import predict_boxes_3d  # noqa: E402
from visionattn.models.detection3d import scatterformer as sf  # noqa: E402
from visionattn.models.detection3d import sparse_backend as sp  # noqa: E402
from visionattn.models.detection3d.scatterformer_backbone import (  # noqa: E402
    AttnPillarPool, group_by_window, pad_rows, padded_rows)

DATA = Path(__file__).resolve().parents[1] / "data"
SMALL = dict(sf.WAYMO, point_cloud_range=(-3.84, -3.84, -2.0, 3.84, 3.84, 4.0))  # grid 24 x 24 x 32, BEV 12 x 12


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return sf.ScatterFormer(**SMALL).eval()


@pytest.fixture(scope="module")
def two_samples(small_model):
    """A two-sample batch and the model's raw maps for it (eval)."""
    points = cloud(batch_size=2)
    with torch.no_grad():
        return points, small_model(points)


def cloud(n=400, batch_size=1, seed=0, config=SMALL):
    return sf.synthetic_point_cloud(n, config["point_cloud_range"], config["num_point_features"], batch_size, seed)


def _count(module):
    return sum(p.numel() for p in module.parameters())


# --- layout ---------------------------------------------------------------------------------------

def test_param_counts_are_the_official_ones():
    with torch.device("meta"):
        model = visionattn.create_model("scatterformer_waymo")
    assert _count(model.vfe) == 4_640
    assert _count(model.backbone_3d) == 4_241_856
    assert _count(model.backbone_2d) == 7_751_680
    assert _count(model.dense_head) == 302_732
    assert _count(model) == 12_300_908  # 12.30M
    with torch.device("meta"):
        kitti = visionattn.create_model("scatterformer_kitti")
    assert _count(kitti) == 12_300_908 - 32  # 4 point features instead of 5: one PFN input column less


def test_geometry_of_the_registered_networks():
    with torch.device("meta"):
        waymo = visionattn.create_model("scatterformer_waymo")
        kitti = visionattn.create_model("scatterformer_kitti")
    assert waymo.backbone_3d.sparse_shape == (33, 480, 480) and waymo.bev_shape == (240, 240)
    assert waymo.backbone_3d.app.height == 8 and waymo.decoder.stride == 2
    assert kitti.backbone_3d.sparse_shape == (33, 400, 352) and kitti.bev_shape == (200, 176)
    assert kitti.class_names == ("Car", "Pedestrian", "Cyclist")


def test_networks_are_listed_and_a_missing_extra_is_named(monkeypatch):
    """The networks are declared lazily (``import visionattn`` does not import spconv: test_factory);
    without spconv the sparse backend's import names the extra to install."""
    import importlib

    assert {"scatterformer_waymo", "scatterformer_kitti"} <= set(visionattn.list_models("scatterformer_*"))
    for name in ("spconv", "spconv.pytorch", "spconv_triton", "spconv_triton.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    monkeypatch.delitem(sys.modules, "visionattn.models.detection3d.sparse_backend")
    with pytest.raises(ImportError, match=r"\.\[3d\]"):
        importlib.import_module("visionattn.models.detection3d.sparse_backend")


# --- forward contract -----------------------------------------------------------------------------

def test_forward_maps_and_predictions(small_model, two_samples):
    points, maps = two_samples
    assert isinstance(maps, list) and len(maps) == 1
    expected = {"center": 2, "center_z": 1, "dim": 3, "rot": 2, "iou": 1, "hm": 3}
    assert {k: v.shape for k, v in maps[0].items()} == {k: (2, c, 12, 12) for k, c in expected.items()}
    assert all(torch.isfinite(v).all() for v in maps[0].values())
    dets = predict_boxes_3d(small_model, points)
    assert len(dets) == 2
    for d in dets:
        n = d["boxes"].shape[0]
        assert d["boxes"].shape == (n, 7) and d["scores"].shape == (n,) and d["labels"].shape == (n,)
        assert d["labels"].dtype == torch.int64 and (d["labels"] >= 0).all() and (d["labels"] < 3).all()
        assert ((d["scores"] >= 0) & (d["scores"] <= 1)).all()
        assert (d["boxes"][:, 3:6] > 0).all()


def test_bad_inputs_raise_clear_errors(small_model):
    with pytest.raises(ValueError, match=r"\(N, 1 \+ 5\)"):
        small_model(torch.zeros(10, 5))
    with pytest.raises(ValueError, match="floating point"):
        small_model(torch.zeros(10, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match="mode"):
        small_model(cloud(), mode="loss")
    with pytest.raises(ValueError, match="batch index 1 but batch_size is 1"):
        small_model(cloud(batch_size=2), batch_size=1)
    with pytest.raises(ValueError, match=r"float64 only for a float64 model.*points.float\(\)"):
        small_model(cloud().double())


def test_a_float64_network_takes_float64_points():
    """What the float64 parity run against the official code does (tools/parity_scatterformer.py)."""
    torch.manual_seed(0)
    model = sf.ScatterFormer(**SMALL).eval().double()
    maps = model(cloud().double())
    assert all(v.dtype == torch.float64 for group in maps for v in group.values())


def test_empty_and_out_of_range_point_clouds(small_model):
    empty = torch.zeros(0, 6)
    with torch.no_grad():
        maps_empty = small_model(empty)[0]
        assert maps_empty["hm"].shape == (1, 3, 12, 12)
        far = cloud(100)
        far[:, 1] += 100.0  # every point outside the range
        maps_far = small_model(far)[0]
        maps_empty2 = small_model(empty, batch_size=2)[0]
    assert all(torch.isfinite(v).all() for v in maps_empty.values())
    for k in maps_empty:  # nothing in range is the same as nothing at all
        torch.testing.assert_close(maps_far[k], maps_empty[k])
    assert maps_empty2["hm"].shape[0] == 2
    dets = predict_boxes_3d(small_model, empty)
    assert len(dets) == 1 and dets[0]["boxes"].shape[1] == 7


def test_single_voxel_and_a_sample_without_points(small_model):
    one = torch.tensor([[0.0, 1.0, 1.0, 0.5, 0.2, 0.1], [0.0, 1.01, 1.02, 0.51, 0.3, 0.0]])  # one voxel
    with torch.no_grad():
        maps = small_model(one)[0]
        # sample 1 of 3 has no points: its map is the empty map
        points = torch.cat([cloud(200, seed=1), cloud(200, seed=2)])
        points[200:, 0] = 2
        maps3 = small_model(points)[0]
        empty = small_model(torch.zeros(0, 6))[0]
    assert all(torch.isfinite(v).all() for v in maps.values())
    for k in maps3:
        torch.testing.assert_close(maps3[k][1:2], empty[k])


def test_point_order_does_not_change_the_output(small_model, two_samples):
    """Voxels are grouped by window with a sort: a different input order permutes rows, not results."""
    points, maps = two_samples
    perm = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        shuffled = small_model(points[perm])[0]
    for k in shuffled:
        torch.testing.assert_close(shuffled[k], maps[0][k], atol=2e-4, rtol=1e-4)


def test_training_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = sf.ScatterFormer(**SMALL).train()
    maps = model(cloud(300, batch_size=2))
    sum(v.float().mean() for v in maps[0].values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:10]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --- pieces -----------------------------------------------------------------------------------------

def test_window_grouping_matches_unique_over_windows():
    """Offsets over every window of the grid: the occupied ones are the official ``torch.unique`` windows
    in its order; the others are empty."""
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([torch.randint(0, 3, (500, 1), generator=g), torch.randint(0, 8, (500, 1), generator=g),
                     torch.randint(0, 50, (500, 2), generator=g)], 1)
    idx = torch.unique(idx, dim=0)
    idx = idx[torch.randperm(len(idx), generator=g)]
    perm, offsets = group_by_window(idx, (8, 50, 50), 12, batch_size=3)
    assert offsets.shape == (3 * 5 * 5 + 1,) and offsets[0] == 0 and offsets[-1] == len(idx)
    win = torch.cat([idx[:, :1], idx[:, 2:] // 12], 1)[perm]
    ref, counts = torch.unique(win, dim=0, return_counts=True)  # sorted (b, wy, wx), the official order
    assert torch.equal(torch.unique_consecutive(offsets), torch.nn.functional.pad(counts.cumsum(0), (1, 0)))
    for w in range(3 * 5 * 5):
        b, wy, wx = w // 25, w // 5 % 5, w % 5
        assert (win[offsets[w]:offsets[w + 1]] == torch.tensor([b, wy, wx])).all()
    assert torch.equal(torch.sort(perm)[0], torch.arange(len(idx)))


def test_pillar_pool_max_starts_at_zero():
    """The official query is spconv's max-pool, whose maximum starts at 0."""
    pool = AttnPillarPool(8, height=4, num_heads=2).eval()
    feats = -torch.rand(3, 8) - 0.1
    idx = torch.tensor([[0, 0, 1, 1], [0, 2, 1, 1], [1, 3, 0, 0]])
    with torch.no_grad():
        pool.self_attn.out_proj.weight.zero_()
        pool.self_attn.out_proj.bias.zero_()
        out, pillars = pool(feats, idx)
    assert pillars.tolist() == [[0, 1, 1], [1, 0, 0]]
    torch.testing.assert_close(out, pool.norm(torch.zeros(2, 8)))


def test_pillar_attention_equals_multihead_attention():
    """The written-out single-query attention is nn.MultiheadAttention with the key padding mask."""
    torch.manual_seed(0)
    pool = AttnPillarPool(16, height=5, num_heads=4).train()
    query, key, value = torch.randn(7, 16), torch.randn(7, 5, 16), torch.randn(7, 5, 16)
    present = torch.rand(7, 5) > 0.4
    present[:, 2] = True
    ref = pool.self_attn(query[:, None], key, value, key_padding_mask=~present, need_weights=False)[0][:, 0]
    torch.testing.assert_close(pool._attend(query, key, value, present), ref, atol=1e-6, rtol=1e-5)


def _dense(features, indices, shape):
    dense = features.new_zeros(1, features.shape[1], *shape)
    i = indices.long()
    dense[0, :, i[:, 1], i[:, 2], i[:, 3]] = features.t()
    return dense


def _sparse(backend, feats, idx, shape, batch_size):
    if backend == "torch":
        return sp.SparseTensor(feats, idx, shape, batch_size)
    return sp.sparse_tensor(feats, idx, shape, batch_size)


@pytest.mark.parametrize("backend", ["spconv", "torch"])
@pytest.mark.parametrize("kind", ["subm", "strided", "strided_padded"])
def test_sparse_convolutions_match_dense_conv3d(kind, backend):
    """Both CPU paths (spconv's or PyTorch's index pairs, PyTorch compute) are a dense
    cross-correlation read at the active sites, with spconv's KRSC weight layout
    (out, kz, ky, kx, in); gradients included."""
    g = torch.Generator().manual_seed(0)
    shape = (7, 9, 11)
    idx = torch.unique(torch.stack([torch.randint(0, s, (250,), generator=g) for s in shape], 1), dim=0)
    idx = torch.cat([torch.zeros(len(idx), 1, dtype=torch.long), idx], 1)
    feats = torch.randn(len(idx), 5, generator=g, requires_grad=True)
    if kind == "subm":
        conv = sp.SubMConv3d(5, 6, 3, padding=1, bias=True, indice_key="k")
        stride, padding = 1, 1
    elif kind == "strided":
        conv = sp.SparseConv3d(5, 6, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=True)
        stride, padding = (2, 1, 1), 0
    else:
        conv = sp.SparseConv3d(5, 6, 3, stride=2, padding=1, bias=True)
        stride, padding = 2, 1
    with torch.no_grad():
        conv.bias.normal_()
    for training in (True, False):
        conv.train(training)
        out = conv(_sparse(backend, feats, idx, shape, 1))
        weight = conv.weight.permute(0, 4, 1, 2, 3)  # KRSC -> (out, in, kz, ky, kx)
        ref = torch.nn.functional.conv3d(_dense(feats, idx, shape), weight, conv.bias, stride=stride, padding=padding)
        o = out.indices.long()
        assert list(out.spatial_shape) == list(ref.shape[2:])
        ref_rows = ref[0][:, o[:, 1], o[:, 2], o[:, 3]].t()
        torch.testing.assert_close(out.features, ref_rows, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.features.square().sum(), (feats, conv.weight))
    ref_grads = torch.autograd.grad(ref_rows.square().sum(), (feats, conv.weight))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    if kind == "subm":
        assert torch.equal(out.indices.long(), idx)
        return
    # the active outputs are exactly the sites whose receptive field holds an input voxel
    occupancy = torch.nn.functional.conv3d(_dense(torch.ones(len(idx), 1), idx, shape),
                                           torch.ones(1, 1, *weight.shape[2:]), stride=stride, padding=padding)
    assert len(out.indices) == int((occupancy > 0).sum())


@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 1, 13), (1, 13, 1)])
def test_depthwise_convolution_follows_spconv_pair_convention(kernel):
    """The CWI depth-wise convolution (official: dw_spconv on spconv's pair table) equals an spconv
    submanifold convolution whose weight is diagonal in the channels."""
    from visionattn.models.detection3d.scatterformer_backbone import SparseDepthwiseConv
    from visionattn.ops.sparse_depthwise_conv import submanifold_pairs

    g = torch.Generator().manual_seed(1)
    shape = (6, 20, 20)
    idx = torch.unique(torch.stack([torch.randint(0, 2, (400,), generator=g)] +
                                   [torch.randint(0, s, (400,), generator=g) for s in shape], 1), dim=0)
    feats = torch.randn(len(idx), 4, generator=g)
    dw = SparseDepthwiseConv(4, kernel)
    conv = sp.SubMConv3d(4, 4, kernel, padding=[k // 2 for k in kernel], bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(4):
            conv.weight[c, ..., c] = dw.weight[..., c]
        ref = conv(sp.sparse_tensor(feats, idx, shape, 2)).features
        out = dw(feats, submanifold_pairs(idx, shape, kernel))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_backend_choice(monkeypatch):
    assert sp.backend_for("cpu") == "spconv"
    assert sp.backend_for("cuda") == "torch"
    assert {"spconv", "torch"} <= set(sp.available_backends())
    monkeypatch.setenv("VISIONATTN_SPARSE_BACKEND", "torch")
    assert sp.backend_for("cpu") == "torch"
    assert isinstance(sp.sparse_tensor(torch.zeros(1, 2), torch.zeros(1, 4, dtype=torch.int32), (3, 3, 3), 1),
                      sp.SparseTensor)
    monkeypatch.setenv("VISIONATTN_SPARSE_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="not a sparse backend"):
        sp.backend_for("cpu")


def test_library_convolutions_get_the_autocast_precision(monkeypatch):
    """Under autocast a library's convolution (spconv, spconv-triton) gets its weights in the features'
    precision, as a dense convolution does; spconv-triton's kernels take one dtype only."""
    conv = sp.SubMConv3d(4, 8, 3, bias=True, indice_key="a")
    seen = []

    class Library:
        def _conv_forward(self, training, x, weight, bias):
            seen.append((weight.dtype, bias.dtype))
            return x

    monkeypatch.setattr(sp, "_backend_of", lambda x: "spconv_triton")
    monkeypatch.setattr(conv, "_impl", lambda name: Library())
    monkeypatch.setattr(sp, "_NOTICED", [])
    x = sp.SparseTensor(torch.zeros(3, 4, dtype=torch.bfloat16), torch.zeros(3, 4, dtype=torch.int32), (3, 3, 3), 1)
    # spconv-triton autotunes silently for a minute at first use: said once per process
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.warns(UserWarning, match="autotunes its kernels"):
        conv(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conv(x)  # outside autocast the parameters go as they are; no second notice
    assert seen == [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)]


def test_torch_pairs_equal_spconv_pairs():
    """The PyTorch pair generation finds spconv's pairs: the same output sites and, per output site
    and kernel offset, the same input voxel (strided convolutions order their outputs differently)."""
    g = torch.Generator().manual_seed(3)
    shape = (9, 12, 10)
    idx = torch.unique(torch.stack([torch.randint(0, 2, (500,), generator=g)] +
                                   [torch.randint(0, s, (500,), generator=g) for s in shape], 1), dim=0).int()
    feats = torch.randn(len(idx), 2, generator=g)
    for conv in (sp.SubMConv3d(2, 2, 3, padding=1, indice_key="a"), sp.SubMConv3d(2, 2, (1, 1, 5), padding=(0, 0, 2)),
                 sp.SparseConv3d(2, 2, (3, 1, 1), stride=(2, 1, 1)), sp.SparseConv3d(2, 2, 3, stride=2, padding=1)):
        ours = sp.neighbour_table(conv, sp.SparseTensor(feats, idx, shape, 2))
        theirs = sp._spconv_pairs(conv, sp.sparse_tensor(feats, idx, shape, 2))
        assert ours[1] == [int(s) for s in theirs[1]]

        def by_site(result):
            indices, _, pairs = result
            sites = [tuple(r) for r in indices.tolist()]
            return {(sites[o], k): i for k, (os_, is_) in enumerate(pairs) for o, i in zip(os_.tolist(), is_.tolist())}

        assert by_site(ours) == by_site(theirs)


# --- decoding ---------------------------------------------------------------------------------------

def _peak_maps(H=12, W=12, cells=((5, 7, 1, 2.0, 0.6, 0.3),)):
    """Raw maps with heatmap logits -10 except at (y, x, class, logit, raw iou, x offset) peaks."""
    maps = {"hm": torch.full((1, 3, H, W), -10.0), "center": torch.zeros(1, 2, H, W), "center_z": torch.zeros(1, 1, H, W),
            "dim": torch.zeros(1, 3, H, W), "rot": torch.zeros(1, 2, H, W), "iou": torch.zeros(1, 1, H, W)}
    maps["rot"][:, 0] = 1.0
    for y, x, c, logit, iou, dx in cells:
        maps["hm"][0, c, y, x] = logit
        maps["center"][0, :, y, x] = torch.tensor([dx, 0.6])
        maps["center_z"][0, 0, y, x] = 1.0
        maps["dim"][0, :, y, x] = torch.tensor([4.0, 2.0, 1.5]).log()
        maps["rot"][0, :, y, x] = torch.tensor([math.cos(0.5), math.sin(0.5)])
        maps["iou"][0, 0, y, x] = iou
    return maps


def test_decoding_boxes_and_iou_rectified_scores(small_model):
    dets = small_model.decoder([_peak_maps()])
    assert dets[0]["boxes"].shape == (1, 7)
    x0, y0 = SMALL["point_cloud_range"][:2]  # cell (y 5, x 7) + offset (0.3, 0.6), 2 voxels of 0.32 m per cell
    expected = torch.tensor([(7 + 0.3) * 2 * 0.32 + x0, (5 + 0.6) * 2 * 0.32 + y0, 1.0, 4.0, 2.0, 1.5, 0.5])
    torch.testing.assert_close(dets[0]["boxes"][0], expected, atol=1e-5, rtol=1e-5)
    a = SMALL["iou_rectifier"][1]
    score = torch.sigmoid(torch.tensor(2.0)) ** (1 - a) * torch.tensor((0.6 + 1) / 2) ** a
    torch.testing.assert_close(dets[0]["scores"][0], score)
    assert dets[0]["labels"].tolist() == [1]


def test_decoding_suppresses_duplicates_per_class(small_model):
    # the same box twice as class 0 (from two cells: the weaker one is removed), once as class 2 (kept:
    # NMS is per class), and a class-0 box 2.56 m to the side (small overlap: kept)
    maps = _peak_maps(cells=((5, 7, 0, 2.0, 0.6, 0.3), (5, 8, 0, 1.5, 0.6, -0.7), (5, 8, 2, 1.0, 0.6, -0.7),
                             (9, 7, 0, 1.0, 0.6, 0.3)))
    dets = small_model.decoder([maps])[0]
    assert sorted(dets["labels"].tolist()) == [0, 0, 2]
    scores = dets["scores"][dets["labels"] == 0]
    assert scores.shape == (2,) and torch.isclose(scores.max(), small_model.decoder([_peak_maps(
        cells=((5, 7, 0, 2.0, 0.6, 0.3),))])[0]["scores"][0])


# --- official checkpoints ---------------------------------------------------------------------------

def _official_listing():
    rows = []
    for line in (DATA / "reference_keys" / "scatterformer_waymo.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def _official_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked")
                else torch.randn(s, generator=g)) for k, s in _official_listing()}


def test_official_listing_is_our_layout():
    with torch.device("meta"):
        model = visionattn.create_model("scatterformer_waymo")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    listing = dict(_official_listing())
    assert listing.pop("global_step") == (1,)
    assert listing == ours


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    state = _official_state()
    path = tmp_path_factory.mktemp("sf") / "scatterformer_waymo_official.pth"
    container = {"epoch": 30, "it": 12345, "model_state": {f"module.{k}": v for k, v in state.items()},
                 "optimizer_state": {"state": {}, "param_groups": []}, "version": "pcdet+0.6.0+a23f434"}
    torch.save(container, path, _use_new_zipfile_serialization=False)  # OpenPCDet's legacy serialisation
    return path, state


def test_official_checkpoint_loads_strictly(official_file):
    path, state = official_file
    model = visionattn.create_model("scatterformer_waymo", checkpoint=str(path))
    ours = model.state_dict()
    for key in ("backbone_3d.cpe.0.0.weight", "backbone_3d.stage2.0.cffn_layers.2.conv_w.weight",
                "backbone_3d.app.self_attn.in_proj_weight", "dense_head.heads_list.0.hm.1.bias"):
        assert torch.equal(ours[key], state[key])


def _tool(name):
    """The program behind ``tools/<name>.py`` (those files only run ``visionattn.cli.<name>``)."""
    return importlib.import_module(f"visionattn.cli.{name}")


def test_benchmark_keeps_points_float32_and_counts_frames():
    benchmark = _tool("benchmark")
    (points,) = benchmark.model_inputs("scatterformer_waymo", None, 2, {"points": 100}, "cpu", torch.bfloat16)
    assert points.dtype == torch.float32 and points.shape == (200, 6)
    info = benchmark._network_info("scatterformer_waymo")
    assert info["samples_in"](points) == 2 and info["throughput_unit"] == "frames/s"


def test_convert_checkpoint_tool(official_file, tmp_path):
    convert_checkpoint = _tool("convert_checkpoint")
    path, state = official_file
    out = tmp_path / "converted.pth"
    assert convert_checkpoint.main(["scatterformer_waymo", str(path), str(out)]) == 0
    model = visionattn.create_model("scatterformer_waymo", checkpoint=str(out))
    assert torch.equal(model.state_dict()["vfe.pfn_layers.0.linear.weight"], state["vfe.pfn_layers.0.linear.weight"])


@pytest.mark.parametrize("damage, named", [
    ("missing", "backbone_3d.stage1.0.cffn_layers.1.conv_h.weight"),
    ("unexpected", "backbone_3d.stage3.0.attn_layers.0.qkv.weight"),
    ("shape", "backbone_3d.stage1.0.cffn_layers.0.conv_k.weight"),
])
def test_official_checkpoint_errors_name_the_key(damage, named):
    state = _official_state(seed=1)
    if damage == "missing":
        del state[named]
    elif damage == "unexpected":
        state[named] = torch.zeros(384, 128)
    else:
        state[named] = torch.zeros(27, 32)
    with torch.device("meta"):
        model = visionattn.create_model("scatterformer_waymo")
    with pytest.raises(RuntimeError, match=named.replace(".", r"\.")):
        hub.load_checkpoint(model, {"model_state": state, "epoch": 1}, family="scatterformer")


# --- GPU ----------------------------------------------------------------------------------------------

GPU_BACKENDS = pytest.mark.parametrize("backend", ["torch", "spconv_triton"])


def _on_gpu_backend(backend, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if backend not in sp.available_backends():
        pytest.skip(f"{backend} is not installed")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convolutions, sparse and dense


# Two tests, so that a backend that autotunes at first use (spconv_triton: a minute or more per set of
# layer shapes on a fresh machine) can be checked convolution first, network second, in calls of their own.
@pytest.mark.cuda
@GPU_BACKENDS
def test_gpu_backend_convolutions_match_the_cpu_path(backend, monkeypatch):
    """A GPU backend's sparse convolutions (submanifold with bias, strided) against our CPU path, per
    output coordinate."""
    _on_gpu_backend(backend, monkeypatch)
    g = torch.Generator().manual_seed(0)
    shape = (17, 40, 40)
    idx = torch.unique(torch.stack([torch.randint(0, 2, (3000,), generator=g)] +
                                   [torch.randint(0, s, (3000,), generator=g) for s in shape], 1), dim=0)
    feats = torch.randn(len(idx), 16, generator=g)
    for conv in (sp.SubMConv3d(16, 32, 3, padding=1, bias=True, indice_key="a"),
                 sp.SparseConv3d(16, 32, 3, stride=2, padding=1, bias=False)):
        conv.eval()
        cpu = conv(sp.sparse_tensor(feats, idx, shape, 2))
        monkeypatch.setenv("VISIONATTN_SPARSE_BACKEND", backend)
        gpu = conv.cuda()(sp.sparse_tensor(feats.cuda(), idx.cuda(), shape, 2))
        monkeypatch.delenv("VISIONATTN_SPARSE_BACKEND")
        key = lambda t: {tuple(r): i for i, r in enumerate(t.indices.cpu().tolist())}  # noqa: E731
        kc, kg = key(cpu), key(gpu)
        assert set(kc) == set(kg)
        rows = list(kc)
        torch.testing.assert_close(gpu.features.cpu()[[kg[r] for r in rows]], cpu.features[[kc[r] for r in rows]],
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
@GPU_BACKENDS
def test_gpu_backend_network_matches_the_cpu_path(backend, monkeypatch):
    """The whole network's maps and detections on a GPU backend against our CPU path."""
    _on_gpu_backend(backend, monkeypatch)
    torch.manual_seed(0)
    model = sf.ScatterFormer(**SMALL).eval()
    points = cloud(3000, batch_size=2)
    with torch.no_grad():
        ref = model(points)[0]
        monkeypatch.setenv("VISIONATTN_SPARSE_BACKEND", backend)
        out = model.cuda()(points.cuda())[0]
        dets = predict_boxes_3d(model, points.cuda())
    for k in ref:
        torch.testing.assert_close(out[k].cpu(), ref[k], atol=2e-3, rtol=1e-3)
    assert len(dets) == 2 and dets[0]["boxes"].is_cuda


def test_cuda_graph_needs_cuda_inference():
    model = sf.ScatterFormer(**SMALL)
    with pytest.raises(ValueError, match="CUDA device"), torch.no_grad():
        model.eval()(cloud(), cuda_graph=True)
    with pytest.raises(ValueError, match="CUDA device"):
        predict_boxes_3d(model, cloud(), cuda_graph=True)


def test_padded_row_counts():
    """Graph sizes: at least N rows, at most 12.5 % (or 255 rows) more, multiples of 256, non-decreasing."""
    sizes = [padded_rows(n) for n in range(1, 300000, 397)]
    for n, m in zip(range(1, 300000, 397), sizes):
        assert n <= m <= n + max(n // 8, 255) and m % 256 == 0
    assert sizes == sorted(sizes) and len({padded_rows(n) for n in range(2**16 + 1, 2**17 + 1)}) == 8


def test_padding_rows_changes_no_real_row(small_model, monkeypatch):
    """What the CUDA graphs of the voxel part run: the CPE's submanifold part and a stage's layers on
    inputs padded with rows that no real row sees (zero features, no neighbours, their own window)
    give the real rows' unpadded results."""
    monkeypatch.setenv("VISIONATTN_SPARSE_BACKEND", "torch")
    backbone = small_model.backbone_3d
    with torch.no_grad():
        feats, coords = small_model.vfe(cloud(batch_size=2))
        x = sp.sparse_tensor(feats, coords, backbone.sparse_shape, 2)
        n = feats.shape[0]
        n_pad = padded_rows(n) + 37  # any padding, also one that is not a bucket
        tables = sp.submanifold_tables(backbone.cpe.submanifold_part(), x)
        stem = backbone.cpe.submanifold_part()(x).features
        padded = backbone.cpe.stem(x.spatial_shape, *pad_rows(n_pad, [x.features, x.indices], tables))
        torch.testing.assert_close(padded[:n], stem, atol=1e-5, rtol=1e-5)
        x = backbone.cpe(x)
        block = backbone.stage1[0]
        g = block.group(x)
        feats = x.features[g.perm]
        m = feats.shape[0]
        want = block.layers(feats, g.offsets, *g.tables)
        got = block.layers(*pad_rows(m + 300, [feats], g.tables, g.offsets))
        assert got.shape == (m + 300, feats.shape[1]) and torch.isfinite(got).all()
        torch.testing.assert_close(got[:m], want, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
def test_cuda_graph_replays_with_live_weights(monkeypatch):
    """``cuda_graph=True``: the same maps as eager, refused in training, and the captured graphs (the
    dense part, the CPE's submanifold part, each stage's layers) follow ``load_state_dict`` (in-place
    weights), another voxel count (replayed from the padded size's graph) and a batch-size change.
    TF32 off and a tolerance of 2e-3: cuDNN may pick other convolution algorithms while capturing, and
    the VFE's scatter-mean sums in a varying order; fp32 maps of the random-weight network then differ
    by ~1e-4."""
    from visionattn.cuda_graph import graph_runners

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = sf.ScatterFormer(**SMALL).cuda().eval()
    points = cloud(3000, batch_size=2).cuda()

    def assert_same(got, want):  # relative to each map's scale: the weights scaled below make maps of ~1e6
        for a, b in zip(got, want):
            for k in a:
                torch.testing.assert_close(a[k], b[k], atol=2e-3 * max(1.0, float(b[k].abs().max())), rtol=2e-3)

    with pytest.raises(ValueError, match="inference"):
        model(points, cuda_graph=True)  # grad enabled
    with torch.no_grad():
        first = model(points, cuda_graph=True)
        assert_same(first, model(points))
        assert_same(model(points, cuda_graph=True), model(points))  # replay
        captured = {m: {name: len(runner) for name, runner in graph_runners(m).items()}
                    for m in (model, model.backbone_3d.cpe, model.backbone_3d.stage1[0], model.backbone_3d.stage2[0])}
        assert list(captured.values()) == [{"bev_to_maps/None": 1}, {"stem[33, 24, 24]/None": 1},
                                           {"layers/None": 1}, {"layers/None": 1}]
        fewer = points[points[:, 0] == 0]  # fewer voxels, the same batch size
        fewer = torch.cat([fewer, points[points[:, 0] == 1][:2500]])
        assert_same(model(fewer, cuda_graph=True), model(fewer))
        # new weights in every graph, copied in place: the captured graphs must read them
        scaled = ("backbone_2d.", "dense_head.", "backbone_3d.cpe.1.conv2.weight",
                  "backbone_3d.stage1.0.cffn_layers.2.fc2.weight", "backbone_3d.stage2.0.attn_layers.0.proj.weight")
        state = {k: v * 1.5 if v.is_floating_point() and k.startswith(scaled) else v
                 for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        again = model(points, cuda_graph=True)
        assert_same(again, model(points))
        assert max(float((a[k] - b[k]).abs().max()) for a, b in zip(again, first) for k in a) > 0.1
        one = cloud(2000, batch_size=1).cuda()
        assert_same(model(one, cuda_graph=True), model(one))
        dets = predict_boxes_3d(model, points, cuda_graph=True)
    assert len(dets) == 2 and dets[0]["boxes"].is_cuda
