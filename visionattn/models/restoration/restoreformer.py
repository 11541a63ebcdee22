"""RestoreFormer (Wang et al., CVPR 2022) and RestoreFormer++ (TPAMI 2023): blind face restoration
by multi-head cross-attention from degraded features to a high-quality (HQ) dictionary.

A VQGAN-style autoencoder (taming-transformers building blocks: GroupNorm(32, eps 1e-6), swish,
3x3 convolutions, 5 stride-2 downsamplings) whose bottleneck is quantised to a frozen codebook
(1024 x 256) learnt beforehand by autoencoding HQ faces (the "ROHQD" / HQ dictionary, stage 1).
In the decoder, multi-head cross-attention (MHCA) blocks take their **queries from the degraded
image's encoder features** and their **keys/values from the decoder path**, which starts from the
quantised (dictionary) features; the residual stays on the decoder path.

- ``restoreformer``: 8 heads, MHCA at 16x16 (the decoder's middle and its 16x16 level).
- ``restoreformerpp``: 4 heads, MHCA at 16x16 and 32x32 (queries of the 32x32 level from the
  encoder's 32x32 output).
- ``restoreformer_rohqd``: the stage-1 dictionary autoencoder (taming ``VQVAEGAN``): the same
  layout as ``restoreformer`` but self-attention in the decoder and a trainable codebook.

Images: (B, 3, H, W) **RGB in [-1, 1]** (the official inference maps uint8 RGB with
``(x / 255 - 0.5) / 0.5``), H and W multiples of 32 (512x512 aligned faces in the papers; the
attention is global, so any multiple of 32 runs). The output is (B, 3, H, W) in the same range,
not clamped. ``forward(x, return_info=True)`` also returns the quantisation loss, the code indices
and the encoder features.

Module and tensor names follow the official ``VQVAEGANMultiHeadTransformer`` so its state dicts
map one to one; the number of heads cannot be read from the weights, so it is part of each
registered model (and of the zoo entries).
"""
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...hub import extract_state_dict
from ...ops.channel_bias_act import channel_bias_act
from ...ops.group_norm_act import group_norm_act
from ...ops.group_norm_act import resolve_impl as group_norm_impl
from ...ops.multi_head_cross_attention import multi_head_cross_attention
from ...registry import register_converter, register_network
from ..input_contract import check_divides, check_images, check_int, check_ints


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _norm_act(norm: nn.GroupNorm, x: torch.Tensor, act: Optional[str] = None,
              input_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``norm(x + input_bias)`` then ``act`` ("silu" = the official swish), one op
    (:func:`visionattn.ops.group_norm_act.group_norm_act`)."""
    return group_norm_act(x, norm.num_groups, norm.weight, norm.bias, norm.eps, act, input_bias=input_bias)


class ResnetBlock(nn.Module):
    """GN -> swish -> Conv3x3 -> GN -> swish -> Conv3x3, plus a 1x1 ``nin_shortcut`` when the
    channels change. (B, C_in, H, W) -> (B, C_out, H, W). (Dropout is 0 in every released model.)

    Where the fused GroupNorm kernel runs (CUDA), the convolutions run without their bias: conv1's
    is added by the next GroupNorm as it reads the map, conv2's (plus the shortcut's) in the one
    pass that adds the residual (:func:`visionattn.ops.channel_bias_act.channel_bias_act`). The
    result is the same up to rounding; elsewhere the official order of operations runs as written.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if group_norm_impl(x) != "triton":
            h = self.conv1(_norm_act(self.norm1, x, "silu"))
            h = self.conv2(_norm_act(self.norm2, h, "silu"))
            return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h
        h = F.conv2d(_norm_act(self.norm1, x, "silu"), self.conv1.weight, None, padding=1)
        h = F.conv2d(_norm_act(self.norm2, h, "silu", input_bias=self.conv1.bias), self.conv2.weight, None, padding=1)
        shortcut, bias = x, self.conv2.bias
        if self.nin_shortcut is not None:
            shortcut = F.conv2d(x, self.nin_shortcut.weight, None)
            bias = bias + self.nin_shortcut.bias
        return channel_bias_act(h, bias, residual=shortcut)  # shortcut + h + bias, one pass on channels_last maps


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then Conv3x3 stride 2: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then Conv3x3: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C), a view (contiguous when x is channels_last)."""
    return x.flatten(2).transpose(1, 2)


def _project(conv: nn.Conv2d, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to (B, N, C) tokens: same weights (official Conv2d layout), and the
    result comes out in the token layout the attention kernels want."""
    return F.linear(tokens, conv.weight.flatten(1), conv.bias)


class MultiHeadAttnBlock(nn.Module):
    """``x + proj_out(attention)`` on (B, C, H, W) maps.

    ``forward(x)``: self-attention, Q, K, V from ``norm1(x)``. ``forward(x, y)`` (MHCA): queries from
    ``norm2(y)`` (degraded encoder features), keys/values from ``norm1(x)`` (decoder path), the
    residual on ``x``. Both norms exist in every block so official state dicts load strictly; in a
    self-attention block ``norm2`` is never used and is frozen (``requires_grad=False``), so
    optimisers and DDP do not wait for a gradient that never comes.
    """

    def __init__(self, channels: int, num_heads: int, cross: bool):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the {channels} channels of the attention block")
        self.num_heads = num_heads
        self.cross = cross
        self.norm1 = _norm(channels)
        self.norm2 = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        if not cross:
            self.norm2.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, c, height, width = x.shape
        kv = _tokens(_norm_act(self.norm1, x))  # (B, HW, C)
        queries = kv if y is None else _tokens(_norm_act(self.norm2, y))
        out = multi_head_cross_attention(_project(self.q, queries), _project(self.k, kv), _project(self.v, kv),
                                         self.num_heads)  # (B, HW, C)
        out = _project(self.proj_out, out)
        return x + out.transpose(1, 2).reshape(b, c, height, width)


class Level(nn.Module):
    """One resolution of the encoder or decoder: ResnetBlocks, each followed by an attention block
    where the level has attention, then an optional resampling (``downsample``/``upsample``)."""

    def __init__(self, channels_in: int, channels_out: int, num_blocks: int, attention: Optional[Tuple[int, bool]],
                 resample: Optional[str]):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(channels_in if i == 0 else channels_out, channels_out) for i in range(num_blocks))
        self.attn = nn.ModuleList(
            MultiHeadAttnBlock(channels_out, *attention) for _ in range(num_blocks) if attention is not None)
        if resample == "down":
            self.downsample = Downsample(channels_out)
        elif resample == "up":
            self.upsample = Upsample(channels_out)

    def forward(self, h: torch.Tensor, queries: Optional[torch.Tensor] = None) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h, queries)
        return h


class Middle(nn.Module):
    """ResnetBlock -> attention -> ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, num_heads: int, cross: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = MultiHeadAttnBlock(channels, num_heads, cross)
        self.block_2 = ResnetBlock(channels, channels)


class Encoder(nn.Module):
    """(B, 3, H, W) -> dict of features. Keys (official names): ``in`` (after conv_in),
    ``block_{l}`` (level l's output before its downsampling, l < last), ``block_{last}_atten`` (after
    the middle's first ResnetBlock), ``mid_atten`` (after the middle), ``out`` (B, z_channels, H/32, W/32)."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_levels: Iterable[int],
                 num_heads: int, in_channels: int, z_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        last = len(ch_mult) - 1
        widths = [ch] + [ch * m for m in ch_mult]
        self.down = nn.ModuleList(
            Level(widths[l], widths[l + 1], num_res_blocks, (num_heads, False) if l in attn_levels else None,
                  "down" if l != last else None)
            for l in range(len(ch_mult)))
        self.mid = Middle(widths[-1], num_heads, cross=False)
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, keep: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
        """``keep``: names of the features to return (``out`` always); None keeps them all."""
        feats: Dict[str, torch.Tensor] = {}

        def save(name, value):
            if keep is None or name in keep:
                feats[name] = value

        h = self.conv_in(x)
        save("in", h)
        last = len(self.down) - 1
        for l, level in enumerate(self.down):
            h = level(h)
            if l != last:
                save(f"block_{l}", h)
                h = level.downsample(h)
        h = self.mid.block_1(h)
        save(f"block_{last}_atten", h)
        h = self.mid.block_2(self.mid.attn_1(h))
        save("mid_atten", h)
        feats["out"] = self.conv_out(_norm_act(self.norm_out, h, "silu"))
        return feats


class Decoder(nn.Module):
    """(B, z_channels, H/32, W/32) [+ encoder features] -> (B, out_channels, H, W).

    With ``cross=True`` every attention block is MHCA whose queries are the encoder feature of the
    same resolution (:meth:`query_name`); with ``cross=False`` (dictionary autoencoder) they are
    self-attention.
    """

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_levels: Iterable[int],
                 num_heads: int, out_channels: int, z_channels: int, cross: bool):
        super().__init__()
        self.cross = cross
        last = len(ch_mult) - 1
        width = ch * ch_mult[last]
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = Middle(width, num_heads, cross)
        levels = {}
        for l in reversed(range(len(ch_mult))):  # built from the lowest resolution up, stored by level
            levels[l] = Level(width, ch * ch_mult[l], num_res_blocks + 1, (num_heads, cross) if l in attn_levels else None,
                              "up" if l != 0 else None)
            width = ch * ch_mult[l]
        self.up = nn.ModuleList(levels[l] for l in range(len(ch_mult)))
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def query_name(self, level: int) -> str:
        """The encoder feature giving level ``level``'s MHCA queries (official rule: the level's
        ``block_{l}_atten`` if the encoder has it, i.e. the lowest level, else ``block_{l}``)."""
        return f"block_{level}_atten" if level == len(self.up) - 1 else f"block_{level}"

    def needed_features(self) -> Tuple[str, ...]:
        if not self.cross:
            return ()
        return ("mid_atten",) + tuple(self.query_name(l) for l, level in enumerate(self.up) if len(level.attn))

    def forward(self, z: torch.Tensor, feats: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        def queries(name):
            return feats[name] if self.cross else None

        h = self.conv_in(z)
        h = self.mid.block_1(h)
        h = self.mid.attn_1(h, queries("mid_atten"))
        h = self.mid.block_2(h)
        for l in reversed(range(len(self.up))):
            level = self.up[l]
            h = level(h, queries(self.query_name(l)) if len(level.attn) else None)
            if l != 0:
                h = level.upsample(h)
        return self.conv_out(_norm_act(self.norm_out, h, "silu"))


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of (B, C, h, w) to ``embedding`` (n_embed, C), straight-through.

    The squared distance is ``|z|^2 + |e|^2 - 2 z.e``, in that form and order as in the official
    (taming) code, so rounding, and with it the choice between near-equal codes, is the same; it is
    computed in float32 whatever the model's dtype. Returns ``(z_q, loss, indices)``: ``z_q`` =
    ``z + (e[idx] - z).detach()``, ``loss`` = mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2)
    (None unless ``with_loss``), ``indices`` (B, h, w) int64.
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def forward(self, z: torch.Tensor, with_loss: bool = False):
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c).float()  # (B*h*w, C)
        codes = self.embedding.weight.float()  # (n_embed, C)
        distance = (flat ** 2).sum(dim=1, keepdim=True) + (codes ** 2).sum(dim=1) - 2 * (flat @ codes.t())
        indices = torch.min(distance, dim=1).indices  # (B*h*w,)
        z_q = self.embedding(indices).view(b, h, w, c).permute(0, 3, 1, 2).to(z.dtype)  # (B, C, h, w)
        loss = None
        if with_loss:
            loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()
        return z_q, loss, indices.view(b, h, w)


def _check_args(num_heads, ch, ch_mult, num_res_blocks, resolution, in_channels, out_channels, z_channels,
                embed_dim, n_embed, beta) -> None:
    """Constructor arguments, each with its name, value and allowed range."""
    owner = "RestoreFormer"
    check_int(owner, "ch", ch, 1)
    check_ints(owner, "ch_mult", ch_mult, minimum=1)
    if not list(ch_mult):
        raise ValueError(f"{owner}: ch_mult must have at least one level, got {ch_mult!r}")
    for i, width in enumerate([ch] + [ch * m for m in ch_mult]):
        if width % 32:
            raise ValueError(f"{owner}: level width {width} (ch={ch} x ch_mult) is not divisible by 32, the "
                             f"GroupNorm groups; pick ch and ch_mult so every width is a multiple of 32")
    widest = ch * list(ch_mult)[-1]
    check_divides(owner, "num_heads", num_heads, "the middle block's width (ch * ch_mult[-1])", widest)
    for arg, value, minimum in (("num_res_blocks", num_res_blocks, 1), ("resolution", resolution, 1),
                                ("in_channels", in_channels, 1), ("out_channels", out_channels, 1),
                                ("z_channels", z_channels, 1), ("embed_dim", embed_dim, 1), ("n_embed", n_embed, 1)):
        check_int(owner, arg, value, minimum)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
        raise ValueError(f"{owner}: beta={beta!r} is out of range; it must be a number >= 0")


class RestoreFormer(nn.Module):
    """RestoreFormer / RestoreFormer++ network: (B, 3, H, W) RGB in [-1, 1] -> same shape and range.

    Args:
        num_heads: attention heads of every attention block (the official argument ``head_size`` is
            this count, not a head width). RestoreFormer 8, RestoreFormer++ 4. Not stored in weights.
        decoder_attn_resolutions: resolutions (at the 512x512 design size) whose decoder level has
            attention after each ResnetBlock: (16,) RestoreFormer, (16, 32) RestoreFormer++.
        cross_attention: MHCA in the decoder (True) or self-attention (False: the stage-1
            dictionary autoencoder).
        freeze_codebook: the codebook's ``requires_grad`` is False (stage 2 keeps the dictionary fixed).
        ch, ch_mult, num_res_blocks, attn_resolutions, resolution, in_channels, out_channels,
        z_channels, embed_dim, n_embed, beta: the official hyper-parameters (defaults = released
            models). ``attn_resolutions``/``decoder_attn_resolutions`` pick levels by their size at
            ``resolution``; other input sizes (multiples of 2**(len(ch_mult)-1)) use the same levels.
    """

    def __init__(self, num_heads: int = 4, decoder_attn_resolutions: Sequence[int] = (16, 32),
                 cross_attention: bool = True, freeze_codebook: bool = True, ch: int = 64,
                 ch_mult: Sequence[int] = (1, 2, 2, 4, 4, 8), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), resolution: int = 512, in_channels: int = 3,
                 out_channels: int = 3, z_channels: int = 256, embed_dim: int = 256, n_embed: int = 1024,
                 beta: float = 0.25):
        super().__init__()
        _check_args(num_heads, ch, ch_mult, num_res_blocks, resolution, in_channels, out_channels, z_channels,
                    embed_dim, n_embed, beta)
        self.num_heads = num_heads
        self.in_channels = in_channels
        self.size_multiple = 2 ** (len(ch_mult) - 1)
        level_size = [resolution // 2 ** l for l in range(len(ch_mult))]
        for name, sizes in (("attn_resolutions", attn_resolutions), ("decoder_attn_resolutions", decoder_attn_resolutions)):
            bad = [s for s in sizes if s not in level_size]
            if bad:
                raise ValueError(f"{name} {list(sizes)}: {bad} is not the size of a level at resolution "
                                 f"{resolution} (levels: {level_size})")
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, [level_size.index(s) for s in attn_resolutions],
                               num_heads, in_channels, z_channels)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, [level_size.index(s) for s in decoder_attn_resolutions],
                               num_heads, out_channels, z_channels, cross_attention)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        if freeze_codebook:
            self.quantize.requires_grad_(False)

    def forward(self, x: torch.Tensor, return_info: bool = False):
        """x: (B, 3, H, W) RGB in [-1, 1], H and W multiples of 32 -> restored (B, 3, H, W) in [-1, 1]
        (not clamped). With ``return_info=True``: ``(image, info)``, info = dict(``vq_loss`` (scalar),
        ``indices`` (B, H/32, W/32) codebook indices, ``features`` (every encoder feature, official names))."""
        check_images(x, network="RestoreFormer", channels=self.in_channels, like=self.encoder.conv_in.weight,
                     multiple=self.size_multiple,
                     pad_hint="visionattn.inference.restore_image(model, x) pads any size (reflect) and crops the "
                              "output back")
        feats = self.encoder(x, keep=None if return_info else self.decoder.needed_features())
        z_q, vq_loss, indices = self.quantize(self.quant_conv(feats["out"]), with_loss=return_info)
        out = self.decoder(self.post_quant_conv(z_q), feats)
        if return_info:
            return out, dict(vq_loss=vq_loss, indices=indices, features=feats)
        return out


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------

def _example_inputs(batch_size: int = 1, h: int = 64, w: int = 64):
    """Small RGB images in [-1, 1] (the released models work on 512x512 faces: --shape h=512 w=512)."""
    return (torch.rand(batch_size, 3, int(h), int(w)) * 2 - 1,)


@register_network("restoreformer", family="restoreformer", task="face_restoration", example_inputs=_example_inputs,
                  paper="RestoreFormer, CVPR 2022", input_range=(-1, 1), input_size=(512, 512))
def restoreformer(**kwargs) -> RestoreFormer:
    """RestoreFormer (CVPR 2022): 8 heads, MHCA at 16x16. 72,680,003 parameters."""
    return RestoreFormer(**{**dict(num_heads=8, decoder_attn_resolutions=(16,)), **kwargs})


@register_network("restoreformerpp", family="restoreformer", task="face_restoration", example_inputs=_example_inputs,
                  paper="RestoreFormer++, TPAMI 2023", input_range=(-1, 1), input_size=(512, 512))
def restoreformerpp(**kwargs) -> RestoreFormer:
    """RestoreFormer++ (TPAMI 2023): 4 heads, MHCA at 16x16 and 32x32. 73,472,579 parameters."""
    return RestoreFormer(**{**dict(num_heads=4, decoder_attn_resolutions=(16, 32)), **kwargs})


@register_network("restoreformer_rohqd", family="restoreformer", task="face_restoration", example_inputs=_example_inputs,
                  paper="RestoreFormer++ stage 1 (ROHQD)", input_range=(-1, 1), input_size=(512, 512))
def restoreformer_rohqd(**kwargs) -> RestoreFormer:
    """The stage-1 HQ-dictionary autoencoder (official ``VQVAEGAN``): decoder self-attention at 16x16,
    trainable codebook. 4 heads as RestoreFormer++'s ROHQD (RestoreFormer's HQ_Dictionary: num_heads=8).
    72,680,003 parameters (the same tensors as ``restoreformer``)."""
    return RestoreFormer(**{**dict(num_heads=4, decoder_attn_resolutions=(16,), cross_attention=False,
                                   freeze_codebook=False), **kwargs})


# --------------------------------------------------------------------------------------------
# Official checkpoints
# --------------------------------------------------------------------------------------------

_VARIANT_BY_DECODER_ATTN = {(5,): "restoreformer (or restoreformer_rohqd for a stage-1 dictionary)",
                            (4, 5): "restoreformerpp"}


def _decoder_attn_levels(keys: Iterable[str]) -> Tuple[int, ...]:
    return tuple(sorted({int(k.split(".")[2]) for k in keys if k.startswith("decoder.up.") and ".attn." in k}))


def _summarise(keys: Sequence[str], shown: int = 6) -> str:
    """'36: decoder.up.4.attn.0.norm1.weight, ... (under decoder.up.4.attn)' style listing."""
    if not keys:
        return "none"
    roots = sorted({".".join(k.split(".")[:4]) for k in keys})
    head = ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")
    return f"{len(keys)} [{head}] under {', '.join(roots[:8])}{', ...' if len(roots) > 8 else ''}"


@register_converter("restoreformer")
def convert_official(checkpoint: Mapping, model: nn.Module, **kwargs) -> Dict[str, torch.Tensor]:
    """Official RestoreFormer / RestoreFormer++ / stage-1 dictionary files -> our state dict, strictly.

    Accepted containers: the PyTorch-Lightning checkpoints of ``wzhouxiff/RestoreFormerPlusPlus``
    (``RestoreFormer++.ckpt``, ``RestoreFormer.ckpt``, stage-1 ROHQD/HQ_Dictionary:
    ``{'state_dict': {'vqvae.<key>': ..., 'loss.<key>': ...}, ...}``; the ``loss.*`` training
    modules are dropped), GFPGAN's ``RestoreFormer.pth`` (``{'params': {<key>: ...}}``, or
    ``params_ema`` when present) and bare state dicts. Every tensor of the model must be present
    and nothing else: a file of another variant raises with the missing/unexpected keys (the
    official loader uses ``strict=False`` and would leave e.g. 36 decoder tensors random).
    """
    if kwargs:
        raise ValueError(f"the restoreformer converter takes no options; got {sorted(kwargs)}")
    if isinstance(checkpoint.get("params_ema"), Mapping):
        sd = dict(checkpoint["params_ema"])
    else:
        sd = extract_state_dict(checkpoint)
    out = {}
    for key, value in sd.items():
        if key.startswith("loss."):
            continue
        out[key[len("vqvae."):] if key.startswith("vqvae.") else key] = value
    ours = model.state_dict()
    missing = [k for k in ours if k not in out]
    unexpected = [k for k in out if k not in ours]
    if missing or unexpected:
        found = _decoder_attn_levels(out)
        hint = ""
        if found != _decoder_attn_levels(ours) and found in _VARIANT_BY_DECODER_ATTN:
            hint = (f" The file has decoder attention at levels {list(found)}: it holds weights of "
                    f"{_VARIANT_BY_DECODER_ATTN[found]}; build that model instead.")
        raise RuntimeError(
            f"checkpoint does not fit {type(model).__name__} (decoder attention at levels "
            f"{list(_decoder_attn_levels(ours))}): missing keys {_summarise(missing)}; unexpected keys "
            f"{_summarise(unexpected)}.{hint}")
    return out
