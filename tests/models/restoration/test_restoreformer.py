"""RestoreFormer / RestoreFormer++: official key layout, strict official containers, MHCA direction,
VQ search, shapes. (Side-by-side parity with the official classes needs their code: docs/restoreformer.md.)"""
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import visionattn
from visionattn.hub import load_checkpoint
from visionattn.models.restoration.restoreformer import MultiHeadAttnBlock, RestoreFormer, VectorQuantizer

LISTING = Path(__file__).resolve().parents[2] / "data" / "reference_keys" / "restoreformerpp.txt"
RFPP_ONLY = "decoder.up.4.attn."  # the only structural difference between RF++ and RF
# a small network of the same layout (GroupNorm needs multiples of 32 channels)
SMALL = dict(ch=32, ch_mult=(1, 1, 1, 1, 1, 2), z_channels=32, embed_dim=32, n_embed=64)


def official_listing(variant: str) -> dict:
    """{key without 'vqvae.': shape} of the official state dict (RF = RF++ minus decoder.up.4.attn)."""
    shapes = {}
    for line in LISTING.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        shapes[key[len("vqvae."):]] = tuple(int(s) for s in re.findall(r"\d+", shape))
    if variant == "restoreformer":
        shapes = {k: v for k, v in shapes.items() if not k.startswith(RFPP_ONLY)}
    return shapes


def random_state(shapes: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}


def lightning(state: dict) -> dict:
    """The container of the released .ckpt files (training-only loss modules included)."""
    sd = {f"vqvae.{k}": v for k, v in state.items()}
    sd["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    sd["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(64, 3, 3, 3)
    return {"epoch": 12, "global_step": 240000, "pytorch-lightning_version": "1.0.8", "state_dict": sd,
            "lr_schedulers": [{"milestones": {400000: 1}, "gamma": 0.1}]}


def small(**kw) -> RestoreFormer:
    torch.manual_seed(0)
    return RestoreFormer(**{**SMALL, **kw}).eval()


@pytest.mark.parametrize("name,params,entries", [("restoreformer", 72_680_003, 405),
                                                 ("restoreformerpp", 73_472_579, 441),
                                                 ("restoreformer_rohqd", 72_680_003, 405)])
def test_official_layout_and_parameter_count(name, params, entries):
    with torch.device("meta"):
        model = visionattn.create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = official_listing("restoreformerpp" if name == "restoreformerpp" else "restoreformer")
    assert list(ours) == list(official) and ours == official
    assert sum(p.numel() for p in model.parameters()) == params and len(ours) == entries


def test_lightning_checkpoint_loads_strictly_through_create_model(tmp_path):
    state = random_state(official_listing("restoreformerpp"))
    torch.save(lightning(state), tmp_path / "RestoreFormer++.ckpt")
    model = visionattn.create_model("restoreformerpp", checkpoint=str(tmp_path / "RestoreFormer++.ckpt"))
    assert model.num_heads == 4
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_gfpgan_params_file_loads_and_wrong_variant_names_the_keys(tmp_path):
    state = random_state(official_listing("restoreformer"), seed=1)
    torch.save({"params": state}, tmp_path / "RestoreFormer.pth")
    model = visionattn.create_model("restoreformer", checkpoint=str(tmp_path / "RestoreFormer.pth"))
    assert model.num_heads == 8 and torch.equal(model.quantize.embedding.weight, state["quantize.embedding.weight"])
    # RF weights into the RF++ graph: the official loader (strict=False) leaves 36 tensors random; ours raises
    with pytest.raises(RuntimeError, match=r"missing keys 36 \[decoder\.up\.4\.attn\.0\.norm1\.weight.*"
                                           r"build that model instead") as err:
        visionattn.create_model("restoreformerpp", checkpoint=str(tmp_path / "RestoreFormer.pth"))
    assert "holds weights of restoreformer" in str(err.value)


def test_rfpp_lightning_file_into_rf_names_unexpected_keys():
    model = small(num_heads=8, decoder_attn_resolutions=(16,))
    rfpp = small(num_heads=4, decoder_attn_resolutions=(16, 32))
    with pytest.raises(RuntimeError, match=r"unexpected keys 36 \[decoder\.up\.4\.attn.*restoreformerpp; build that"):
        load_checkpoint(model, lightning(rfpp.state_dict()), family="restoreformer")
    # a key the model does not know is named too (no silent drop besides loss.*)
    bad = lightning(model.state_dict())
    bad["state_dict"]["vqvae.quantize.utility_counter"] = torch.zeros(64)
    with pytest.raises(RuntimeError, match="unexpected keys 1 \\[quantize.utility_counter\\]"):
        load_checkpoint(model, bad, family="restoreformer")


def test_converter_containers_give_identical_models():
    source = small(num_heads=4, decoder_attn_resolutions=(16, 32))
    for container in (lightning(source.state_dict()), {"params": source.state_dict()},
                      {"params": {}, "params_ema": source.state_dict()}, source.state_dict()):
        target = small(num_heads=4, decoder_attn_resolutions=(16, 32))
        torch.nn.init.zeros_(target.quant_conv.weight)
        load_checkpoint(target, container, family="restoreformer")
        for key, value in target.state_dict().items():
            assert torch.equal(value, source.state_dict()[key]), key


def test_stage1_dictionary_checkpoint_into_rohqd(tmp_path):
    state = random_state(official_listing("restoreformer"), seed=2)
    torch.save(lightning(state), tmp_path / "ROHQD.ckpt")
    model = visionattn.create_model("restoreformer_rohqd", checkpoint=str(tmp_path / "ROHQD.ckpt"))
    assert not model.decoder.cross and model.quantize.embedding.weight.requires_grad
    assert torch.equal(model.decoder.up[5].attn[2].q.weight, state["decoder.up.5.attn.2.q.weight"])


def _explicit_block(block: MultiHeadAttnBlock, x, y):
    """x + proj(softmax(Q K^T / sqrt(d)) V), Q from norm2(y), K and V from norm1(x); float64 loop."""
    b, c, h, w = x.shape
    hx, hy = block.norm1(x), block.norm2(y)
    q, k, v = (F.conv2d(t, conv.weight, conv.bias).flatten(2) for t, conv in ((hy, block.q), (hx, block.k), (hx, block.v)))
    d = c // block.num_heads
    out = torch.empty_like(q)
    for head in range(block.num_heads):
        s = slice(head * d, (head + 1) * d)
        attn = torch.softmax(q[:, s].transpose(1, 2) @ k[:, s] / d ** 0.5, dim=-1)  # (B, HW, HW)
        out[:, s] = (attn @ v[:, s].transpose(1, 2)).transpose(1, 2)
    return x + F.conv2d(out.view(b, c, h, w), block.proj_out.weight, block.proj_out.bias)


def test_mhca_queries_from_encoder_keys_values_from_decoder():
    torch.manual_seed(0)
    block = MultiHeadAttnBlock(64, num_heads=4, cross=True).double()
    for p in block.parameters():
        torch.nn.init.normal_(p, 0.3, 0.2)
    x, y = torch.randn(2, 64, 4, 6, dtype=torch.float64), torch.randn(2, 64, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(block(x, y), _explicit_block(block, x, y))
    assert not torch.allclose(block(x, y), block(y, x))
    # self-attention = cross-attention of a map with itself through norm1; its norm2 is frozen (unused)
    self_block = MultiHeadAttnBlock(64, num_heads=4, cross=False)
    assert not self_block.norm2.weight.requires_grad and self_block.q.weight.requires_grad


def test_heads_are_not_in_the_weights():
    a, b = small(num_heads=8), small(num_heads=4)
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max() > 1e-4


def test_vq_nearest_code_and_ties():
    vq = VectorQuantizer(8, 4)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.randn(8, 4))
        vq.embedding.weight[5] = vq.embedding.weight[2]  # a duplicated code: the first one wins
    z = torch.randn(2, 4, 3, 5)
    z[0, :, 0, 0] = vq.embedding.weight[2]
    z_q, loss, idx = vq(z, with_loss=True)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    brute = torch.cdist(flat, vq.embedding.weight).argmin(1).view(2, 3, 5)
    assert torch.equal(idx, brute) and idx[0, 0, 0] == 2
    assert torch.equal(z_q, z + (vq.embedding.weight[idx].permute(0, 3, 1, 2) - z))
    expected = 1.25 * ((vq.embedding.weight[idx].permute(0, 3, 1, 2) - z) ** 2).mean()
    torch.testing.assert_close(loss, expected)


def test_forward_shapes_info_and_input_check():
    model = small()
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        out = model(x)
        out2, info = model(x, return_info=True)
    assert out.shape == x.shape and torch.equal(out, out2)
    assert info["indices"].shape == (2, 2, 3) and info["indices"].dtype == torch.int64
    assert info["vq_loss"].dim() == 0
    assert set(info["features"]) == {"in", "block_0", "block_1", "block_2", "block_3", "block_4", "block_5_atten",
                                     "mid_atten", "out"}
    assert info["features"]["block_4"].shape == (2, 32, 4, 6)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 64, 80))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 64, 64))


def test_training_gradients_and_frozen_codebook():
    model = small().train()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    out, info = model(x, return_info=True)
    (out.mean() + info["vq_loss"]).backward()
    assert model.quantize.embedding.weight.grad is None  # stage 2: dictionary frozen
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # straight-through + MHCA queries
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad
    dictionary = small(cross_attention=False, freeze_codebook=False).train()
    out, info = dictionary(x, return_info=True)
    (out.mean() + info["vq_loss"]).backward()
    assert dictionary.quantize.embedding.weight.grad.abs().sum() > 0


def test_bfloat16_forward_close_to_float32():
    model = small()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ref, ref_info = model(x, return_info=True)
        low, low_info = model.to(torch.bfloat16)(x.to(torch.bfloat16), return_info=True)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    # the code search runs in float32 whatever the dtype: the same codes are picked here
    assert torch.equal(low_info["indices"], ref_info["indices"])
    # bf16 rounding through ~50 layers of a randomly initialised network: a few % of the signal
    assert (low.float() - ref).abs().mean() < 0.2 * ref.abs().mean()


def test_zoo_entries_state_the_heads():
    from visionattn import hub

    expected = {"restoreformerpp.official": ("restoreformerpp", 4), "restoreformer.official": ("restoreformer", 8),
                "restoreformer.gfpgan": ("restoreformer", 8)}
    for name, (model, heads) in expected.items():
        entry = hub.get_entry(name)
        assert (entry.model, entry.kwargs["num_heads"], entry.converter) == (model, heads, "restoreformer")
        assert entry.url.startswith("https://github.com/") and entry.source == "official"
    assert hub.get_entry("restoreformerpp").name == "restoreformerpp.official"


def test_bad_configuration():
    with pytest.raises(ValueError, match="decoder_attn_resolutions.*64"):
        RestoreFormer(decoder_attn_resolutions=(64, 24))
    with pytest.raises(ValueError, match="num_heads=3"):
        small(num_heads=3)


@pytest.mark.cuda
def test_cuda_sdpa_and_bf16_match_fp32_reference():
    """RestoreFormer++ at 512x512 on the GPU: SDPA equals the explicit-softmax reference (fp32, TF32
    off), and bf16 runs with the same codes almost everywhere (random weights amplify bf16 rounding; measure trained weights with tools/benchmark.py)."""
    from visionattn.ops.dispatch import use_impl

    torch.manual_seed(0)
    model = visionattn.create_model("restoreformerpp").cuda().eval()
    x = (torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1).cuda()
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            ref, ref_info = model(x, return_info=True)
            with use_impl("reference"):
                explicit = model(x)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.testing.assert_close(explicit, ref, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        low, low_info = model.to(torch.bfloat16)(x.to(torch.bfloat16), return_info=True)
    assert (low_info["indices"] == ref_info["indices"]).float().mean() > 0.9
    assert (low.float() - ref).abs().mean() < 0.2 * ref.abs().mean()  # random weights: a sanity bound, not the trained-model figure
