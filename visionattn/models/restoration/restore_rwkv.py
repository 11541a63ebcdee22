"""Restore-RWKV (Yang et al., arXiv 2407.11087 / IEEE JBHI 2026): RWKV blocks with Re-WKV and
Omni-Shift in a Restormer-style 4-level U-Net, for medical image restoration.

Module and parameter names follow the official code so its state dicts map one to one (the
converter only drops derived or unused tensors). The network takes (B, in_chans, H, W) with H, W
multiples of 8; ``visionattn.inference.restore_image`` runs it on any size (reflect padding, cropped
back) and, with ``tile=``, on overlapping tiles blended with linear ramps (bounded memory).
"""
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...hub import extract_state_dict
from ...ops.depthwise_conv2d import depthwise_conv2d
from ...ops.layer_norm import layer_norm
from ...ops.wkv import re_wkv
from ..derived_tensor import DerivedTensor
from ...ops.wkv import IMPLS as WKV_IMPLS
from ...registry import register_converter, register_network
from ..input_contract import check_choice, check_images, check_int, check_ints


class OmniShift(nn.Module):
    """Depth-wise token shift: a0*x + a1*DW1x1(x) + a2*DW3x3(x) + a3*DW5x5(x) on (B, C, H, W).

    In eval mode the four branches are re-parameterised into one DW5x5 kernel. The fused kernel is
    derived data: it is never saved, it is recomputed whenever a parameter changed (tracked by the
    parameters' version counters, so ``load_state_dict``, optimiser steps and ``.to()`` all
    invalidate it), and with autograd enabled it is rebuilt differentiably on every call.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv1x1 = nn.Conv2d(dim, dim, 1, groups=dim, bias=False)
        self.conv3x3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.conv5x5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, bias=False)
        self.alpha = nn.Parameter(torch.randn(4))
        self._fused = DerivedTensor()

    def fused_weight(self) -> torch.Tensor:
        """The equivalent DW5x5 kernel, (C, 1, 5, 5)."""
        a = self.alpha
        identity = F.pad(torch.ones_like(self.conv1x1.weight), (2, 2, 2, 2))
        return (a[0] * identity + a[1] * F.pad(self.conv1x1.weight, (2, 2, 2, 2))
                + a[2] * F.pad(self.conv3x3.weight, (1, 1, 1, 1)) + a[3] * self.conv5x5.weight)

    def _cached_fused_weight(self) -> torch.Tensor:
        params = (self.alpha, self.conv1x1.weight, self.conv3x3.weight, self.conv5x5.weight)
        return self._fused.get(params, self.fused_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            a = self.alpha
            return a[0] * x + a[1] * self.conv1x1(x) + a[2] * self.conv3x3(x) + a[3] * self.conv5x5(x)
        weight = self.fused_weight() if torch.is_grad_enabled() else self._cached_fused_weight()
        return depthwise_conv2d(x, weight)  # Triton on channels_last CUDA maps, else F.conv2d

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # official state dicts carry the derived fused kernel; it is recomputed, never loaded
        state_dict.pop(prefix + "conv5x5_reparam.weight", None)
        self._fused.clear()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SpatialMix(nn.Module):
    """Re-WKV token mixing on (B, T, C): y = W_o(sigmoid(W_r xs) * ReWKV(W_k xs, W_v xs)), xs = OmniShift(x)."""

    def __init__(self, dim: int, recurrence: int = 2, wkv_impl: str = "auto"):
        super().__init__()
        self.wkv_impl = wkv_impl
        self.omni_shift = OmniShift(dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)
        self.spatial_decay = nn.Parameter(torch.randn(recurrence, dim))
        self.spatial_first = nn.Parameter(torch.randn(recurrence, dim))

    def forward(self, x: torch.Tensor, hw: Tuple[int, int], output_weight: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """``output_weight``: used instead of ``output.weight`` (a block folds its layer scale into it)."""
        xs = _shift_tokens(self.omni_shift, x, hw)
        k, v, r = self.key(xs), self.value(xs), torch.sigmoid(self.receptance(xs))
        v = re_wkv(k, v, self.spatial_decay, self.spatial_first, hw, impl=self.wkv_impl)
        return F.linear(r * v, self.output.weight if output_weight is None else output_weight)


class ChannelMix(nn.Module):
    """Channel mixing on (B, T, C): y = sigmoid(W_r xs) * W_v(relu(W_k xs)^2), xs = OmniShift(x)."""

    def __init__(self, dim: int, hidden_rate: int = 4):
        super().__init__()
        hidden = int(hidden_rate * dim)
        self.omni_shift = OmniShift(dim)
        self.key = nn.Linear(dim, hidden, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int], value_weight: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """``value_weight``: used instead of ``value.weight`` (a block folds its layer scale into it)."""
        xs = _shift_tokens(self.omni_shift, x, hw)
        h = torch.relu(self.key(xs)).square()
        weight = self.value.weight if value_weight is None else value_weight
        return torch.sigmoid(self.receptance(xs)) * F.linear(h, weight)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) tokens in (h w) order: a view when ``x`` is channels_last."""
    B, C, H, W = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, H * W, C)


def _image(t: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W): a channels_last view of contiguous tokens."""
    B, T, C = t.shape
    return t.reshape(B, hw[0], hw[1], C).permute(0, 3, 1, 2)


def _shift_tokens(shift: OmniShift, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    # the depth-wise convolutions run on the channels_last view of the tokens, and their
    # channels_last output is again (B, T, C) tokens: no transposed copies
    return _tokens(shift(_image(x, hw)))


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm, residual: Optional[torch.Tensor] = None):
    """``norm(x)``, or with ``residual`` ``(norm(x + residual), x + residual)``, by
    :func:`visionattn.ops.layer_norm` (one-pass Triton kernel on CUDA; the sum and its norm in one
    pass); under TorchScript its reference path (``F.layer_norm``), undispatched."""
    if torch.jit.is_scripting():
        if residual is None:
            return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        s = x + residual
        return F.layer_norm(s, norm.normalized_shape, norm.weight, norm.bias, norm.eps), s
    return layer_norm(x, norm.weight, norm.bias, norm.eps, residual=residual)


class Block(nn.Module):
    """RWKV block on (B, C, H, W): x += g1 * SpatialMix(LN(x)); x += g2 * ChannelMix(LN(x)).

    Works on channels_last images: their (B, T, C) tokens are views, and the output is the
    channels_last view of the result tokens (an NCHW-contiguous input costs one copy). Each
    residual add runs in the pass of the LayerNorm that follows it (``_layer_norm(..., residual=)``;
    in a :class:`Stage` also the next block's ln1). In eval mode without autograd the layer scales
    g1, g2 are folded into the output / value projections (derived weights, recomputed whenever a
    parameter changes), which equals the product up to rounding.
    """

    def __init__(self, dim: int, hidden_rate: int = 4, recurrence: int = 2, wkv_impl: str = "auto"):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.att = SpatialMix(dim, recurrence, wkv_impl)
        self.ffn = ChannelMix(dim, hidden_rate)
        self.gamma1 = nn.Parameter(torch.ones(dim))
        self.gamma2 = nn.Parameter(torch.ones(dim))
        self._att_weight = DerivedTensor()  # gamma1[:, None] * att.output.weight
        self._ffn_weight = DerivedTensor()  # gamma2[:, None] * ffn.value.weight

    def tokens(self, t: torch.Tensor, pending: Optional[torch.Tensor], hw: Tuple[int, int]
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """On contiguous (B, T, C) tokens ``t + pending`` (``pending`` None: nothing to add):
        returns ``(t', r)`` with the block's output ``t' + r`` (the last add is left to the caller)."""
        if pending is None:
            y = _layer_norm(t, self.ln1)
        else:
            y, t = _layer_norm(t, self.ln1, residual=pending)
        if self.training or torch.is_grad_enabled():
            y, t = _layer_norm(t, self.ln2, residual=self.gamma1 * self.att(y, hw))
            return t, self.gamma2 * self.ffn(y, hw)
        att_w = self._att_weight.get((self.gamma1, self.att.output.weight),
                                     lambda: self.gamma1[:, None] * self.att.output.weight)
        ffn_w = self._ffn_weight.get((self.gamma2, self.ffn.value.weight),
                                     lambda: self.gamma2[:, None] * self.ffn.value.weight)
        y, t = _layer_norm(t, self.ln2, residual=self.att(y, hw, output_weight=att_w))
        return t, self.ffn(y, hw, value_weight=ffn_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        t, r = self.tokens(_tokens(x).contiguous(), None, (H, W))  # a copy only if x is not channels_last
        return _image(t + r, (H, W))


class Stage(nn.Sequential):
    """Blocks applied in turn to (B, C, H, W), on one set of tokens: each block's last residual add
    runs in the next block's ln1 pass. Parameter names are those of ``nn.Sequential``; the blocks'
    own ``forward`` is not called (hooks on a block do not fire; hook the stage)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self) == 0:
            return x
        B, C, H, W = x.shape
        t, pending = _tokens(x).contiguous(), None
        for block in self:
            t, pending = block.tokens(t, pending, (H, W))
        return _image(t + pending, (H, W))


class Downsample(nn.Module):
    """(B, C, H, W) -> (B, 2C, H/2, W/2): Conv3x3 to C/2 then PixelUnshuffle(2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x):
        return self.body(x)


class Upsample(nn.Module):
    """(B, C, H, W) -> (B, C/2, 2H, 2W): Conv3x3 to 2C then PixelShuffle(2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


class RestoreRWKV(nn.Module):
    """Restore-RWKV U-Net: (B, in_chans, H, W) -> (B, out_chans, H, W).

    Args:
        in_chans, out_chans: image channels (1 for the medical tasks; 3 for RGB). The global
            residual (output + input) is used when they are equal, as in the official model.
        dim: channels of level 1 (levels use dim, 2dim, 4dim, 8dim; decoder level 1 uses 2dim).
        num_blocks: blocks of encoder levels 1-3 and the latent level (decoders mirror 1-3).
        num_refinement_blocks: blocks after decoder level 1.
        recurrence: Re-WKV recurrences M (alternating H and V scans).
        wkv_impl: Bi-WKV implementation ("auto", "triton", "reference").

    Any image size and tiled inference: ``visionattn.inference.restore_image(model, x, tile=...)``.
    """

    size_multiple = 8  # three 2x downsamplings; the input contract visionattn.inference reads

    def __init__(self, in_chans: int = 1, out_chans: int = 1, dim: int = 48,
                 num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 recurrence: int = 2, hidden_rate: int = 4, wkv_impl: str = "auto", **removed):
        super().__init__()
        if removed.keys() & {"tile", "tile_overlap"}:
            raise ValueError("tile/tile_overlap are inference settings: pass them to "
                             "visionattn.inference.restore_image(model, x, tile=..., overlap=...)")
        if removed:
            raise TypeError(f"RestoreRWKV got unexpected arguments {sorted(removed)}")
        owner = "RestoreRWKV"
        check_int(owner, "in_chans", in_chans, 1)
        check_int(owner, "out_chans", out_chans, 1)
        check_int(owner, "dim", dim, 2)
        if dim % 2:
            raise ValueError(f"{owner}: dim must be even (downsampling halves it before PixelUnshuffle); got {dim}")
        check_ints(owner, "num_blocks", num_blocks, minimum=0, length=4)
        check_int(owner, "num_refinement_blocks", num_refinement_blocks, 0)
        check_int(owner, "recurrence", recurrence, 1)
        check_int(owner, "hidden_rate", hidden_rate, 1)
        check_choice(owner, "wkv_impl", wkv_impl, ("auto",) + WKV_IMPLS)
        self.in_chans, self.out_chans = in_chans, out_chans

        def stage(n, c):
            return Stage(*[Block(c, hidden_rate, recurrence, wkv_impl) for _ in range(n)])

        self.patch_embed = nn.Conv2d(in_chans, dim, 3, padding=1, bias=True)
        self.encoder_level1 = stage(num_blocks[0], dim)
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = stage(num_blocks[1], dim * 2)
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = stage(num_blocks[2], dim * 4)
        self.down3_4 = Downsample(dim * 4)
        self.latent = stage(num_blocks[3], dim * 8)
        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=True)
        self.decoder_level3 = stage(num_blocks[2], dim * 4)
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=True)
        self.decoder_level2 = stage(num_blocks[1], dim * 2)
        self.up2_1 = Upsample(dim * 2)
        self.decoder_level1 = stage(num_blocks[0], dim * 2)
        self.refinement = stage(num_refinement_blocks, dim * 2)
        self.output = nn.Conv2d(dim * 2, out_chans, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W), H and W multiples of 8 -> (B, out_chans, H, W)."""
        check_images(x, network="RestoreRWKV", channels=self.in_chans, like=self.patch_embed.weight,
                     multiple=self.size_multiple,
                     pad_hint="visionattn.inference.restore_image(model, x) pads any size and crops back")
        # the blocks' tokens are views of channels_last images: convert once here; the convolutions
        # and concatenations keep the format (a stage given an NCHW map copies its tokens once)
        e1 = self.encoder_level1(self.patch_embed(x).contiguous(memory_format=torch.channels_last))
        e2 = self.encoder_level2(self.down1_2(e1))
        e3 = self.encoder_level3(self.down2_3(e2))
        d = self.latent(self.down3_4(e3))
        d = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(d), e3], 1)))
        d = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(d), e2], 1)))
        d = self.decoder_level1(torch.cat([self.up2_1(d), e1], 1))
        out = self.output(self.refinement(d))
        out = out + x if self.in_chans == self.out_chans else out
        return out.contiguous()  # the blocks run channels_last; the output is NCHW-contiguous


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------

def _example_inputs(batch_size: int = 1, h: int = 64, w: int = 64):
    return (torch.randn(batch_size, 1, h, w),)


# Light variant: the paper reports 1.16M parameters but publishes no configuration. Ours (not the
# authors') keeps the 4-level layout and M = 2 at dim 16 with one block per level in the two upper
# levels, two in the lower ones and one refinement block: 1,170,169 parameters, 1,156,961 when
# counted as the authors do (5x5 Omni-Shift branch only) = 1.16M.
LIGHT_CONFIG = dict(dim=16, num_blocks=(1, 1, 2, 2), num_refinement_blocks=1)


@register_network("restore_rwkv", family="restore_rwkv", task="restoration", example_inputs=_example_inputs,
                  paper_params="27.9140M (v1 paper, thop, 5x5 branch only)")
def restore_rwkv(**kwargs) -> RestoreRWKV:
    """Restore-RWKV: dim 48, blocks [4, 6, 6, 8], 4 refinement blocks."""
    return RestoreRWKV(**{**dict(dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4), **kwargs})


@register_network("restore_rwkv_light", family="restore_rwkv", task="restoration", example_inputs=_example_inputs,
                  paper_params="1.16M (JBHI); configuration is ours")
def restore_rwkv_light(**kwargs) -> RestoreRWKV:
    """Restore-RWKV-Light (our configuration, see LIGHT_CONFIG)."""
    return RestoreRWKV(**{**LIGHT_CONFIG, **kwargs})


# --------------------------------------------------------------------------------------------
# Official checkpoints
# --------------------------------------------------------------------------------------------

@register_converter("restore_rwkv")
def convert_official(checkpoint: Mapping, model: nn.Module, **kwargs) -> Dict[str, torch.Tensor]:
    """Official ``Restore_RWKV`` state dict (``Generator_*.pth``; HEAD or July-2024 layout) -> ours.

    Dropped: ``*.conv5x5_reparam.weight`` (derived from the branches, recomputed by OmniShift) and
    the July-2024 ``att.dwconv.weight`` (constructed but never used in that version's forward).
    """
    sd = extract_state_dict(checkpoint)
    out = {}
    for key, value in sd.items():
        if key.endswith(".conv5x5_reparam.weight") or key.endswith(".att.dwconv.weight"):
            continue
        if ".key_norm." in key:
            raise RuntimeError(f"checkpoint was trained with key_norm=True ({key}); Restore-RWKV's "
                               f"published configuration has no key_norm and this port does not support it")
        out[key] = value
    return out
