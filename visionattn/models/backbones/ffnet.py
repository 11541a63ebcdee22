"""FFNet: MetaMixer-based convolutional networks (Yun, Lee, Ro, arXiv 2406.02021).

The paper's MetaMixer view: a mixer is a query–key interaction, an activation and a
coefficient–value interaction. Self-attention fills it with matmuls and softmax; an FFN with two
projections and GELU (the weights act as keys and values). *FFNified attention* keeps the FFN's
shape but mixes tokens with depthwise convolutions:

    token mixer    Y = DW_k2( GELU( DW_k1( BN(Conv1x1(X)) ) ) )          (kernels = keys / values)
    channel mixer  Y = Conv1x1_{3C->C}( GELU( Conv1x1_{C->3C}( DW_k(X) ) ) )

Both are :class:`MetaMixer` instances. Where the math lives: the mixers are standard
convolutions that cuDNN already runs well, so they live once, here; the only kernel of their own
is the generic conv epilogue ``visionattn/ops/channel_bias_act.py``. The main fast path is
structural re-parameterisation: :meth:`FFNet.fuse` (also reached through timm's
``reparameterize_model``) folds every BatchNorm and the RepVGG 3x3 branches into single
convolutions; the unfused training form is the reference.
Run the fused model in ``channels_last`` for speed; eager is as fast as ``torch.compile`` here
(H200: benchmarks/ffnet.md).

Eager fast path of the fused model (same parameters and state dict as the official deploy model,
same function): cuDNN adds a convolution's bias in a separate pass over its output, so (1) every
1x1 conv is a :class:`PointwiseConv` that runs as ``F.linear`` on the free NHWC view of a
channels_last input (bias in the GEMM epilogue), (2) a depthwise conv's bias is folded into the
1x1 conv that follows it (channel mixer, patch merging: :func:`conv_then_pointwise`, derived from
the parameters, cached between no-grad calls), (3) layer scale and residual add are one ``addcmul``, (4) the token
mixer's depthwise biases, which cannot be folded (zero padding makes a constant non-constant at
borders), are added with the GELU, and with layer scale + residual, inside the depthwise conv's own
kernel in inference (the ``depthwise_conv2d`` op's CUDA kernel: cuDNN's channels_last kernels are
slow at 7x7), else by one ``channel_bias_act`` pass each after cuDNN's conv (:class:`FFNifiedAttention`;
``epilogue_impl="reference"`` turns both off, ``"triton"`` keeps the second).

Official parity notes: a token-mixer depthwise conv is RepVGG-style (7x7 + 3x3, both with BN)
only when its kernel is 7, otherwise a plain depthwise conv with bias and no BN; the channel
mixer's depthwise conv is RepVGG-style for k=7, else conv+BN; the patch-merging projection is
BN *then* 1x1 conv plus identity; the final norm is BatchNorm. Dense-prediction features get a
channels-first LayerNorm per stage (``stage_norm=True``, default with ``features_only``).
Squeeze-excite (``use_ses``) is off in every released model and is not implemented.
"""
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d, LayerScale2d, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ...hub import build_timm_model, extract_state_dict
from ...registry import register_converter
from .stage_classifier import StageClassifier
from ..derived_tensor import DerivedTensor
from ..drop_path import DropPath
from ..pointwise import pointwise
from ...ops import channel_bias_act as cba
from ...ops import depthwise_conv2d as dw
from ...ops.channel_bias_act import IMPLS as CBA_IMPLS
from ..input_contract import check_choice, check_int, check_ints, check_num_classes, check_rate

__all__ = ["FFNet", "MetaMixer", "ConvBN", "RepDWConv", "BNConvSkip", "PatchMerging", "FFNetBlock", "PointwiseConv",
           "ConvFFN", "Stem"]


# --- 1x1 convolutions as GEMMs ------------------------------------------------------------------

torch.fx.wrap("pointwise")  # one node here too under torch.fx (wrap applies to the calling module's globals)


class PointwiseConv(nn.Conv2d):
    """A 1x1, stride-1 ``nn.Conv2d`` (same parameters and state-dict keys) run by :func:`pointwise`."""

    def __init__(self, in_chs: int, out_chs: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_chs, out_chs, 1, bias=bias, device=device, dtype=dtype)
        self.folded_bias = DerivedTensor()  # see conv_then_pointwise

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``bias`` replaces ``self.bias`` (a bias folded in from the layer before)."""
        return pointwise(x, self.weight, self.bias if bias is None else bias)


def _conv_no_bias(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)


def folded_bias(conv: nn.Conv2d, pw: PointwiseConv) -> Optional[torch.Tensor]:
    """The bias of ``pw(conv(x))`` when ``conv`` runs without its own: W b + c (``pw``'s W, c; ``conv``'s b).

    Exact because a 1x1 conv has no padding (the bias is the same at every pixel), and it saves a
    full pass over ``conv``'s output. A (C_out,) matrix-vector product derived from the parameters
    (recomputed at each call under autograd, cached between no-grad calls until a parameter changes),
    so the parameters, the state dict and gradients stay those of the published fused model.
    ``None`` (``pw`` keeps its own bias) when ``conv`` has none.
    """
    if conv.bias is None:
        return None

    def fold() -> torch.Tensor:
        w = pw.weight.flatten(1)  # (C_out, C_in)
        return torch.mv(w, conv.bias) if pw.bias is None else torch.addmv(pw.bias, w, conv.bias)
    if torch.is_grad_enabled():
        return fold()
    params = (pw.weight, conv.bias) if pw.bias is None else (pw.weight, conv.bias, pw.bias)
    return pw.folded_bias.get(params, fold)


def conv_then_pointwise(x: torch.Tensor, conv: nn.Conv2d, pw: PointwiseConv) -> torch.Tensor:
    """``pw(conv(x))`` with ``conv``'s bias folded into ``pw``'s (:func:`folded_bias`).
    (B, C_in, H, W) -> (B, C_pw, H', W')."""
    return pw(_conv_no_bias(conv, x), bias=folded_bias(conv, pw))


# --- re-parameterisable convolution units -------------------------------------------------------

def _fold_bn(weight: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.BatchNorm2d
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a conv followed by eval-mode ``bn``, as one conv."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    bias = torch.zeros_like(bn.running_mean) if bias is None else bias
    return weight * scale.view(-1, 1, 1, 1), bn.bias + (bias - bn.running_mean) * scale


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased conv with ``conv``'s geometry holding ``weight``/``bias`` (a 1x1 one: :class:`PointwiseConv`)."""
    if isinstance(conv, PointwiseConv):
        fused = PointwiseConv(conv.in_channels, conv.out_channels, device=weight.device, dtype=weight.dtype)
    else:
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, bias=True, device=weight.device, dtype=weight.dtype)
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    return fused


class ConvBN(nn.Module):
    """Conv2d (no bias) then BatchNorm2d; (B, C_in, H, W) -> (B, C_out, H/stride, W/stride)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        if kernel_size == 1 and stride == 1 and groups == 1:
            self.conv = PointwiseConv(in_chs, out_chs, bias=False)
        else:
            self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        return _conv_like(self.conv, *_fold_bn(self.conv.weight, None, self.bn))


class RepDWConv(nn.Module):
    """RepVGG-style depthwise conv: BN(DW_kxk(X)) + BN(DW_3x3(X)), fused into one k x k conv.

    (B, C_in, H, W) -> (B, C_out, H/stride, W/stride); C_out a multiple of C_in (channel multiplier,
    2 in patch merging).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 7, stride: int = 1, small_kernel: int = 3):
        super().__init__()
        if kernel_size % 2 == 0 or small_kernel % 2 == 0 or small_kernel > kernel_size:
            raise ValueError(f"RepDWConv needs odd kernels with small_kernel <= kernel_size, got "
                             f"{kernel_size} and {small_kernel}")
        self.large = ConvBN(in_chs, out_chs, kernel_size, stride, groups=in_chs)
        self.small = ConvBN(in_chs, out_chs, small_kernel, stride, groups=in_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.large(x) + self.small(x)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        large, small = self.large.fuse(), self.small.fuse()
        pad = (large.kernel_size[0] - small.kernel_size[0]) // 2  # centre the small kernel
        return _conv_like(large, large.weight + F.pad(small.weight, [pad] * 4), large.bias + small.bias)


class BNConvSkip(nn.Module):
    """X + Conv1x1(BN(X)) (BN *before* the conv, no conv bias); fused into one biased 1x1 conv.

    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.conv = PointwiseConv(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.bn(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)  # (C,)
        shift = self.bn.bias - self.bn.running_mean * scale
        w = self.conv.weight  # (C, C, 1, 1)
        eye = torch.eye(w.shape[0], device=w.device, dtype=w.dtype).view_as(w)
        return _conv_like(self.conv, w * scale.view(1, -1, 1, 1) + eye, w.flatten(1) @ shift)


def dw_conv(dim: int, kernel_size: int, with_bn: bool) -> nn.Module:
    """The paper's depthwise conv: RepVGG-style at k=7; else conv+BN (``with_bn``) or biased conv."""
    if kernel_size == 7:
        return RepDWConv(dim, dim, kernel_size)
    if with_bn:
        return ConvBN(dim, dim, kernel_size, groups=dim)
    return nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=True)


# --- MetaMixer --------------------------------------------------------------------------------

class MetaMixer(nn.Module):
    """Generic mixer: Y = value( act( key( query(X) ) ) ) with pluggable sub-operations.

    ``query`` maps the input to queries; ``key`` computes the query–key interaction; ``act``
    turns it into coefficients (softmax for attention, GELU for FFNs); ``value`` aggregates values
    with them. Sub-operations whose keys/values are *computed from the input* (self-attention)
    set ``uses_input = True`` and are called as ``key(q, x)`` / ``value(a, x)``; those whose
    keys/values are their own weights (FFN, FFNified attention) are called with one argument.
    Shapes are whatever the sub-operations use (FFNet: (B, C, H, W) throughout).
    """

    def __init__(self, query: nn.Module, key: nn.Module, act: nn.Module, value: nn.Module):
        super().__init__()
        self.query, self.key, self.act, self.value = query, key, act, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query(x)
        s = self.key(q, x) if getattr(self.key, "uses_input", False) else self.key(q)
        a = self.act(s)
        return self.value(a, x) if getattr(self.value, "uses_input", False) else self.value(a)


def _biased_conv(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d and m.bias is not None


def _same_depthwise(conv: nn.Conv2d) -> bool:
    """A stride-1 depthwise conv with zero "same" padding: what :func:`~visionattn.ops.depthwise_conv2d` computes."""
    k = conv.kernel_size[0]
    return (conv.groups == conv.in_channels == conv.out_channels and conv.kernel_size == (k, k) and k % 2 == 1
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding == (k // 2, k // 2)
            and conv.padding_mode == "zeros")


class FFNifiedAttention(MetaMixer):
    """FFNified attention token mixer: value(GELU(key(query(X)))) with depthwise key/value convs;
    (B, C, H, W) in and out. ``forward(x, residual, scale)`` returns ``residual + scale * mixer(x)``.

    When key and value are biased convs (fused model; stages with plain depthwise convs) on a
    channels_last CUDA map: in inference each conv runs with its epilogue (bias + GELU; bias + layer
    scale + residual) in one kernel of the ``depthwise_conv2d`` op; otherwise, where the
    ``channel_bias_act`` op resolves to its Triton kernel, the convs run without bias (cuDNN) and
    that op adds the same epilogues in one pass each.
    """

    def __init__(self, query: nn.Module, key: nn.Module, act: nn.Module, value: nn.Module, impl: str = "auto"):
        super().__init__(query, key, act, value)
        self.impl = impl

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        q = self.query(x)
        if not torch.jit.is_scripting():  # (TorchScript compiles neither the condition nor the kernel path)
            if (_biased_conv(self.key) and _biased_conv(self.value) and type(self.act) is nn.GELU
                    and self.act.approximate == "none"):
                key, value = self.key, self.value
                if (self.impl == "auto" and _same_depthwise(key) and _same_depthwise(value)
                        and dw.resolve_impl(q, key.weight, key.bias, residual, scale) == "cuda"):
                    # conv, bias and GELU; conv, bias, layer scale and residual: one kernel each
                    a = dw.depthwise_conv2d(q, key.weight, key.bias, gelu=True)
                    return dw.depthwise_conv2d(a, value.weight, value.bias, residual, scale)
                if cba.resolve_impl(q, residual, self.impl) == "triton":
                    a = cba.channel_bias_act(_conv_no_bias(key, q), key.bias, gelu=True, impl=self.impl)
                    return cba.channel_bias_act(_conv_no_bias(value, a), value.bias, residual, scale, impl=self.impl)
        y = self.value(self.act(self.key(q)))
        if residual is None:
            return y if scale is None else y * scale.view(1, -1, 1, 1)
        return y + residual if scale is None else torch.addcmul(residual, y, scale.view(1, -1, 1, 1))


def ffnified_attention(dim: int, k1: int, k2: int, impl: str = "auto") -> FFNifiedAttention:
    """FFNified attention token mixer: DW_k2(GELU(DW_k1(BN(Conv1x1(X))))), (B, C, H, W) in and out."""
    return FFNifiedAttention(ConvBN(dim, dim, 1), dw_conv(dim, k1, with_bn=False), nn.GELU(),
                             dw_conv(dim, k2, with_bn=False), impl=impl)


class ConvFFN(MetaMixer):
    """ConvNeXt-like channel mixer: value(GELU(key(query(X)))) with query a depthwise conv and
    key/value 1x1 convs; (B, C, H, W) in and out.

    Once fused (``query`` a biased conv) the depthwise bias is folded into the first 1x1 conv's
    (:func:`conv_then_pointwise`), which removes one pass over the activations; :meth:`add_into`
    also adds the block's residual inside the second 1x1 conv's GEMM.
    """

    #: a column of this value passes GELU unchanged in every float dtype (erf(16 / sqrt 2) rounds to
    #: 1 even in float64), and dividing a bias by it is exact: the carrier of the second conv's bias
    BIAS_CARRIER = 16.0

    def __init__(self, query: nn.Module, key: nn.Module, act: nn.Module, value: nn.Module):
        super().__init__(query, key, act, value)
        self.fc1_padded, self.fc2_padded = DerivedTensor(), DerivedTensor()  # see add_into

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if type(self.query) is nn.Conv2d and isinstance(self.key, PointwiseConv):
                return self.value(self.act(conv_then_pointwise(x, self.query, self.key)))
        return self.value(self.act(self.key(self.query(x))))  # MetaMixer's forward (keys/values are weights)

    def can_add_into(self, x: torch.Tensor) -> bool:
        """Whether :meth:`add_into` runs ``x``: the fused mixer, a channels_last map, no autograd."""
        return (type(self.query) is nn.Conv2d and isinstance(self.key, PointwiseConv)
                and isinstance(self.value, PointwiseConv) and type(self.act) is nn.GELU
                and self.act.approximate == "none" and not torch.is_grad_enabled() and x.dim() == 4
                and x.is_contiguous(memory_format=torch.channels_last))

    def add_into(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x + scale * self(x)`` written into ``x`` (:meth:`can_add_into`; ``x`` belongs to the caller's
        block and is not read after). Same function; in half precision rounded once instead of twice.

        The residual add runs inside the second GEMM (cuBLAS's beta = 1) instead of a pass of its own.
        PyTorch's GEMM takes a bias or an accumulated matrix, not both, so the second conv's bias rides
        in the hidden map: the first conv's weight gets zero rows up to a width of whole 16-byte rows,
        its bias ``BIAS_CARRIER`` at the first of them, so GELU leaves that column at ``BIAS_CARRIER``,
        and the second conv's weight gets the matching column ``bias / BIAS_CARRIER`` (exact). Layer
        scale multiplies the second conv's rows. The padded weights are derived from the parameters and
        cached until one changes.
        """
        query, fc1, fc2 = self.query, self.key, self.value
        hidden = fc1.out_channels
        width = hidden // 8 * 8 + 8  # at least one spare column; rows of whole 16-byte units

        def fc1_padded() -> Tuple[torch.Tensor, torch.Tensor]:
            w = fc1.weight.flatten(1)
            bias = folded_bias(query, fc1)
            weight, b = w.new_zeros(width, w.shape[1]), w.new_zeros(width)
            weight[:hidden] = w
            if bias is not None or fc1.bias is not None:
                b[:hidden] = fc1.bias if bias is None else bias
            b[hidden] = self.BIAS_CARRIER
            return weight, b

        def fc2_padded() -> torch.Tensor:
            w = fc2.weight.flatten(1)  # (C, hidden)
            weight = w.new_zeros(w.shape[0], width)
            weight[:, :hidden] = w
            if fc2.bias is not None:
                weight[:, hidden] = fc2.bias / self.BIAS_CARRIER
            return weight if scale is None else weight * scale[:, None]

        params1 = tuple(p for p in (fc1.weight, fc1.bias, query.bias) if p is not None)
        params2 = tuple(p for p in (fc2.weight, fc2.bias, scale) if p is not None)
        w1, b1 = self.fc1_padded.get(params1, fc1_padded)
        h = F.linear(_conv_no_bias(query, x).permute(0, 2, 3, 1), w1, b1)  # (B, H, W, width)
        torch.ops.aten.gelu_(h)
        rows = x.permute(0, 2, 3, 1).view(-1, x.shape[1])  # the channels_last map's rows, in place
        rows.addmm_(h.view(-1, width), self.fc2_padded.get(params2, fc2_padded).t())
        return x


def convnext_ffn(dim: int, kernel_size: int, mlp_ratio: float) -> ConvFFN:
    """ConvNeXt-like channel mixer: Conv1x1(GELU(Conv1x1(DW_k(X)))), (B, C, H, W) in and out."""
    hidden = int(dim * mlp_ratio)
    return ConvFFN(dw_conv(dim, kernel_size, with_bn=True), PointwiseConv(dim, hidden), nn.GELU(),
                   PointwiseConv(hidden, dim))


# --- network ----------------------------------------------------------------------------------

class FFNetBlock(nn.Module):
    """X + DropPath(γ1·TokenMixer(X)), then + DropPath(γ2·ChannelMixer(·)); (B, C, H, W)."""

    def __init__(self, dim: int, token_kernels: Tuple[int, int], ffn_kernel: int, mlp_ratio: float = 3.0,
                 drop_path: float = 0.0, layer_scale_init_value: Optional[float] = None, epilogue_impl: str = "auto"):
        super().__init__()
        self.token_mixer = ffnified_attention(dim, *token_kernels, impl=epilogue_impl)
        self.ls1 = LayerScale2d(dim, layer_scale_init_value) if layer_scale_init_value else nn.Identity()
        self.channel_mixer = convnext_ffn(dim, ffn_kernel, mlp_ratio)
        self.ls2 = LayerScale2d(dim, layer_scale_init_value) if layer_scale_init_value else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _residual(self, x: torch.Tensor, y: torch.Tensor, ls: nn.Module) -> torch.Tensor:
        """x + DropPath(γ·y); with layer scale one ``addcmul`` pass instead of a multiply and an add."""
        if isinstance(ls, LayerScale2d):
            return torch.addcmul(x, self.drop_path(y), ls.gamma.view(1, -1, 1, 1))
        return x + self.drop_path(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript: the plain residual form (same function)
            x = x + self.drop_path(self.ls1(self.token_mixer(x)))
            return x + self.drop_path(self.ls2(self.channel_mixer(x)))
        if isinstance(self.drop_path, nn.Identity) or not self.training:  # residual inside the mixer's epilogue
            x = self.token_mixer(x, residual=x, scale=self.ls1.gamma if isinstance(self.ls1, LayerScale2d) else None)
            # x is the token mixer's new map, the block's own, unless a forward hook kept it
            if not self.token_mixer._forward_hooks and self.channel_mixer.can_add_into(x):
                return self.channel_mixer.add_into(x, self.ls2.gamma if isinstance(self.ls2, LayerScale2d) else None)
        else:
            x = self._residual(x, self.token_mixer(x), self.ls1)
        return self._residual(x, self.channel_mixer(x), self.ls2)


class PatchMerging(nn.Module):
    """Stride-2 RepVGG depthwise 7x7 (channel multiplier C_out/C_in) then X + Conv1x1(BN(X)).

    (B, C_in, H, W) -> (B, C_out, H/2, W/2).
    """

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        if out_chs % in_chs:
            raise ValueError(f"PatchMerging needs out_chs a multiple of in_chs, got {in_chs} -> {out_chs}")
        self.conv = RepDWConv(in_chs, out_chs, 7, stride=2)
        self.proj = BNConvSkip(out_chs)
        self.split_taps, self.split_cols = DerivedTensor(), DerivedTensor()  # fused: see _forward_by_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if type(self.conv) is nn.Conv2d and isinstance(self.proj, PointwiseConv):  # fused: fold the DW bias
                if self.conv.groups == self.conv.in_channels < self.conv.out_channels and x.dim() == 4 \
                        and x.is_contiguous(memory_format=torch.channels_last):
                    return self._forward_by_multiplier(x)
                return conv_then_pointwise(x, self.conv, self.proj)
        return self.proj(self.conv(x))

    def _forward_by_multiplier(self, x: torch.Tensor) -> torch.Tensor:
        """The fused module on a channels_last map, with the multiplier taken apart.

        Output channel ``c * m + j`` of the conv reads input channel ``c``. cuDNN has no channels_last
        kernel for a depthwise conv with a channel multiplier: it transposes the maps to NCHW and back
        around a generic grouped GEMM (FFNet-1 at 224, batch 128: 0.25 ms of convolution and 0.33 ms of
        transposes per patch merging on an H200). Here each j is a plain depthwise conv (cuDNN's
        channels_last kernel) over the weights of outputs ``c * m + j``, and the 1x1 projection sums
        the m results through the matching columns of its weight, the first GEMM adding the folded
        bias, the others accumulating in place (beta = 1). Same function; the sums run in another order.
        """
        conv, pw = self.conv, self.proj
        m = conv.out_channels // conv.in_channels

        def taps() -> torch.Tensor:  # (m, C_in, 1, k, k): [j] = the taps of outputs c * m + j
            return conv.weight.unflatten(0, (-1, m)).transpose(0, 1).contiguous()

        def cols() -> torch.Tensor:  # (m, C_in, C_out): [j] = the projection's columns c * m + j, transposed
            return pw.weight.flatten(1).unflatten(1, (-1, m)).permute(2, 1, 0).contiguous()
        if torch.is_grad_enabled():
            split_taps, split_cols = taps(), cols()
        else:
            split_taps, split_cols = self.split_taps.get((conv.weight,), taps), self.split_cols.get((pw.weight,), cols)
        bias = folded_bias(conv, pw)
        bias = pw.bias if bias is None else bias
        out = None
        for j in range(m):
            y = F.conv2d(x, split_taps[j], None, conv.stride, conv.padding, conv.dilation, conv.in_channels)
            rows = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])  # a view of the channels_last map
            if out is None:
                out = rows @ split_cols[j] if bias is None else torch.addmm(bias, rows, split_cols[j])
            else:
                out = out.addmm_(rows, split_cols[j])
        B, _, H, W = y.shape
        return out.view(B, H, W, -1).permute(0, 3, 1, 2)


class Stem(nn.Sequential):
    """Conv 3x3 s2 + BN, GELU, conv 3x3 s2 + BN: (B, C_in, H, W) -> (B, C, H/4, W/4).

    Once fused each conv has a bias, which cuDNN adds in a pass of its own (on the stem's wide maps
    a strided, unvectorised one), and the GELU is another pass. When the ``channel_bias_act`` op
    resolves to its Triton kernel (CUDA, channels_last) the convs run without bias and the op adds
    bias + GELU, then the bias, in one pass each.
    """

    def __init__(self, in_chans: int, stem_chs: int, out_chs: int, impl: str = "auto"):
        super().__init__(ConvBN(in_chans, stem_chs, 3, 2), nn.GELU(), ConvBN(stem_chs, out_chs, 3, 2))
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # (TorchScript compiles neither the condition nor the kernel path)
            conv1, act, conv2 = self[0], self[1], self[2]
            if (_biased_conv(conv1) and _biased_conv(conv2) and type(act) is nn.GELU and act.approximate == "none"
                    and cba.resolve_impl(x, None, self.impl) == "triton"):
                y = cba.channel_bias_act(_conv_no_bias(conv1, x), conv1.bias, gelu=True, impl=self.impl)
                return cba.channel_bias_act(_conv_no_bias(conv2, y), conv2.bias, impl=self.impl)
        for module in self:
            x = module(x)
        return x


class FFNetStage(nn.Module):
    """Optional patch merging, then ``depth`` FFNet blocks."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, downsample: bool, drop_path: Sequence[float],
                 **block_kwargs):
        super().__init__()
        self.downsample = PatchMerging(in_chs, out_chs) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[FFNetBlock(out_chs, drop_path=dp, **block_kwargs) for dp in drop_path])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if not torch.jit.is_scripting() and self.grad_checkpointing:
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _check_args(depths, dims, kernels, mlp_ratio, stem_chs, layer_scale_init_value, in_chans, num_classes,
                global_pool, drop_rate, drop_path_rate, epilogue_impl) -> None:
    """Constructor arguments, each with its name, value and allowed range."""
    owner = "FFNet"
    check_ints(owner, "depths", depths, minimum=1)
    check_ints(owner, "dims", dims, minimum=1)
    for arg, values in zip(("ffn_kernels", "token_kernels1", "token_kernels2"), kernels):
        check_ints(owner, arg, values, minimum=1)
        for i, k in enumerate(values):
            if k % 2 == 0:
                raise ValueError(f"{owner}: {arg}[{i}]={k} must be odd (depthwise convs keep the map size)")
    check_int(owner, "stem_chs", stem_chs, 1)
    check_int(owner, "in_chans", in_chans, 1)
    check_num_classes(owner, num_classes)
    check_choice(owner, "global_pool", global_pool, ("avg", ""))
    check_rate(owner, "drop_rate", drop_rate)
    check_rate(owner, "drop_path_rate", drop_path_rate)
    check_choice(owner, "epilogue_impl", epilogue_impl, ("auto",) + CBA_IMPLS)
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
        raise ValueError(f"{owner}: mlp_ratio={mlp_ratio!r} is out of range; it must be a number > 0")
    if layer_scale_init_value is not None and not isinstance(layer_scale_init_value, (int, float)):
        raise ValueError(f"{owner}: layer_scale_init_value must be a number or None, got {layer_scale_init_value!r}")


class FFNet(StageClassifier):
    """FFNet classifier / backbone. Input (B, 3, H, W); features at strides 4, 8, 16, 32.

    Args:
        depths, dims: blocks and channels per stage.
        ffn_kernels: channel-mixer depthwise kernel per stage.
        token_kernels1, token_kernels2: token-mixer depthwise kernels (query–key, value) per stage.
        mlp_ratio: channel-mixer expansion.
        layer_scale_init_value: layer-scale init (``None``: no layer scale).
        stage_norm: add a channels-first LayerNorm (eps 1e-6) per stage output, as the official dense
            backbones do; applied by :meth:`forward_intermediates`.
        epilogue_impl: ``impl`` of the ``channel_bias_act`` op after the token mixers' depthwise
            convs and the stem's convs ("auto": its Triton kernel on CUDA channels_last maps;
            "reference": PyTorch ops).
    """

    def __init__(self, depths: Sequence[int] = (2, 2, 8, 2), dims: Sequence[int] = (80, 160, 320, 640),
                 ffn_kernels: Sequence[int] = (3, 3, 3, 3), token_kernels1: Sequence[int] = (3, 3, 7, 7),
                 token_kernels2: Sequence[int] = (3, 3, 7, 7), mlp_ratio: float = 3.0, stem_chs: int = 64,
                 layer_scale_init_value: Optional[float] = None, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 stage_norm: bool = False, epilogue_impl: str = "auto"):
        super().__init__()
        if not len(depths) == len(dims) == len(ffn_kernels) == len(token_kernels1) == len(token_kernels2):
            raise ValueError("FFNet: depths, dims, ffn_kernels, token_kernels1/2 need one entry per stage")
        _check_args(depths, dims, (ffn_kernels, token_kernels1, token_kernels2), mlp_ratio, stem_chs,
                    layer_scale_init_value, in_chans, num_classes, global_pool, drop_rate, drop_path_rate,
                    epilogue_impl)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, stem_chs, dims[0], impl=epilogue_impl)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))  # plain floats, also on meta
        self.stages = nn.Sequential()
        self.feature_info = []
        for i, depth in enumerate(depths):
            self.stages.append(FFNetStage(
                dims[max(i - 1, 0)], dims[i], depth, downsample=i > 0, drop_path=dpr[i].tolist(),
                token_kernels=(token_kernels1[i], token_kernels2[i]), ffn_kernel=ffn_kernels[i],
                mlp_ratio=mlp_ratio, layer_scale_init_value=layer_scale_init_value, epilogue_impl=epilogue_impl))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stage_norms = nn.ModuleList([LayerNorm2d(d, eps=1e-6) for d in dims]) if stage_norm else None
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- re-parameterisation
    @torch.no_grad()
    def fuse(self) -> "FFNet":
        """Fold BatchNorms and RepVGG branches into single convs, in place (eval-mode numerics).

        Returns ``self`` so timm's ``reparameterize_model`` (which replaces each child having
        ``fuse`` by its result) works on models that wrap an FFNet too.
        """
        def _fuse(module: nn.Module) -> None:
            for name, child in module.named_children():
                if isinstance(child, (ConvBN, RepDWConv, BNConvSkip)):
                    setattr(module, name, child.fuse())
                else:
                    _fuse(child)

        _fuse(self)
        return self

    reparameterize = fuse

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage outputs (B, C_i, H/2^(i+2), W/2^(i+2)), each through its stage LayerNorm if built with one."""
        if output_fmt != "NCHW":
            raise ValueError(f"FFNet: output_fmt {output_fmt!r} is not supported; use 'NCHW'")
        self.check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.stem(x)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(self.stage_norms[i](x) if self.stage_norms is not None else x)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if self.stage_norms is not None:
            self.stage_norms = self.stage_norms[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, "", reset_other=True)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C_3, H/32, W/32) after the final BatchNorm."""
        self.check_input(x)
        return self.norm(self.stages(self.stem(x)))


# --- official checkpoints ---------------------------------------------------------------------

# official key pattern -> ours (applied in order; block J of stage i>0 is official stages.i.(J+1))
_RENAMES = (
    (r"^patch_embed\.", "stem."),
    (r"\.proj\.0\.(weight|bias)$", r".conv.\1"),  # re-parameterised (deploy) patch merging
    (r"\.proj\.1\.(weight|bias)$", r".proj.\1"),
    (r"\.proj\.0\.conv\.", ".conv.large."),
    (r"\.proj\.0\.conv1\.", ".conv.small."),
    (r"\.proj\.1\.conv\.c\.", ".proj.conv."),
    (r"\.proj\.1\.conv\.bn\.", ".proj.bn."),
    (r"\.token_mixer\.0\.main\.fc\.", ".token_mixer.query."),
    (r"\.token_mixer\.0\.main\.conv1\.", ".token_mixer.key."),
    (r"\.token_mixer\.0\.main\.conv2\.", ".token_mixer.value."),
    (r"\.token_mixer\.0\.layer_scale$", ".ls1.gamma"),
    (r"\.channel_mixer\.main\.conv\.", ".channel_mixer.query."),
    (r"\.channel_mixer\.main\.fc1\.", ".channel_mixer.key."),
    (r"\.channel_mixer\.main\.fc2\.", ".channel_mixer.value."),
    (r"\.channel_mixer\.layer_scale$", ".ls2.gamma"),
    (r"\.conv1\.(c|bn)\.", r".small.\1."),  # RepVGGDW 3x3 branch inside the mixers
    (r"\.conv\.(c|bn)\.", r".large.\1."),  # RepVGGDW 7x7 branch inside the mixers
    (r"\.c\.weight$", ".conv.weight"),
    (r"^norm(\d)\.", r"stage_norms.\1."),
)


def _rename(key: str) -> str:
    m = re.match(r"^stages\.(\d+)\.(\d+)\.(.*)$", key)
    if m:
        stage, idx, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        if stage > 0 and idx == 0:
            key = f"stages.{stage}.downsample.{rest}"
        else:
            key = f"stages.{stage}.blocks.{idx - (stage > 0)}.{rest}"
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official FFNet keys (classification or dense backbone; training or re-parameterised form), or
    our own, -> ours, shaped for ``model`` (a fused ``model`` takes the official deploy state dict).

    Strips ``module.``/``encoder.``/``backbone.`` prefixes, renames, reshapes layer scales
    (C, 1, 1) -> (C,), and drops what ``model`` does not have (the classifier of a features-only
    model, dense-only keys for a classifier). Per-stage output norms that an ImageNet checkpoint
    lacks keep the model's initial values (the official dense backbone starts them the same way).
    """
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        state_dict = extract_state_dict(state_dict)  # timm's pretrained loader hands over the container
    target = model.state_dict()
    prefix = "model." if any(k.startswith("model.") for k in target) else ""  # timm features wrapper
    stripped = {}
    for key, value in state_dict.items():
        for p in ("module.", "encoder.", "backbone."):
            key = key[len(p):] if key.startswith(p) else key
        stripped[key] = value
    ours = any(k.startswith("stem.") for k in stripped)  # already our layout (the official one has patch_embed)
    out = {}
    for key, value in stripped.items():
        if ours:
            key = prefix + key
        elif key.startswith(("patch_embed.", "stages.", "norm", "head.")):
            key = prefix + _rename(key)
        else:
            continue  # e.g. neck/head of a detector checkpoint
        if key not in target:
            if ours and not key[len(prefix):].startswith(_PRUNABLE):
                out[key] = value  # a key of our layout the model lacks: left for the strict load to name
            continue
        if value.shape != target[key].shape:
            if value.numel() != target[key].numel():
                raise RuntimeError(f"FFNet checkpoint tensor {key!r} has shape {tuple(value.shape)}, the model "
                                   f"needs {tuple(target[key].shape)}: the checkpoint is of another variant")
            value = value.reshape(target[key].shape)  # layer scale (C, 1, 1) -> (C,)
        out[key] = value
    if not any(".stage_norms." in f".{k}" for k in out):
        out.update({k: v for k, v in target.items() if ".stage_norms." in f".{k}"})
    return out


# what a model may lack that a checkpoint of our layout has: the classifier (features_only), the final
# norm (pruned) and the dense-only per-stage norms (a classifier)
_PRUNABLE = ("head.", "norm.", "stage_norms.")


@register_converter("ffnet")
def convert_official(checkpoint: Mapping, model: nn.Module, ema: bool = False) -> Dict[str, torch.Tensor]:
    """Official ``.pth.tar`` (``state_dict`` and ``state_dict_ema``) or raw dict -> our keys.

    ``ema=True`` takes ``state_dict_ema`` (the EMA 0.9995 weights the trainer also evaluates).
    """
    if ema:
        if "state_dict_ema" not in checkpoint:
            raise RuntimeError("convert_official(ema=True): the checkpoint has no 'state_dict_ema' "
                               f"(top-level keys: {sorted(checkpoint)[:10]}); pass ema=False")
        state_dict = dict(checkpoint["state_dict_ema"])
    else:
        state_dict = extract_state_dict(checkpoint)
    return checkpoint_filter_fn(state_dict, model)


# --- registration -------------------------------------------------------------------------------

_RELEASE = "https://github.com/ysj9909/FFNet/releases/download/v1.0/"


def _cfg(file: str = "", **kwargs) -> Dict:
    return {"url": _RELEASE + file if file else "", "num_classes": 1000, "input_size": (3, 256, 256),
            "pool_size": (8, 8), "crop_pct": 0.9, "interpolation": "bicubic", "crop_mode": "center",
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "first_conv": "stem.0.conv",
            "classifier": "head", "license": "apache-2.0", "paper_ids": "arXiv:2406.02021", **kwargs}


# Each tag with a file is the model-zoo entry of the same name (model_zoo/ffnet.yaml): the '_ema'
# tags read the EMA weights of the same file. timm.create_model(..., pretrained=True) loads them
# through visionattn.hub (verified download, converter, strict).
_RELEASES = {
    "ffnet_1.in1k": _cfg("ffnet_1.pth.tar"),
    "ffnet_1.in1k_dist": _cfg("ffnet_1_distillation.pth.tar"),
    "ffnet_2.in1k": _cfg("ffnet_2.pth.tar"),
    "ffnet_2.in1k_dist": _cfg("ffnet_2_distillation.pth.tar"),
    "ffnet_3.in1k": _cfg("ffnet_3.pth.tar", crop_pct=0.95),
    "ffnet_3.in1k_dist": _cfg("ffnet_3_distillation.pth.tar", crop_pct=0.95),
    "ffnet_3_384.in1k": _cfg("ffnet_3_384.pth.tar", input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    "ffnet_4_384.in1k": _cfg("ffnet_4_384.pth.tar", input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
}
default_cfgs = generate_default_cfgs({
    **{tag: cfg for name, cfg in _RELEASES.items() for tag in (name, f"{name}_ema")},
    "ffnet_4.untrained": _cfg(crop_pct=0.95),
})

# depths, dims, ffn_kernels, layer scale, default drop path (official model functions)
_ARCHS = {
    "ffnet_1": dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), ffn_kernels=(3, 3, 3, 3), drop_path_rate=0.1),
    "ffnet_2": dict(depths=(3, 3, 15, 3), dims=(88, 176, 352, 704), ffn_kernels=(7, 7, 7, 7), drop_path_rate=0.15),
    "ffnet_3": dict(depths=(4, 4, 22, 5), dims=(96, 192, 384, 768), ffn_kernels=(7, 7, 7, 7),
                    layer_scale_init_value=1e-6, drop_path_rate=0.35),
    "ffnet_4": dict(depths=(4, 4, 27, 3), dims=(128, 256, 512, 1024), ffn_kernels=(7, 7, 7, 7),
                    layer_scale_init_value=1e-6, drop_path_rate=0.4),
}
_ARCHS["ffnet_3_384"] = dict(_ARCHS["ffnet_3"], drop_path_rate=0.4)  # 384 fine-tune recipe
_ARCHS["ffnet_4_384"] = dict(_ARCHS["ffnet_4"], drop_path_rate=0.5)


def _create_ffnet(variant: str, pretrained: bool = False, fuse: bool = False, **kwargs) -> FFNet:
    """``fuse=True`` returns the re-parameterised (deploy) model, after loading ``pretrained`` weights."""
    arch = dict(_ARCHS[variant])
    arch.update(kwargs)
    if arch.get("features_only"):
        arch.setdefault("stage_norm", True)  # the official dense backbones normalise every output
    model = build_timm_model(FFNet, variant, pretrained, family="ffnet",
                             feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"), **arch)
    if fuse:
        for m in list(model.modules()):
            if isinstance(m, FFNet):  # also inside a features_only wrapper
                m.fuse()
    return model


@register_model
def ffnet_1(pretrained: bool = False, **kwargs) -> FFNet:
    """FFNet-1: 13.78M params (13.66M fused), 2.98 GMACs at 256."""
    return _create_ffnet("ffnet_1", pretrained, **kwargs)


@register_model
def ffnet_2(pretrained: bool = False, **kwargs) -> FFNet:
    """FFNet-2: 27.21M params (26.91M fused), 6.00 GMACs at 256."""
    return _create_ffnet("ffnet_2", pretrained, **kwargs)


@register_model
def ffnet_3(pretrained: bool = False, **kwargs) -> FFNet:
    """FFNet-3: 48.82M params (48.33M fused), 10.15 GMACs at 256."""
    return _create_ffnet("ffnet_3", pretrained, **kwargs)


@register_model
def ffnet_4(pretrained: bool = False, **kwargs) -> FFNet:
    """FFNet-4 (released only at 384; the 256 config is the pre-fine-tune architecture)."""
    return _create_ffnet("ffnet_4", pretrained, **kwargs)


@register_model
def ffnet_3_384(pretrained: bool = False, **kwargs) -> FFNet:
    """FFNet-3 fine-tuned at 384: 22.83 GMACs."""
    return _create_ffnet("ffnet_3_384", pretrained, **kwargs)


@register_model
def ffnet_4_384(pretrained: bool = False, **kwargs) -> FFNet:
    """FFNet-4 fine-tuned at 384: 79.87M params (79.20M fused), 43.12 GMACs."""
    return _create_ffnet("ffnet_4_384", pretrained, **kwargs)
