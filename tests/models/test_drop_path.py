"""Drop path whose per-sample factors the residual add applies: timm's draws, timm's values."""
import pytest
import torch
from timm.layers import DropPath as TimmDropPath

from visionattn.models.drop_path import DropPath, add_dropped_path


def _seeded(fn, seed=3):
    torch.manual_seed(seed)
    return fn()


@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_factors_are_timm_s_draws(scale_by_keep):
    x, branch = torch.randn(16, 5, 4, 3), torch.randn(16, 5, 4, 3)
    ours, timm = DropPath(0.4, scale_by_keep), TimmDropPath(0.4, scale_by_keep)
    expected = _seeded(lambda: x + timm(branch))
    factors = _seeded(lambda: ours.factors(branch))
    assert factors.shape == (16,) and set(factors.tolist()) == {0.0, torch.tensor(1 / 0.6 if scale_by_keep else 1.0).item()}
    assert torch.equal(add_dropped_path(x, branch, factors), expected)  # CPU: timm's multiply, then the add
    assert torch.equal(_seeded(lambda: ours(branch)), _seeded(lambda: timm(branch)))  # forward is timm's


def test_no_factors_when_every_path_is_kept():
    branch = torch.randn(4, 3)
    assert DropPath(0.0).factors(branch) is None
    assert DropPath(0.5).eval().factors(branch) is None
    x = torch.randn(4, 3)
    assert torch.equal(add_dropped_path(x, branch, None), x + branch)


def test_changed_drop_prob_is_used():
    """Schedules that raise drop_prob during training (set on the module) reach the factors."""
    path = DropPath(0.0)
    path.drop_prob = 0.999
    assert path.factors(torch.randn(64, 2)).count_nonzero() < 64


def test_scripts():
    path = torch.jit.script(DropPath(0.5))
    branch = torch.randn(32, 3)
    assert torch.equal(_seeded(lambda: path.factors(branch)), _seeded(lambda: DropPath(0.5).factors(branch)))
    scripted = torch.jit.script(add_dropped_path)
    k = DropPath(0.5).factors(branch)
    assert torch.equal(scripted(branch, branch, k), add_dropped_path(branch, branch, k))


@pytest.mark.cuda
def test_addcmul_on_cuda_within_one_rounding():
    """On CUDA the add is one ``addcmul`` (product and sum rounded once): within a rounding step of
    timm's multiply, then add, in bfloat16."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8, 64, 14, 14, device="cuda", generator=g).bfloat16()
    branch = torch.randn(8, 64, 14, 14, device="cuda", generator=g).bfloat16().requires_grad_()
    factors = (torch.arange(8, device="cuda") % 2).bfloat16() / 0.85
    out = add_dropped_path(x, branch, factors)
    ref = x + branch * factors.view(8, 1, 1, 1)
    torch.testing.assert_close(out, ref, atol=0.02, rtol=0.01)
    (grad,) = torch.autograd.grad(out.float().sum(), branch)
    assert torch.equal(grad, factors.view(8, 1, 1, 1).expand_as(branch))


def test_traced_module_scales_kept_paths():
    """torch.fx keeps the 1 / keep scale (timm's in-place div_ is dead code to FX's dead-code elimination)."""
    path = DropPath(0.5).train()
    graph = torch.fx.symbolic_trace(path)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    branch = torch.randn(32, 3)
    assert torch.equal(_seeded(lambda: graph(branch)), _seeded(lambda: TimmDropPath(0.5)(branch)))
