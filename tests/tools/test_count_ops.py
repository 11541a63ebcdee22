"""tools/count_ops.py: aten-op / activation-pass counts of one CPU forward (the FFNet deploy-path proxy)."""
import copy

import torch
import torch.nn as nn

from visionattn.models.backbones.ffnet import FFNet, PointwiseConv

TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), ffn_kernels=(3, 7, 3, 7), token_kernels1=(3, 3, 7, 7),
            token_kernels2=(3, 7, 5, 7), stem_chs=8, layer_scale_init_value=0.5, num_classes=10)


def test_counts_a_biased_conv_as_two_passes_and_views_as_none(load_tool):
    count_ops = load_tool("count_ops").count_ops
    res = count_ops(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Flatten()), torch.randn(1, 3, 8, 8))
    assert res["ops"]["aten::conv2d"] == 1 and res["ops"]["aten::gelu"] == 1
    assert res["biased_convs"] == 1 and res["passes"] == 3  # conv + its bias kernel + gelu; flatten is a view


def test_ffnet_deploy_path_leaves_only_the_token_mixer_and_stem_biases(load_tool):
    count_ops = load_tool("count_ops").count_ops
    fused = FFNet(**TINY).eval().fuse().to(memory_format=torch.channels_last)
    plain = copy.deepcopy(fused)  # the same fused graph with every 1x1 conv run by cuDNN-style conv2d
    for module in list(plain.modules()):
        for name, child in module.named_children():
            if isinstance(child, PointwiseConv):
                conv = nn.Conv2d(child.in_channels, child.out_channels, 1)
                conv.load_state_dict(child.state_dict())
                setattr(module, name, conv)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    fast, slow = count_ops(fused, x), count_ops(plain, x)
    blocks = sum(TINY["depths"])
    assert slow["biased_convs"] == 2 + 2 * 3 + 6 * blocks  # stem, patch merging, 6 per block
    assert fast["biased_convs"] == 2 + 2 * blocks  # stem + the token mixer's two depthwise convs
    # the blocks' first two 1x1 convs and the classifier; each block's last 1x1 conv adds its residual
    # in place (addmm_), which removes the residual add
    assert fast["ops"]["aten::linear"] == 2 * blocks + 1 and "aten::add" not in fast["ops"]
    # patch merging (channel multiplier 2): a depthwise conv and a GEMM per multiplier index
    assert fast["ops"]["aten::addmm"] == 3 and fast["ops"]["aten::addmm_"] == 3 + blocks
    # each removed bias kernel is one pass fewer, and each removed residual add; each patch merging runs
    # one conv and one GEMM more (over maps of half its output's channels: they replace cuDNN's NCHW
    # round trip around its multiplier conv, which this CPU count does not see)
    assert slow["passes"] - fast["passes"] == (slow["biased_convs"] - fast["biased_convs"]) + blocks - 2 * 3
