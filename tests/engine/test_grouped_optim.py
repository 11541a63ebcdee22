"""GroupedOptimWrapperConstructor: mmengine's paramwise groups merged by setting, same updates."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor

from visionattn.engine.grouped_optim import GroupedOptimWrapperConstructor, merge_param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 8))


CFG = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.05, foreach=False))
PARAMWISE = dict(norm_decay_mult=0.0, bias_decay_mult=0.0, custom_keys={"pos_embed": dict(decay_mult=0.0, lr_mult=2.0)})


def _train(constructor_cls, steps=3):
    torch.manual_seed(0)
    net = Net()
    wrapper = constructor_cls(copy.deepcopy(CFG), copy.deepcopy(PARAMWISE))(net)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(2, 3, 6, 6, generator=gen)
        loss = net.fc(net.norm(net.conv(x)).mean((2, 3)) + net.pos_embed).square().sum()
        wrapper.update_params(loss)
    return net, wrapper


def test_same_updates_fewer_groups():
    net_a, per_tensor = _train(DefaultOptimWrapperConstructor)
    net_b, grouped = _train(GroupedOptimWrapperConstructor)
    assert len(per_tensor.optimizer.param_groups) == len(list(net_a.parameters())) == 7
    groups = grouped.optimizer.param_groups
    # decayed weights; no-decay norms/biases; pos_embed (no decay, 2x lr)
    assert len(groups) == 3
    assert sorted((g["weight_decay"], g["lr"], len(g["params"])) for g in groups) == [
        (0.0, 1e-2, 4), (0.0, 2e-2, 1), (0.05, 1e-2, 2)]
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in net_b.parameters())
    for (name, a), b in zip(net_a.named_parameters(), net_b.parameters()):
        assert torch.equal(a, b), name  # the same arithmetic per parameter, bit for bit


def test_merge_keeps_order_and_distinguishes_settings():
    p = [nn.Parameter(torch.zeros(1)) for _ in range(4)]
    groups = [dict(params=[p[0]], lr=0.1, betas=(0.9, 0.99)), dict(params=[p[1]], lr=0.2, betas=(0.9, 0.99)),
              dict(params=p[2], lr=0.1, betas=(0.9, 0.99)), dict(params=[p[3]], lr=0.1, betas=(0.9, 0.999))]
    merged = merge_param_groups(groups)
    assert [[id(t) for t in g["params"]] for g in merged] == [[id(p[0]), id(p[2])], [id(p[1])], [id(p[3])]]
    assert [g["lr"] for g in merged] == [0.1, 0.2, 0.1]


def test_recipe_builds_few_groups():
    """The ImageNet recipe's paramwise settings give a handful of groups for a whole BiFormer."""
    from visionattn.engine import load_config
    from visionattn.resources import find_config
    from mmengine.optim import build_optim_wrapper
    import visionattn

    cfg = load_config(str(find_config("configs/classification/biformer_s.py")), work_dir="/tmp/unused")
    assert cfg.optim_wrapper.constructor == "GroupedOptimWrapperConstructor"
    net = visionattn.create_model("biformer_tiny", num_classes=10)
    wrapper = build_optim_wrapper(net, cfg.optim_wrapper)
    groups = wrapper.optimizer.param_groups
    assert len(groups) <= 4 < len(list(net.parameters()))
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
