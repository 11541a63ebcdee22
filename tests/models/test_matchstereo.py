"""MatchStereo / MatchFlow: layout, official checkpoint conversion, forward contract.

Any-size inference, range checks and CUDA-graph replay: tests/test_inference.py."""
import re
from pathlib import Path

import pytest
import torch
import yaml

import visionattn
from visionattn.hub import load_checkpoint
from visionattn.models.stereo import matchstereo as ms

COUNTS = yaml.safe_load((Path(__file__).parents[1] / "data/param_counts/matchstereo.yaml").read_text())


def _official_listing(variant):
    """(key, shape) of the official state dict (listing of the reference commit, in tests/data)."""
    path = Path(__file__).parents[1] / "data" / "matchstereo_keys" / f"matchstereo_{variant}.txt"
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in re.findall(r"\d+", shape))))
    return rows


def _small_model(task="stereo", **kw):
    """A narrow 4-level model with one layer per level: same code paths, fast on CPU."""
    return ms.MatchStereo((8, 16, 16, 24), task=task, depths=(1, 1, 1, 1), num_layers=(1, 1, 1, 1),
                          num_heads=(2, 2, 2, 2), **kw)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_param_counts_ours_and_official(name):
    with torch.device("meta"):  # shapes only: building base for real takes long on a busy CPU
        model = visionattn.create_model(name)
    variant = name.split("_")[1]
    assert sum(p.numel() for p in model.parameters()) == COUNTS[name]
    assert ms.official_param_count(model) == ms.OFFICIAL_PARAM_COUNTS[variant]
    listing = _official_listing(variant)
    assert sum(torch.Size(s).numel() for _, s in listing) == ms.OFFICIAL_PARAM_COUNTS[variant]


@pytest.mark.parametrize("variant", ["small", "base"])
def test_official_layout_converts_strictly(variant):
    with torch.device("meta"):
        model = visionattn.create_model(f"matchstereo_{variant}")
    official = {k: torch.empty(s, device="meta") for k, s in _official_listing(variant)}
    converted = ms.convert_official({"model": official}, model)
    ours = model.state_dict()
    assert set(converted) == set(ours)
    assert all(converted[k].shape == ours[k].shape for k in ours)
    assert len(official) - len(converted) == 2 + 2 * 8  # head weight/bias + res_scale1/2 of 8 blocks


def test_official_checkpoint_loads_strictly():
    model = visionattn.create_model("matchstereo_tiny")
    g = torch.Generator().manual_seed(0)
    official = {k: torch.randn(s, generator=g) for k, s in _official_listing("tiny")}
    load_checkpoint(model, {"model": official}, family="matchstereo")
    ours = model.state_dict()
    dropped = {k for k in official if k not in ours}
    assert all(k.startswith("encoder.head.") or ".res_scale" in k for k in dropped) and dropped
    for key, value in ours.items():
        assert torch.equal(value, official[key]), key


def test_converter_rejects_mismatches():
    with torch.device("meta"):
        model = visionattn.create_model("matchstereo_tiny")
    official = {k: torch.empty(s, device="meta") for k, s in _official_listing("tiny")}
    extra = dict(official, **{"decoder.unknown.weight": torch.empty(1, device="meta")})
    with pytest.raises(RuntimeError, match="unexpected"):
        ms.convert_official({"model": extra}, model)
    missing = {k: v for k, v in official.items() if not k.startswith("init_correlation_volume.q")}
    with pytest.raises(RuntimeError, match="missing"):
        ms.convert_official({"model": missing}, model)
    small = {k: torch.empty(s, device="meta") for k, s in _official_listing("small")}
    with pytest.raises(RuntimeError, match="shapes|variant"):
        ms.convert_official({"model": small}, model)


def test_forward_outputs():
    torch.manual_seed(0)
    model = _small_model().eval()
    left = torch.rand(2, 3, 192, 224) * 255
    right = left.roll(-3, dims=-1)
    out = model(left, right)
    assert out["disparity"].shape == (2, 1, 192, 224) and out["disparity_right"].shape == (2, 1, 192, 224)
    assert (out["disparity"] >= 0).all()
    assert out["field"].shape == (4, 2, 192, 224)
    assert out["consistency"].shape == (2, 1, 192, 224) and out["consistency"].dtype == torch.bool
    assert out["field_up"].shape == (4, 192, 224, 2)
    assert out["init_field"].shape == (4, 6, 7, 2) and out["init_cost_volume"].shape == (4, 7, 6, 7)
    assert len(out["fields"]) == 3 + 2 * 4
    # stereo fields are horizontal: the vertical channel is zero everywhere
    assert all(f[..., 1].abs().max() == 0 for f in out["fields"]) and out["field"][:, 1].abs().max() == 0
    torch.testing.assert_close(out["field"], out["field_up"].permute(0, 3, 1, 2))
    torch.testing.assert_close(out["disparity"], (-out["field"][:2, :1]).clamp(min=0))
    # uint8 input gives the same result as float input
    u8 = (left[:1] * 0 + 128).to(torch.uint8)
    torch.testing.assert_close(model(u8, u8)["field"], model(u8.float(), u8.float())["field"])


def test_initial_disparity_finds_a_global_shift():
    """The 1/32 global correlation is exact for a feature map shifted by whole columns."""
    corr = ms.GlobalCorrelation(16)
    with torch.no_grad():
        corr.q.weight.copy_(torch.eye(16) * 8)
        corr.k.weight.copy_(torch.eye(16) * 8)
    feats = torch.randn(1, 6, 12, 16)
    right = feats.roll(-3, dims=2)  # right[x] = left[x + 3]: disparity 3 for the left view
    field, cv = corr(torch.cat((feats, right), 0), stereo=True)
    assert cv.shape == (2, 12, 6, 12)
    torch.testing.assert_close(field[0, :, 3:9, 0], torch.full((6, 6), -3.0), atol=0.05, rtol=0)


def test_flow_model_and_training_gradients():
    torch.manual_seed(0)
    model = _small_model(task="flow").train()
    a = torch.rand(1, 3, 192, 192) * 255
    out = model(a, a.roll(2, dims=-1))
    assert out["flow"].shape == (1, 2, 192, 192) and "disparity" not in out
    loss = out["field_up"].abs().mean() + sum(f.abs().mean() for f in out["fields"]) + out["init_field"].abs().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    # the initial field comes out of an argmax + window expectation, so q/k get gradients only
    # through the probabilities; everything else must receive gradients
    assert not [n for n in no_grad if not n.startswith("init_correlation_volume")], no_grad


def test_forward_takes_only_its_input_contract():
    """Shapes are checked in forward (no host sync); any size and value checks are visionattn.inference's."""
    model = _small_model().eval()
    img = torch.rand(1, 3, 192, 192) * 255
    with pytest.raises(ValueError, match="RGB"):
        model(img[:, :2], img[:, :2])
    with pytest.raises(ValueError, match="differ"):
        model(img, img[..., :160])
    for bad in (img[..., :100], img[..., :160, :]):  # not a multiple of 32 / below 192
        with pytest.raises(ValueError, match="predict_stereo"):
            model(bad, bad)


def test_registered_for_create_model():
    for name in ("matchstereo_tiny", "matchstereo_small", "matchstereo_base", "matchflow_base"):
        assert name in visionattn.list_models("match*")
        assert visionattn.registry.NETWORKS[name].family == "matchstereo"
    left, right = visionattn.registry.NETWORKS["matchstereo_tiny"].example_inputs(1)
    assert left.shape == right.shape and left.shape[-2] >= 192


def _pair(h=192, w=256, shift=6, device="cuda"):
    g = torch.Generator().manual_seed(0)
    left = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=g), (h, w), mode="bilinear") * 255
    return left.to(device), left.roll(-shift, dims=-1).to(device)


def _passing_all_checks(model):
    """The layers' consistency thresholds raised so that every pixel passes: the mask is a step of
    the field, so two paths that differ by rounding flip the pixels lying at the threshold, and a
    randomly initialised network turns one flipped input channel into a visible field change. With
    a constant mask the comparison sees the paths themselves (the check's kernel has its own tests)."""
    for block in model.match_attentions:
        for layer in block.layers:
            layer.consistency_threshold = 1e9
    return model


def _compare_fields(a, b, median, largest):
    for key in ("field_up", "self_rpos", "init_field"):
        diff = (a[key] - b[key]).abs()
        assert diff.median() <= median and diff.max() <= largest, (key, diff.median().item(), diff.max().item())
    for x, y in zip(a["fields"], b["fields"]):
        assert (x - y).abs().max() <= largest


@pytest.mark.cuda
def test_cuda_triton_path_matches_reference():
    from visionattn.ops.dispatch import use_impl

    torch.manual_seed(0)
    model = _passing_all_checks(visionattn.create_model("matchstereo_tiny").cuda().eval())
    left, right = _pair()
    with torch.no_grad():
        fast = model(left, right)
        with use_impl("reference"):
            ref = model(left, right)
    _compare_fields(fast, ref, 1e-4, 0.05)


def test_cross_attention_inference_buffer_matches_the_autograd_path():
    """Without autograd the gated cross attention writes [gated output, weights] into one buffer read by
    the projection; with it, the same values come from the gate and a concatenation."""
    torch.manual_seed(0)
    attention = ms.MatchAttention(20, 22, radius=1, num_heads=2, head_dim=8, cross=True)
    B, H, W = 2, 6, 7
    x = torch.nn.functional.pad(torch.randn(B, H, W, 20), (0, 4))  # zero-padded past dim, as norm_aligned writes
    grid = ms.pixel_grid(H, W, x).view(1, H * W, 1, 2)
    centers = (grid + 2 * torch.randn(B, H * W, 1, 2)).expand(B, H * W, 2, 2)
    with torch.no_grad():
        buffered = attention(x, centers)
    differentiable = attention(x, centers)
    assert differentiable.requires_grad
    torch.testing.assert_close(buffered, differentiable.detach(), atol=1e-6, rtol=1e-6)


def _tiny_with_random_biases(dtype: torch.dtype) -> torch.nn.Module:
    """matchstereo_tiny in eval mode with every bias drawn (the initialisation zeroes them)."""
    model = _passing_all_checks(visionattn.create_model("matchstereo_tiny").eval().to(dtype))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("dtype,median,largest", [(torch.float64, 1e-12, 1e-10), (torch.float32, 1e-5, 1e-3)])
def test_in_place_stream_matches_the_formulas(monkeypatch, dtype, median, largest):
    """Inference on CUDA updates the residual streams in place (each decoder level's stream, the residuals
    added by the projections' and the ConvGLU's GEMMs; the encoder stages' maps, by pwconv2's and fc2's);
    forced here on the CPU, it must give the written formulas."""
    torch.manual_seed(0)
    model = _tiny_with_random_biases(dtype)  # the stream carries the ConvGLU's bias in its GEMM
    left, right = _pair(device="cpu")
    with torch.no_grad():
        written = model(left, right)
        monkeypatch.setattr(ms, "updates_in_place", lambda module, *inputs: True)
        streamed = model(left, right)
    _compare_fields(streamed, written, median, largest)


def test_conv_bias_apart_adds_each_bias_as_the_module_does(monkeypatch):
    """Where channel_bias_act takes its kernel (forced here; its CPU reference runs), the decoder's and
    the encoder's biased convolutions run without bias and add it apart (1x1 convs in the GEMM's
    epilogue): the same values as the modules, for every kind of convolution the network has, and
    through the whole network with random biases. (CUDA takes this path in half precision; float32
    here, so that the comparison is exact enough to catch a lost bias.)"""
    from types import SimpleNamespace

    from visionattn.ops import channel_bias_act as cba

    monkeypatch.setattr(ms, "cba", SimpleNamespace(resolve_impl=lambda *args, **kwargs: "triton",
                                                   channel_bias_act=cba.channel_bias_act))
    monkeypatch.setattr(ms, "BIAS_APART_DTYPES", (torch.float32,))
    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(8, 6, 3, padding=1), torch.nn.Conv2d(8, 6, 3, stride=2, padding=1),
             torch.nn.Conv2d(8, 6, 1), torch.nn.ConvTranspose2d(8, 6, 2, stride=2)]
    x = torch.randn(2, 8, 10, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for conv in convs:
            conv.bias.normal_()
            out = ms.conv_bias_apart(conv, x)
            assert out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out, conv(x), atol=1e-5, rtol=1e-5)
    model = _tiny_with_random_biases(torch.float32)
    left, right = _pair(device="cpu")
    with torch.no_grad():
        apart = model(left, right)
        monkeypatch.setattr(ms, "cba", cba)  # the CPU decides: the modules with their biases
        written = model(left, right)
    _compare_fields(apart, written, 1e-5, 1e-3)


@pytest.mark.cuda
def test_cuda_in_place_stream_matches_the_formulas(monkeypatch):
    """CUDA float32, the same ops: the in-place streams (the default) against the written formulas."""
    torch.manual_seed(0)
    model = _passing_all_checks(visionattn.create_model("matchstereo_tiny").cuda().eval())
    left, right = _pair()
    with torch.no_grad():
        streamed = model(left, right)
        monkeypatch.setattr(ms, "updates_in_place", lambda module, *inputs: False)
        written = model(left, right)
    _compare_fields(streamed, written, 1e-5, 1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_follows_float32(dtype):
    """fp16/bf16 weights: finite, close to fp32 (centres and the pixel grid stay float32)."""
    torch.manual_seed(0)
    model = visionattn.create_model("matchstereo_tiny").cuda().eval()
    left, right = _pair()
    with torch.no_grad():
        ref = model(left, right)["init_field"]
        out = model.to(dtype)(left, right)
    assert out["field_up"].dtype == dtype and torch.isfinite(out["field_up"].float()).all()
    assert out["init_field"].dtype == dtype
    assert (out["init_field"].float() - ref).abs().median() < 1.0


def test_training_checkpoint_loads_into_the_network():
    """tools/train.py checkpoints hold the StereoMatcher's 'network.'-prefixed state dict."""
    trained, fresh = _small_model(), _small_model()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    ckpt = {"meta": {}, "state_dict": {f"network.{k}": v for k, v in trained.state_dict().items()}}
    load_checkpoint(fresh, ckpt, family="matchstereo")
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, trained.state_dict()[k]), k
