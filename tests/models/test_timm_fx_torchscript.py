"""timm's FX feature extraction and TorchScript over one small model per family (timm's full test
suite over our models: tests/timm_contract.py)."""
import pytest
import timm
import torch
from timm.layers import create_feature_extractor, get_graph_node_names
from timm.models import FeatureGraphNet

import visionattn  # noqa: F401

# one small model per family; KDGQA / DGQA / PGQA: the attentions with control flow of their own
SMALL = {
    "biformer_tiny": dict(depths=(1, 1, 1, 1), dims=(32, 64, 128, 256)),
    "ffnet_1": dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), stem_chs=16),
    "vit_small_patch16_224_kdgqa": dict(depth=2, embed_dim=64, num_heads=4, num_kv_heads=2, img_size=64),
    "vit_small_patch16_224_dgqa": dict(depth=2, embed_dim=64, num_heads=4, num_kv_heads=2, img_size=64, window=1),
    "vit_small_patch16_224_pgqa": dict(depth=2, embed_dim=64, num_heads=4, num_kv_heads=2, img_size=64),
}


def _model(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=7, **SMALL[name], **kwargs)


def _x(batch=2):
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["biformer_tiny", "ffnet_1", "vit_small_patch16_224_kdgqa"])
def test_fx_features_match_the_modules_outputs(name):
    model = _model(name).eval()
    indices = tuple(range(len(model.feature_info)))
    extractor = FeatureGraphNet(model, out_indices=indices)  # what features_only + feature_cls='fx' builds
    taps = {}
    for info in model.feature_info:
        model.get_submodule(info["module"]).register_forward_hook(
            lambda m, i, o, key=info["module"]: taps.__setitem__(key, o))
    with torch.no_grad():
        model(_x())
        feats = extractor(_x())
    assert len(feats) == len(indices)
    for info, f in zip(model.feature_info, feats):
        torch.testing.assert_close(f, taps[info["module"]], rtol=0, atol=0)


def test_features_only_fx_builds_through_create_model():
    model = timm.create_model("biformer_tiny", features_only=True, feature_cls="fx", **SMALL["biformer_tiny"]).eval()
    with torch.no_grad():
        feats = model(_x(1))
    assert [f.shape[1] for f in feats] == [32, 64, 128, 256]


@pytest.mark.parametrize("name", list(SMALL))
def test_fx_forward_and_backward(name):
    """timm's test_model_forward_fx / test_model_backward_fx on a small model: the traced graph gives
    the model's output, and in training every parameter gets a gradient through it."""
    model = _model(name).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)  # timm's tracer: its leaf modules and wrapped functions
    graph = create_feature_extractor(model, [eval_nodes[-1]])
    with torch.no_grad():
        torch.testing.assert_close(list(graph(_x()).values())[0], model(_x()), rtol=0, atol=0)
    graph = create_feature_extractor(model, [train_nodes[-1]]).train()
    out = list(graph(_x()).values())[0]
    assert out.shape == (2, 7)
    out.mean().backward()
    missing = [n for n, p in graph.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("name", list(SMALL))
def test_fx_training_graph_drops_paths_like_eager(name):
    """With drop path on, timm's FX graph in training mode gives the eager model's output and gradients
    under the same seed: the kept paths scaled by 1 / keep (an in-place scale would be dead code to FX)."""
    model = _model(name, drop_path_rate=0.5).double().train()
    train_nodes, _ = get_graph_node_names(model)
    graph = create_feature_extractor(model, [train_nodes[-1]]).train()
    graph_params = dict(graph.named_parameters())
    names = [n for n, _ in model.named_parameters()]
    x = _x(8).double()
    results = []
    for fn, params in ((model, [p for _, p in model.named_parameters()]), (graph, [graph_params[n] for n in names])):
        torch.manual_seed(3)
        out = fn(x)
        out = out if torch.is_tensor(out) else list(out.values())[0]
        results.append((out, torch.autograd.grad(out.square().sum(), params)))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for n, eager, traced in zip(names, results[0][1], results[1][1]):
        torch.testing.assert_close(traced, eager, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("name", ["biformer_tiny", "ffnet_1", "vit_small_patch16_224_kdgqa",
                                  "vit_small_patch16_224_dgqa"])
def test_torchscript_matches_eager(name):
    with timm.set_scriptable(True):
        model = _model(name).eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(_x()), model(_x()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["biformer_tiny", "ffnet_1", "vit_small_patch16_224_kdgqa",
                                  "vit_small_patch16_224_dgqa"])
def test_torchscript_trains_like_eager(name):
    """A scripted model's gradients are the eager model's, every parameter's (drop path off: no random
    draws), in float64, which every model takes, so that only a wrong graph can tell them apart."""
    with timm.set_scriptable(True):
        model = _model(name, drop_path_rate=0.0).double().train()
    scripted = torch.jit.script(model)
    params = list(model.parameters())
    x = _x().double()
    grads = [torch.autograd.grad(m(x).square().sum(), params, allow_unused=True) for m in (model, scripted)]
    for (n, _), eager, script in zip(model.named_parameters(), *grads):
        assert (eager is None) == (script is None), n
        if eager is not None:
            assert (script - eager).norm() <= 1e-9 * eager.norm() + 1e-12, n


def test_gqa_attention_takes_attn_mask_like_timm_attention():
    """A bool mask that hides the last key token equals dropping that token's keys (SDPA semantics)."""
    from visionattn.models.backbones.gqa_vit import ATTENTIONS

    torch.manual_seed(0)
    x = torch.randn(2, 5, 32)
    for kind, attn_cls in ATTENTIONS.items():
        attn = attn_cls(32, num_heads=4, num_kv_heads=4 if kind == "mha" else 2).eval()
        mask = torch.ones(5, 5, dtype=torch.bool)
        mask[:, -1] = False
        float_mask = torch.zeros(5, 5).masked_fill(~mask, float("-inf"))
        masked = attn(x, attn_mask=mask)
        torch.testing.assert_close(attn(x, attn_mask=float_mask), masked)
        assert not torch.allclose(masked, attn(x))
        causal = attn(x, is_causal=True)
        torch.testing.assert_close(causal, attn(x, attn_mask=torch.ones(5, 5, dtype=torch.bool).tril()))
        with torch.no_grad():  # the reference path applies the same mask
            attn.attn_impl = "reference"
            torch.testing.assert_close(attn(x, attn_mask=mask), masked, rtol=1e-5, atol=1e-5)
            attn.attn_impl = "auto"


@pytest.mark.parametrize("name", ["biformer_tiny", "ffnet_1", "vit_small_patch16_224_kdgqa", "vit_small_patch16_224_dgqa"])
def test_fx_graph_scripts(name):
    """timm's test_model_forward_fx_torchscript: the FX graph's leaf calls compile under TorchScript."""
    with timm.set_scriptable(True):
        model = _model(name).eval()
    _, eval_nodes = get_graph_node_names(model)
    scripted = torch.jit.script(create_feature_extractor(model, [eval_nodes[-1]]))
    with torch.no_grad():
        torch.testing.assert_close(list(scripted(_x()).values())[0], model(_x()), rtol=1e-5, atol=1e-5)
