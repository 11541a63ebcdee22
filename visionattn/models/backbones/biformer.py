"""BiFormer: Vision Transformer with Bi-Level Routing Attention (Zhu et al., CVPR 2023).

Faithful to the official models behind the released ImageNet weights (``rayleizhu/BiFormer``,
legacy BRA): official checkpoints load strictly through :func:`checkpoint_filter_fn` and give the
official logits. The routing + token attention math lives in
:mod:`visionattn.ops.bilevel_routing_attention`; this file holds the parameterised layers.

Layout: conv stem (stride 4) -> 4 stages (stride 4, 8, 16, 32); stages 2-4 start with a 3x3
stride-2 conv + BN. Stages 1-3 use bi-level routing attention over ``n_win x n_win`` regions,
stage 4 plain multi-head attention. Every block: 3x3 depthwise positional conv, then pre-norm
attention and MLP residuals.

Dense prediction: ``features_only=True`` returns the 4 stage maps (NCHW, any input size: maps
are padded to a multiple of ``n_win`` inside the attention, as the official dense backbone does);
``out_norm=True`` adds the official dense backbone's per-stage LayerNorm2d on those maps
(``extra_norms`` in its checkpoints; newly initialised when loading ImageNet weights, as there).
``n_win`` is a constructor argument (official: 7 for 224 classification, 16 detection, 8 segmentation).

FLOPs quoted in :data:`PAPER_FLOPS` count one multiply-add as one FLOP (the paper's convention):
``torch.utils.flop_counter.FlopCounterMode`` total at 224x224 divided by 2.
"""
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm2d, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ...hub import build_timm_model, extract_state_dict
from ...registry import register_converter
from ..bias_grad_layers import Conv2d, Linear, conv2d, linear
from ..drop_path import DropPath, add_dropped_path, per_sample
from .stage_classifier import StageClassifier
from ...ops.bilevel_routing_attention import IMPLS as BRA_IMPLS
from ...ops.bilevel_routing_attention import bilevel_routing_attention, bilevel_routing_attention_reference
from ...ops._triton import needs_grad
from ...ops.layer_norm import layer_norm
from ..input_contract import check_choice, check_int, check_ints, check_num_classes, check_rate

__all__ = ["BiFormer", "BiLevelRoutingAttention", "checkpoint_filter_fn"]

torch.fx.wrap("add_dropped_path")  # one node under torch.fx: it branches on the device


@torch.fx.wrap  # one node under torch.fx: the op checks its inputs
def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   eps: float, factors: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(LayerNorm(s), s)``, ``s = x + residual`` (``residual`` times drop path's per-sample ``factors``
    if given) by :func:`layer_norm`; under TorchScript (also of an FX graph) its reference path (the
    multiply, the add, then ``F.layer_norm``), undispatched."""
    if torch.jit.is_scripting():
        if factors is not None:
            residual = residual * per_sample(factors, residual)
        s = x + residual
        return F.layer_norm(s, (s.shape[-1],), weight, bias, eps), s
    return layer_norm(x, weight, bias, eps, residual=residual, residual_scale=factors)


@torch.fx.wrap  # one node under torch.fx (timm's FX feature extraction): the op's checks read shapes
def routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int, num_heads: int, topk: int,
                     scale: float, impl: str) -> torch.Tensor:
    """:func:`bilevel_routing_attention`; under TorchScript (also of an FX graph) its reference, undispatched."""
    if torch.jit.is_scripting():
        return bilevel_routing_attention_reference(q, k, v, n_win, num_heads, topk, scale)
    return bilevel_routing_attention(q, k, v, n_win, num_heads, topk, scale, impl=impl)


@torch.fx.wrap
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, H, W, C) zero-padded at the bottom/right to multiples of ``multiple`` (``x`` itself if they are)."""
    pad_b, pad_r = -x.shape[1] % multiple, -x.shape[2] % multiple
    return F.pad(x, (0, 0, 0, pad_r, 0, pad_b)) if pad_b or pad_r else x


@torch.fx.wrap
def crop_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, H', W', C) cropped to ``like``'s (B, H, W, .) map size (``x`` itself if it has it)."""
    height, width = like.shape[1], like.shape[2]
    return x[:, :height, :width].contiguous() if x.shape[1] != height or x.shape[2] != width else x


def folds_conv_bias(x: torch.Tensor) -> bool:
    """Whether the depth-wise convolutions' biases are added by the ops that follow them (on CUDA,
    where cuDNN's depth-wise kernel has no bias epilogue and PyTorch adds a bias in a broadcast pass
    over the whole map): LePE's joins the projection's bias, the positional conv's the fused add +
    LayerNorm. Elsewhere the formulas run as written, so CPU results stay those of the official model."""
    return x.is_cuda


@torch.fx.wrap  # one node under torch.fx: it branches on the device and on autograd
def add_positional_layer_norm(x: torch.Tensor, cpe_weight: torch.Tensor, cpe_bias: Optional[torch.Tensor],
                              weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float
                              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(LayerNorm(s), s)``, ``s = x + cpe(x)``, for a channels_last (B, C, H, W) ``x``; both (B, H, W, C).

    The positional conv's bias goes into the fused add + LayerNorm (:func:`folds_conv_bias`) when the
    model runs in one dtype without autograd on that bias (the kernel computes no gradient for it)."""
    pad = cpe_weight.shape[-1] // 2
    groups = x.shape[1]
    if torch.jit.is_scripting():
        s = x.permute(0, 2, 3, 1) + F.conv2d(x, cpe_weight, cpe_bias, 1, pad, 1, groups).permute(0, 2, 3, 1)
        return F.layer_norm(s, (s.shape[-1],), weight, bias, eps), s
    fold = (cpe_bias is not None and folds_conv_bias(x) and not needs_grad(cpe_bias)
            and not torch.is_autocast_enabled(x.device.type) and cpe_bias.dtype == x.dtype)
    pos = conv2d(x, cpe_weight, None if fold else cpe_bias, (1, 1), (pad, pad), (1, 1), groups)
    return layer_norm(x.permute(0, 2, 3, 1), weight, bias, eps, residual=pos.permute(0, 2, 3, 1),
                      residual_bias=cpe_bias if fold else None)


@torch.fx.wrap  # one node under torch.fx: it branches on the device
def lepe_projection(out: torch.Tensor, v: torch.Tensor, lepe_weight: torch.Tensor, lepe_bias: Optional[torch.Tensor],
                    proj_weight: torch.Tensor, proj_bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``proj(out + lepe(v))`` for (B, H, W, C) ``out`` and ``v``, LePE a "same" depth-wise convolution.

    Where :func:`folds_conv_bias`, LePE's bias joins the projection's:
    ``proj(o + conv(v) + b) = proj(o + conv(v)) + W b``, one matrix-vector product of the weights in
    place of a pass over the map (gradients flow through it as through the written formula).
    """
    pad = lepe_weight.shape[-1] // 2
    groups = lepe_weight.shape[0]
    if torch.jit.is_scripting():
        lepe = F.conv2d(v.permute(0, 3, 1, 2), lepe_weight, lepe_bias, 1, pad, 1, groups)
        return F.linear(out + lepe.permute(0, 2, 3, 1), proj_weight, proj_bias)
    folded = lepe_bias is not None and proj_bias is not None and folds_conv_bias(out)
    lepe = conv2d(v.permute(0, 3, 1, 2), lepe_weight, None if folded else lepe_bias, (1, 1), (pad, pad), (1, 1),
                  groups).permute(0, 2, 3, 1)
    bias = torch.addmv(proj_bias, proj_weight, lepe_bias) if folded else proj_bias
    return linear(out + lepe, proj_weight, bias)


class BiLevelRoutingAttention(nn.Module):
    """BRA layer (legacy official form). (B, H, W, C) -> (B, H, W, C), any H, W.

    qkv projection -> routing + token attention (the op) -> + LePE (5x5 depthwise conv on V) -> proj.
    Sizes that are not a multiple of ``n_win`` are zero-padded before the projection (padded
    tokens get bias-only q/k/v and take part in the routing, like the official ``auto_pad``) and
    the output is cropped.
    """

    def __init__(self, dim: int, num_heads: int, n_win: int = 7, topk: int = 4, lepe_kernel: int = 5,
                 attn_impl: str = "auto"):
        super().__init__()
        self.num_heads, self.n_win, self.topk, self.attn_impl = num_heads, n_win, topk, attn_impl
        self.scale = dim ** -0.5  # official: full qk width, not the head width
        self.qkv = Linear(dim, 3 * dim)
        self.lepe = Conv2d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = pad_to_multiple(x, self.n_win)
        q, k, v = self.qkv(padded).chunk(3, dim=-1)  # (B, H', W', C) each
        out = routed_attention(q, k, v, self.n_win, self.num_heads, self.topk, self.scale, self.attn_impl)
        return crop_like(lepe_projection(out, v, self.lepe.weight, self.lepe.bias, self.proj.weight, self.proj.bias), x)


class GlobalAttention(nn.Module):
    """Stage-4 attention (official ``AttentionLePE``). (B, H, W, C) -> (B, H, W, C).

    Plain multi-head attention over all tokens; official quirks kept for weight parity: 8 heads
    whatever the width, qkv without bias, LePE (5x5 depthwise) on the block input, not on V.
    """

    def __init__(self, dim: int, num_heads: int = 8, lepe_kernel: int = 5):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.lepe = Conv2d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, height, width, c = x.shape
        qkv = self.qkv(x).reshape(b, height * width, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, M, N, d) each
        out = F.scaled_dot_product_attention(q, k, v)  # scale d ** -0.5
        out = out.transpose(1, 2).reshape(b, height, width, c)
        return lepe_projection(out, x, self.lepe.weight, self.lepe.bias, self.proj.weight, self.proj.bias)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (timm's ``Mlp`` without dropout, on the bias-gradient layers). (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class BiFormerBlock(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): x += DWConv3x3(x); x += Attn(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, topk: int, n_win: int, mlp_ratio: float = 3.0,
                 drop_path: float = 0.0, attn_impl: str = "auto"):
        super().__init__()
        self.cpe = Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if topk > 0:
            self.attn = BiLevelRoutingAttention(dim, num_heads, n_win, topk, attn_impl=attn_impl)
        else:
            self.attn = GlobalAttention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x += cpe(x); x += drop_path(attn(norm1(x))); x += drop_path(mlp(norm2(x))). The first two adds
        # are fused with the LayerNorm that follows them (visionattn.ops.layer_norm with residual=: one
        # pass that returns the sum and its norm; the reference path is the add, then F.layer_norm), and
        # drop path's per-sample factors are applied by the adds (drop_path.DropPath.factors: timm's draws)
        # rather than by broadcast multiplies of their own.
        # (the norms are read as self.norm1 / self.norm2: TorchScript loses a submodule's eps through an alias)
        y, x = add_positional_layer_norm(x, self.cpe.weight, self.cpe.bias, self.norm1.weight, self.norm1.bias,
                                         self.norm1.eps)  # NHWC views of channels_last maps
        branch = self.attn(y)
        y, x = add_layer_norm(x, branch, self.norm2.weight, self.norm2.bias, self.norm2.eps,
                              self.drop_path.factors(branch))
        branch = self.mlp(y)
        x = add_dropped_path(x, branch, self.drop_path.factors(branch))
        return x.permute(0, 3, 1, 2)


class BiFormerStage(nn.Module):
    """Optional 3x3 stride-2 conv + BN downsample, then blocks. (B, C_in, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, topk: int, n_win: int,
                 mlp_ratio: float, drop_path: Sequence[float], downsample: bool, attn_impl: str):
        super().__init__()
        self.downsample = nn.Sequential(nn.Conv2d(in_dim, dim, 3, 2, 1), nn.BatchNorm2d(dim)) if downsample \
            else nn.Identity()
        self.blocks = nn.Sequential(*[
            BiFormerBlock(dim, num_heads, topk, n_win, mlp_ratio, drop_path[j], attn_impl) for j in range(depth)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _check_args(depths, dims, topks, head_dim, n_win, mlp_ratio, num_classes, in_chans, drop_rate,
                drop_path_rate, attn_impl) -> None:
    """Constructor arguments, each with its name, value and allowed range."""
    owner = "BiFormer"
    check_ints(owner, "depths", depths, minimum=0)
    stages = len(list(depths))
    check_ints(owner, "dims", dims, minimum=2, length=stages)
    check_int(owner, "head_dim", head_dim, 1)
    check_int(owner, "n_win", n_win, 1)
    check_int(owner, "in_chans", in_chans, 1)
    check_num_classes(owner, num_classes)
    check_rate(owner, "drop_rate", drop_rate)
    check_rate(owner, "drop_path_rate", drop_path_rate)
    check_choice(owner, "attn_impl", attn_impl, ("auto",) + BRA_IMPLS)
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
        raise ValueError(f"{owner}: mlp_ratio={mlp_ratio!r} is out of range; it must be a number > 0")
    topks = list(topks)
    if len(topks) != stages:
        raise ValueError(f"{owner}: topks must have {stages} entries (one per stage), got {len(topks)}: {topks}")
    if dims[0] % 2:
        raise ValueError(f"{owner}: dims[0]={dims[0]} must be even (the stem's first conv has dims[0] // 2 channels)")
    for i, (dim, topk) in enumerate(zip(dims, topks)):
        if isinstance(topk, bool) or not isinstance(topk, int) or not (topk == -1 or 1 <= topk):
            raise ValueError(f"{owner}: topks[{i}]={topk!r} is out of range; it must be -1 (global attention) or "
                             f"an integer in [1, n_win**2={n_win * n_win}]")
        heads = 8 if topk == -1 else dim // head_dim  # the global stage has 8 heads (official)
        if topk != -1 and dim % head_dim:
            raise ValueError(f"{owner}: dims[{i}]={dim} is not divisible by head_dim={head_dim}; heads = dim // "
                             f"head_dim must be a whole number")
        if heads < 1 or dim % heads:
            raise ValueError(f"{owner}: dims[{i}]={dim} is not divisible by its {heads} heads")


class BiFormer(StageClassifier):
    """BiFormer classifier / backbone. Input (B, 3, H, W) -> logits (B, num_classes).

    Args:
        depths, dims: blocks and channels per stage.
        topks: routed regions per stage; ``-1`` selects plain attention (stage 4 in every release).
        head_dim: channels per head of the BRA stages (heads = dim // head_dim).
        n_win: regions per side for BRA (7 for 224 classification, 16/8 in the official det/seg).
        out_norm: add per-stage LayerNorm2d applied to the intermediate (dense) features.
        attn_impl: BRA implementation (``'auto'``, ``'triton'``, ``'reference'``).
    """

    def __init__(self, depths=(4, 4, 18, 4), dims=(64, 128, 256, 512), topks=(1, 4, 16, -1), head_dim: int = 32,
                 n_win: int = 7, mlp_ratio: float = 3.0, num_classes: int = 1000, in_chans: int = 3,
                 global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 out_norm: bool = False, attn_impl: str = "auto"):
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"BiFormer: global_pool must be 'avg' or '' (none), got {global_pool!r}")
        _check_args(depths, dims, topks, head_dim, n_win, mlp_ratio, num_classes, in_chans, drop_rate,
                    drop_path_rate, attn_impl)
        self.in_chans = in_chans
        self.num_classes, self.global_pool, self.n_win = num_classes, global_pool, n_win
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, 2, 1), nn.BatchNorm2d(dims[0] // 2), nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, 2, 1), nn.BatchNorm2d(dims[0]))
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, self.feature_info = [], []
        for i, depth in enumerate(depths):
            dp, rates = rates[:depth], rates[depth:]
            stages.append(BiFormerStage(dims[max(i - 1, 0)], dims[i], depth, dims[i] // head_dim, topks[i], n_win,
                                        mlp_ratio, dp, i > 0, attn_impl))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.out_norms = nn.ModuleList(LayerNorm2d(d) for d in dims) if out_norm else None
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage maps (B, C_i, H/4/2^i, W/4/2^i) for ``indices`` (all 4 when None), each through its
        ``out_norms`` LayerNorm2d when the model has them; ``norm`` applies the final BN to stage 4."""
        if output_fmt != "NCHW":
            raise ValueError(f"BiFormer.forward_intermediates: output_fmt must be 'NCHW', got {output_fmt!r}")
        self.check_input(x)
        take, max_index = feature_take_indices(len(self.stages), indices)
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        feats = []
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                f = self.norm(x) if norm and i == len(self.stages) - 1 else x
                feats.append(self.out_norms[i](f) if self.out_norms is not None else f)
        if intermediates_only:
            return feats
        return self.norm(x), feats

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm or max_index < 3:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C_4, H/32, W/32).

        The trunk runs channels_last: the convolutions then produce NHWC memory, so the blocks'
        NCHW <-> NHWC permutes are free views instead of copies."""
        self.check_input(x)
        return self.norm(self.stages(self.stem(x.contiguous(memory_format=torch.channels_last))))


# --- official checkpoints ----------------------------------------------------------------------

# Official key -> ours (applied in order; official layout in shared/reference/keys/biformer_*.txt).
_KEY_MAP = (
    (r"^downsample_layers\.0\.", "stem."),
    (r"^downsample_layers\.(\d)\.", r"stages.\1.downsample."),
    (r"^stages\.(\d)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"\.pos_embed\.", ".cpe."),
    (r"\.attn\.qkv\.qkv\.", ".attn.qkv."),
    (r"\.attn\.wo\.", ".attn.proj."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
    (r"^extra_norms\.", "out_norms."),
)


def _official_to_ours(key: str) -> str:
    for pattern, repl in _KEY_MAP:
        key = re.sub(pattern, repl, key)
    return key


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official BiFormer state dict (or a ``{"model": ...}`` checkpoint) -> ``model``'s keys.

    Keys the model lacks (``head``/``norm`` of a pruned features model) are dropped; ``out_norms``
    that the checkpoint lacks (ImageNet weights) keep the model's own initial values, like the
    official dense backbone. Anything else missing or unexpected is left for the strict load to report.
    """
    state_dict = extract_state_dict(state_dict) if "model" in state_dict or "state_dict" in state_dict \
        else state_dict
    if not any(k.startswith("stem.") for k in state_dict):
        state_dict = {_official_to_ours(k): v for k, v in state_dict.items()}
    own = model.state_dict()
    pruned = [p for p in ("head.", "norm.") if not any(k.startswith(p) for k in own)]
    out = {k: v for k, v in state_dict.items() if not k.startswith(tuple(pruned))}
    if not any(k.startswith("out_norms.") for k in out):
        out.update({k: v for k, v in own.items() if k.startswith("out_norms.")})
    return out


@register_converter("biformer")
def convert_official(checkpoint, model: nn.Module, ema: bool = False) -> Dict[str, torch.Tensor]:
    """Hub converter: official checkpoint -> state dict of ``model`` (a BiFormer or its features wrapper).

    ``ema=True`` takes the official trainer's ``model_ema`` weights instead of ``model`` (the
    released numbers are those of ``model``)."""
    if ema:
        if not isinstance(checkpoint.get("model_ema"), dict):
            raise RuntimeError(f"ema=True but the checkpoint has no 'model_ema' entry "
                               f"(keys: {sorted(checkpoint)[:10]}); drop ema to load 'model'")
        checkpoint = checkpoint["model_ema"]
    state_dict = extract_state_dict(checkpoint)
    inner = getattr(model, "model", None)
    if isinstance(inner, BiFormer):  # timm FeatureGetterNet(features_only=True): keys under "model."
        return {f"model.{k}": v for k, v in checkpoint_filter_fn(state_dict, inner).items()}
    return checkpoint_filter_fn(state_dict, model)


def _create(variant: str, pretrained: bool = False, **kwargs) -> BiFormer:
    """``pretrained=True`` loads the zoo entry named by the pretrained tag (``biformer_small.in1k``)
    through visionattn.hub: verified download, the 'biformer' converter, strict."""
    return build_timm_model(BiFormer, variant, pretrained, family="biformer",
                            feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)), **kwargs)


def _cfg(url: str = "", **kwargs) -> dict:
    return dict(url=url, num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.9,
                interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                first_conv="stem.0", classifier="head", license="mit",
                paper_ids="arXiv:2303.08810", origin_url="https://github.com/rayleizhu/BiFormer", **kwargs)


_ONEDRIVE = "https://api.onedrive.com/v1.0/shares/{}/root/content"
default_cfgs = generate_default_cfgs({
    # Official OneDrive links (rayleizhu/BiFormer models/biformer.py), the zoo entries of the same
    # names (model_zoo/biformer.yaml). Reported broken (upstream issue #53): pass a downloaded file
    # with pretrained_cfg_overlay=dict(file=...), or put it at the cache path the error names.
    "biformer_tiny.in1k": _cfg(_ONEDRIVE.format("s!AkBbczdRlZvChHEOoGkgwgQzEDlM")),
    "biformer_small.in1k": _cfg(_ONEDRIVE.format("s!AkBbczdRlZvChHDyM-x9KWRBZ832")),
    "biformer_base.in1k": _cfg(_ONEDRIVE.format("s!AkBbczdRlZvChHI_XPhoadjaNxtO")),
})

# Paper / official-code numbers (one multiply-add = one FLOP, 224x224).
PAPER_PARAMS = {"biformer_tiny": 13.14e6, "biformer_small": 25.54e6, "biformer_base": 56.81e6}
PAPER_FLOPS = {"biformer_tiny": 2.23e9, "biformer_small": 4.49e9, "biformer_base": 9.80e9}


@register_model
def biformer_tiny(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-T: 13.14M params, 2.23 GFLOPs (MACs) at 224, 81.4% IN-1k top-1."""
    return _create("biformer_tiny", pretrained, **dict(dict(depths=(2, 2, 8, 2), dims=(64, 128, 256, 512)), **kwargs))


@register_model
def biformer_small(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-S: 25.54M params, 4.49 GFLOPs (MACs) at 224, 83.8% IN-1k top-1."""
    return _create("biformer_small", pretrained, **dict(dict(depths=(4, 4, 18, 4), dims=(64, 128, 256, 512)),
                                                        **kwargs))


@register_model
def biformer_base(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-B: 56.81M params, 9.80 GFLOPs (MACs) at 224, 84.3% IN-1k top-1."""
    return _create("biformer_base", pretrained, **dict(dict(depths=(4, 4, 18, 4), dims=(96, 192, 384, 768)),
                                                       **kwargs))
