"""GQA-variant ViTs on tiny configs: allocation fixes, fast path vs reference, DGQA state, PGQA noise."""
import pytest
import timm
import torch

import visionattn  # noqa: F401  (registers the models)
from visionattn.models.backbones.gqa_vit import (DynamicGQA, KeyDrivenGQA, PerturbedGQA, allocate_queries,
                                                 key_head_norms)
from visionattn.ops.dispatch import use_impl

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)


def tiny(attn, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(f"vit_small_patch16_224_{attn}", **{**TINY, **kwargs})


def images(n=4, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_allocate_queries():
    out = allocate_queries(torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.3, 0.2], [3.0, 1.0, 0.0]]), 12)
    assert out.tolist() == [[10, 1, 1], [5, 4, 3], [8, 3, 1]]
    # no KV head without queries by default; zero allowed when asked
    assert allocate_queries(torch.tensor([1.0, 0.0]), 4, min_queries=0).tolist() == [4, 0]
    # ties, G = 1, zero and non-finite scores: uniform, never NaN
    assert allocate_queries(torch.ones(3), 7).tolist() == [3, 2, 2]
    assert allocate_queries(torch.tensor([5.0]), 6).tolist() == [6]
    assert allocate_queries(torch.zeros(4), 8).tolist() == [2, 2, 2, 2]
    assert allocate_queries(torch.tensor([float("nan"), 1.0]), 4).tolist() == [2, 2]
    with pytest.raises(ValueError, match="min_queries"):
        allocate_queries(torch.ones(5), 4)


@pytest.mark.parametrize("attn", ["mha", "gqa", "kdgqa", "dgqa", "pgqa"])
def test_fast_path_equals_reference(attn):
    kwargs = {} if attn == "mha" else dict(num_kv_heads=2)
    model = tiny(attn, **kwargs).eval()
    x = images()
    with torch.no_grad():
        fast = model(x)
        with use_impl("reference"):
            ref = model(x)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("attn", ["kdgqa", "dgqa"])
def test_cuda_fast_paths_equal_reference(attn):
    """On the GPU: the KDGQA allocation kernel and per-image K/V expansion, DGQA's folded eval path,
    against the reference ops (fp32; training mode too: gradients through the expanded K/V)."""
    model = tiny(attn, num_kv_heads=2, num_heads=8, embed_dim=64).cuda()
    x = images(6).cuda()
    for train in (False, True):
        model.train(train)
        outs = []
        for impl in (None, "reference"):
            model.zero_grad()
            with use_impl(impl):
                out = model(x)
            out.square().mean().backward()
            outs.append((out.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
        torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-4, rtol=1e-3)


def test_kdgqa_eval_independent_of_batch_and_batch_of_one():
    model = tiny("kdgqa", num_kv_heads=2).eval()
    x = images(4)
    with torch.no_grad():
        full = model(x)
        torch.testing.assert_close(model(x[:2]), full[:2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x[3:]), full[3:], atol=1e-5, rtol=1e-5)  # batch of 1
    # faithful: the allocation uses the whole batch (the official behaviour)
    faithful = tiny("kdgqa", num_kv_heads=2, faithful=True).eval()
    faithful.load_state_dict(model.state_dict())
    attn = faithful.blocks[0].attn
    k = attn.split_heads(faithful.blocks[0].norm1(faithful._pos_embed(faithful.patch_embed(x))))[1]
    assert attn.group_sizes(k).shape == (2,)


def test_kdgqa_allocation_follows_key_norms():
    attn = KeyDrivenGQA(16, num_heads=8, num_kv_heads=4)
    k = torch.ones(2, 4, 3, 4)
    k[0, 2] *= 10  # sample 0: KV head 2 has the largest norm
    sizes = attn.group_sizes(k)
    assert sizes.tolist() == [[1, 1, 5, 1], [2, 2, 2, 2]]  # sample 1: tied norms -> uniform
    assert key_head_norms(k).shape == (2, 4)


@pytest.mark.parametrize("attn", ["kdgqa", "dgqa"])
@pytest.mark.parametrize("kv_heads", [1, 4])
def test_single_kv_head_and_g_equals_h(attn, kv_heads):
    model = tiny(attn, num_kv_heads=kv_heads).eval()
    x = images(2)
    with torch.no_grad():
        out = model(x)
    assert torch.isfinite(out).all()
    if kv_heads == 4:  # one query head per KV head: exactly MHA with the same weights
        mha = tiny("mha")
        mha.load_state_dict({k: v for k, v in model.state_dict().items() if k in mha.state_dict()})
        torch.testing.assert_close(out, mha.eval()(x), atol=1e-5, rtol=1e-5)


def test_tied_norms_give_uniform_groups_not_nan():
    for attn_cls in (KeyDrivenGQA, DynamicGQA):
        layer = attn_cls(16, num_heads=4, num_kv_heads=2).train()
        for p in layer.qkv.parameters():
            torch.nn.init.zeros_(p)  # every key head is zero: tied norms
        out = layer(torch.randn(2, 5, 16))
        assert torch.isfinite(out).all()
    assert layer.group_sizes_now.tolist() == [2, 2]
    faithful = KeyDrivenGQA(16, num_heads=4, num_kv_heads=2, faithful=True)
    assert faithful.group_sizes(torch.zeros(1, 2, 3, 4)).tolist() == [2, 2]


def _train_steps(model, steps, seed):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for i in range(steps):
        x = images(2, seed=seed + i)
        loss = model(x).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("mode", ["ema", "diff"])
def test_dgqa_reallocates_in_training_steps_and_state_dict_round_trip(mode):
    model = tiny("dgqa", num_kv_heads=2, dgqa_mode=mode, window=2).train()
    attn = model.blocks[0].attn
    assert attn.group_sizes_now.tolist() == [2, 2] and int(attn.num_steps) == 0
    _train_steps(model, 3, seed=10)
    assert int(attn.num_steps) == 3 and attn.key_norm_stat.abs().sum() > 0
    # mid-training checkpoint -> fresh model: same state, and training continues identically
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert {"blocks.0.attn.key_norm_stat", "blocks.0.attn.group_sizes_now", "blocks.0.attn.num_steps"} <= set(state)
    other = tiny("dgqa", num_kv_heads=2, dgqa_mode=mode, window=2).train()
    other.load_state_dict(state)
    _train_steps(model, 2, seed=20)
    _train_steps(other, 2, seed=20)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_dgqa_window_and_eval_determinism():
    layer = DynamicGQA(24, num_heads=6, num_kv_heads=3, window=3, dgqa_mode="diff").train()
    x = torch.randn(2, 5, 24)
    seen = []
    for _ in range(4):
        layer(x)
        seen.append((layer.group_sizes_now.clone(), layer.key_norm_stat.clone()))
    # updated at steps 0 and 3 only
    assert torch.equal(seen[1][1], seen[0][1]) and torch.equal(seen[2][1], seen[0][1])
    assert (layer.group_sizes_now >= 1).all() and int(layer.group_sizes_now.sum()) == 6
    layer.eval()
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    a, b = layer(x), layer(x)  # the official diff mode gives NaN (and hangs) on a repeated eval batch
    assert torch.equal(a, b) and torch.isfinite(a).all()
    for k, v in layer.state_dict().items():
        assert torch.equal(v, state[k]), f"eval changed {k}"
    # faithful eval is stateful and survives a repeated batch
    faithful = DynamicGQA(24, num_heads=6, num_kv_heads=3, dgqa_mode="diff", faithful=True).eval()
    faithful(x)
    assert torch.isfinite(faithful(x)).all()


def test_dgqa_eval_folds_allocation_into_weights_exactly():
    from visionattn.ops.grouped_query_attention import grouped_query_attention

    layer = DynamicGQA(24, num_heads=6, num_kv_heads=3).eval()
    layer.group_sizes_now.copy_(torch.tensor([0, 2, 4]))  # an empty group too
    x = torch.randn(2, 5, 24)
    q, k, v = layer.split_heads(x)
    expected = grouped_query_attention(q, k, v, layer.group_sizes_now, impl="reference")
    expected = layer.proj(expected.transpose(1, 2).reshape(2, 5, 24))
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)


def test_dgqa_faithful_training_uses_module_counter():
    layer = DynamicGQA(24, num_heads=6, num_kv_heads=3, window=2, faithful=True).train()
    layer(torch.randn(2, 5, 24))  # the official code needs a global set_training_step here
    assert int(layer.num_steps) == 1 and int(layer.group_sizes_now.sum()) == 6


def test_pgqa_noise_only_in_training():
    model = tiny("pgqa", num_kv_heads=2)
    gqa = tiny("gqa", num_kv_heads=2)
    gqa.load_state_dict(model.state_dict())
    x = images(2)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x), model(x))
        torch.testing.assert_close(model(x), gqa.eval()(x))
        model.train()
        assert not torch.allclose(model(x), gqa(x), atol=1e-3)
    layer = PerturbedGQA(16, num_heads=4, num_kv_heads=2, faithful=True).eval()
    y = torch.randn(1, 5, 16)
    assert not torch.allclose(layer(y), layer(y))  # faithful: random in eval too
    # the noise has each row's mean and std: subtracting it leaves rows of mean 0
    out = torch.randn(3, 4, 5, 6)
    rows = layer.perturb(out).reshape(3, 4, -1)
    torch.testing.assert_close(rows.mean(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)


def test_features_only_and_bad_args():
    model = timm.create_model("vit_small_patch16_224_kdgqa", features_only=True, out_indices=(1,),
                              **{k: v for k, v in TINY.items() if k != "num_classes"}, num_kv_heads=2)
    (feat,) = model(images(1))
    assert feat.shape == (1, 32, 4, 4)
    with pytest.raises(ValueError, match="num_kv_heads"):
        tiny("gqa", num_kv_heads=3)
    with pytest.raises(ValueError, match="dgqa_mode"):
        tiny("dgqa", num_kv_heads=2, dgqa_mode="avg")
    with pytest.raises(ValueError, match="num_kv_heads"):
        tiny("mha", num_kv_heads=2)


def test_default_kv_heads():
    for name, g in [("vit_small_patch16_224_kdgqa", 3), ("vit_base_patch16_224_dgqa", 6),
                    ("vit_large_patch16_224_gqa", 4), ("vit_base_patch16_224_mha", 12)]:
        with torch.device("meta"):
            model = timm.create_model(name)
        assert model.blocks[0].attn.num_kv_heads == g, name
