"""MatchStereo / MatchFlow: stereo and optical flow by MatchAttention over relative positions.

Paper: *MatchAttention: Matching the Relative Positions for High-Resolution Cross-View Matching*,
Yan et al., arXiv 2510.14260. Official code (GPL-3.0, inference only): TingmanYan/MatchAttention.
This is an independent implementation; module names follow the official state-dict layout so
its checkpoints load strictly after dropping the dead ``encoder.head`` / ``res_scale`` entries.

Pipeline (both views stacked on the batch axis, ``2B``; feature maps channels-last):
ConvFormer encoder (1/4..1/32) -> global row correlation at 1/32 gives the initial disparity
(or all-pairs correlation: flow) -> at 1/32, 1/16, 1/8, 1/4: ``MatchAttentionLayer`` stacks that
refine the field (disparity as a 2-vector flow) and per-head self offsets through residual
channels -> convex upsampling x2 between levels and x4 at the end.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_

from ...ops import channel_bias_act as cba
from ...ops.consistency_mask import consistency_mask, pixel_grid
from ...ops.convex_upsample import convex_upsample
from ...ops._triton import can_run, needs_grad
from ...ops.depthwise_glu import depthwise_glu
from ...ops.group_norm_act import group_norm_act, resolve_impl
from ...ops.layer_norm import layer_norm
from ...ops.match_attention import IMPLS as MATCH_IMPLS
from ...ops.match_attention import match_attention
from ..drop_path import DropPath
from ..pointwise import pointwise
from ..derived_tensor import DerivedTensor
from ..input_contract import (FLOAT_DTYPES, check_choice, check_divides, check_images, check_ints, check_rate,
                              tracing)
from ...registry import register_converter, register_network

MIN_SIZE = 192  # the 1/32 map must hold the 6x6 window of radius 2
PAD_MULTIPLE = 32  # H and W of the network's input (visionattn.inference pads other sizes)
INPUT_DTYPES = (torch.uint8,) + FLOAT_DTYPES + (torch.float64,)  # values in [0, 255], cast to the network's dtype


def _linspace(end: float, n: int) -> List[float]:
    """Stochastic-depth rates 0..end (plain Python: works under a meta-device context)."""
    return [end * i / max(n - 1, 1) for i in range(n)]


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` without bias over the last axis, through ``visionattn.ops.layer_norm``
    (one-pass Triton kernel for the odd widths C+2+2h / C+2 and strided channel slices)."""

    def __init__(self, dim: int, eps: float):
        super().__init__(dim, eps=eps, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, None, self.eps)


ROW_ALIGN = 8  # elements: 16-byte rows in half precision


def aligned(n: int) -> int:
    """``n`` rounded up to a multiple of ``ROW_ALIGN``."""
    return -(-n // ROW_ALIGN) * ROW_ALIGN


def norm_aligned(norm: LayerNorm, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
    """``torch.cat((norm(x), *extra), -1)`` with zero channels appended up to a multiple of ``ROW_ALIGN``.

    The decoder's token widths (C+2, C+3+2h) are not multiples of 8; cuBLAS runs a GEMM whose rows
    are not 16-byte aligned with slower kernels, so the GEMM inputs are padded with zeros (the
    weights with zero columns, see :func:`linear_aligned`): the same products, aligned rows. The
    LayerNorm writes its rows at the aligned width directly (``layer_norm(..., width=)``), and the
    extra channels are copied into them: no concatenation pass over the map.
    """
    D = x.shape[-1]
    y = layer_norm(x, norm.weight, norm.bias, norm.eps, width=aligned(D + sum(e.shape[-1] for e in extra)))
    for e in extra:
        y[..., D:D + e.shape[-1]] = e
        D += e.shape[-1]
    return y


def aligned_weight(weight: torch.Tensor, width: int) -> torch.Tensor:
    """``weight`` (out, in) with zero columns up to ``width`` and zero rows up to ``aligned(out)``: the
    operand of :func:`linear_aligned` for rows ``width`` wide."""
    out_features, in_features = weight.shape
    return F.pad(weight, (0, width - in_features, 0, aligned(out_features) - out_features))


def prepared_weight(cache: DerivedTensor, params: Sequence[torch.Tensor], width: int,
                    matrix: Optional[Callable[[], torch.Tensor]] = None) -> torch.Tensor:
    """:func:`aligned_weight` of ``matrix()`` (default: ``params`` stacked by rows), kept in ``cache``
    between no-grad calls and rebuilt (differentiably) under autograd: otherwise every GEMM of every
    call would launch its own small concatenation and pad kernels (a launch-bound cost at KITTI size)."""
    def build():
        return aligned_weight(matrix() if matrix is not None else torch.cat(tuple(params)), width)

    if needs_grad(*params):
        return build()
    weight = cache.get(params, build)
    if weight.shape[1] != width:  # rows of another width than the cached operand's
        cache.clear()
        weight = cache.get(params, build)
    return weight


def linear_aligned(x: torch.Tensor, weight: torch.Tensor, out_features: int,
                   accumulate: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x[..., :in], W)`` for an ``x`` zero-padded past W's ``in`` columns (:func:`norm_aligned`),
    with ``weight = aligned_weight(W, x.shape[-1])`` (W's ``out_features`` rows followed by zero rows):
    the output is computed ``aligned(out)`` wide and returned as a view of its first ``out_features``
    channels, so every GEMM operand has 16-byte rows.

    ``accumulate`` (..., >= aligned(out)), rows of unit channel stride: the product is added to its
    first channels in place instead (the residual add inside the GEMM, cuBLAS's beta = 1; the zero
    rows add exact zeros to the channels from ``out`` to ``aligned(out)``), and it is returned.
    Inference only (no autograd through it)."""
    if accumulate is not None:
        rows = accumulate[..., :weight.shape[0]]
        rows.view(-1, rows.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]), weight.t())
        return accumulate
    y = F.linear(x, weight)
    return y[..., :out_features] if y.shape[-1] != out_features else y


def field_outputs(field: torch.Tensor, task: str, threshold: float) -> Dict[str, torch.Tensor]:
    """The per-pixel outputs read off a stacked full-resolution field (2B, 2, H, W) (first view first).

    ``field``; ``consistency`` (B, 1, H, W) bool: the forward-backward check of the first view passed
    (threshold ``threshold`` px); stereo: ``disparity`` / ``disparity_right`` (B, 1, H, W) >= 0; flow:
    ``flow`` / ``flow_backward`` (B, 2, H, W). Used by the forward and, after cropping padding off the
    field, by ``visionattn.inference.predict_stereo``.
    """
    B = field.shape[0] // 2
    consistent = consistency_mask(field.permute(0, 2, 3, 1), threshold)
    out = {"field": field, "consistency": consistent[:B].permute(0, 3, 1, 2) > 0}
    if task == "stereo":
        out["disparity"] = (-field[:B, :1]).clamp(min=0)
        out["disparity_right"] = field[B:, :1].clamp(min=0)
    else:
        out["flow"], out["flow_backward"] = field[:B], field[B:]
    return out


def updates_in_place(module: nn.Module, *inputs: torch.Tensor) -> bool:
    """Whether ``module`` may update its residual stream in place, the residual adds inside the closing
    GEMMs (cuBLAS's beta = 1): CUDA inference (the CPU runs the written formulas, the ground truth of the
    tests), no path dropped. The stream is a tensor the caller made for it, never a caller's input."""
    dropping = module.training and any(isinstance(m, DropPath) for m in module.modules())
    return can_run(inputs[0]) and not needs_grad(*inputs, *module.parameters()) and not dropping


#: dtypes in which :func:`conv_bias_apart` takes the convolutions apart. In float32 the first CUDA run
#: failed ``test_cuda_triton_path_matches_reference`` (fields more than 0.05 px from the reference path;
#: the cause was not established: there the 1x1 convs become full-precision cuBLAS GEMMs while cuDNN's
#: convolutions compute in TF32), so float32 keeps the modules
BIAS_APART_DTYPES = (torch.float16, torch.bfloat16)


def conv_bias_apart(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for an ``nn.Conv2d`` / ``nn.ConvTranspose2d``, its bias added apart from cuDNN on a
    half-precision channels_last map where ``channel_bias_act`` takes its kernel and no gradient is needed.

    cuDNN leaves a convolution's bias to PyTorch, whose broadcast add over a channels_last map is a
    strided, unvectorised pass (the 20 of them in MatchStereo-B's 4K forward took 3.5 ms on an H200).
    Here a 1x1 conv is a GEMM with the bias in its epilogue (:func:`pointwise`) and any other adds
    it in ``channel_bias_act``'s one vectorised pass. Elsewhere the module runs.
    """
    if (conv.bias is None or conv.padding_mode != "zeros" or x.dim() != 4 or x.dtype not in BIAS_APART_DTYPES
            or needs_grad(x, *conv.parameters()) or not x.is_contiguous(memory_format=torch.channels_last)
            or cba.resolve_impl(x) != "triton"):
        return conv(x)
    if isinstance(conv, nn.ConvTranspose2d):
        y = F.conv_transpose2d(x, conv.weight, None, conv.stride, conv.padding, conv.output_padding, conv.groups,
                               conv.dilation)
    elif conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1:
        return pointwise(x, conv.weight, conv.bias)
    else:
        y = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return cba.channel_bias_act(y, conv.bias)


class ConvSequence(nn.Sequential):
    """An ``nn.Sequential`` of convolutions and activations whose convolutions run by
    :func:`conv_bias_apart` (same modules and state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self:
            x = conv_bias_apart(module, x) if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) else module(x)
        return x


# --- encoder: ConvFormer (MetaFormer with separable-conv token mixer) ---------------------------

class SepConv(nn.Module):
    """Inverted separable conv token mixer on (B, H, W, C): Linear -> GELU -> DW3x3 -> Linear."""

    def __init__(self, dim: int, expansion: int = 2):
        super().__init__()
        hidden = dim * expansion
        self.pwconv1 = nn.Linear(dim, hidden, bias=False)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.pwconv2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.pwconv1(x))
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.pwconv2(x)


class ConvFormerBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim, 1e-6)
        self.token_mixer = SepConv(dim)
        self.norm2 = LayerNorm(dim, 1e-6)
        self.mlp = Mlp(dim, 2 * dim, bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.token_mixer(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_in_place(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` adding both residuals into ``x`` (contiguous, owned by the caller's stage) inside
        the GEMMs of ``pwconv2`` and ``fc2`` (beta = 1): no residual-add pass over the map. Inference only
        (:func:`updates_in_place`); same values, in half precision rounded once instead of twice."""
        rows = x.view(-1, x.shape[-1])
        mixer, mlp = self.token_mixer, self.mlp
        h = mixer.act(mixer.pwconv1(self.norm1(x)))
        h = mixer.dwconv(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # channels-last in and out
        rows.addmm_(h.reshape(-1, h.shape[-1]), mixer.pwconv2.weight.t())
        h = mlp.act(mlp.fc1(self.norm2(x)))  # timm's Mlp: its dropouts and norm are identities here
        rows.addmm_(h.reshape(-1, h.shape[-1]), mlp.fc2.weight.t())
        return x


class Downsample(nn.Module):
    """LayerNorm then strided 3x3 conv, on (B, H, W, C)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.pre_norm = LayerNorm(in_dim, 1e-6)
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bias_apart(self.conv, self.pre_norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def stem_forward(stem: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The encoder's stem, (conv, InstanceNorm, GELU) twice, on (B, 3, H, W) images.

    Where :func:`group_norm_act` takes its kernel and no gradient is needed, each InstanceNorm + GELU
    is one call of it (one group per channel), which also adds the convolution's bias: PyTorch runs
    instance norm as a batch norm of a reshaped map, and GELU and the conv bias as passes of their own
    (the two norms alone took 4.1 ms of a 4K MatchStereo-T forward on an H200). Elsewhere the modules run.
    """
    convs, norms = (stem[0], stem[3]), (stem[1], stem[4])
    plain = any(n.affine or n.track_running_stats for n in norms)
    if plain or resolve_impl(x) != "triton" or needs_grad(x, *(p for c in convs for p in c.parameters())):
        return stem(x)
    if x.dtype in (torch.float16, torch.bfloat16):
        # channels-last from the images on: cuDNN then runs both convolutions on NHWC maps (on the NCHW
        # images the first took its generic kernel), and the encoder's (B, H, W, C) rows are the output
        # itself. Not in float32: there the NHWC path moved a random T's fields by > 0.05 px from the
        # modules' NCHW path on an H200, likely cuDNN's NHWC kernels computing in TF32 (PyTorch allows
        # it for convolutions by default); float32 keeps the layout it was checked with
        x = x.contiguous(memory_format=torch.channels_last)
    for conv, norm in zip(convs, norms):
        x = F.conv2d(x, conv.weight, None, conv.stride, conv.padding)
        x = group_norm_act(x, x.shape[1], eps=norm.eps, act="gelu", input_bias=conv.bias)
    return x


class ConvFormerEncoder(nn.Module):
    """Images (B, 3, H, W) -> features (B, H/s, W/s, C_s) at s = 4, 8, 16, 32."""

    def __init__(self, dims: Sequence[int], depths: Sequence[int] = (2, 2, 6, 2), drop_path_rate: float = 0.0):
        super().__init__()
        self.dims = tuple(dims)
        stem = nn.Sequential(
            nn.Conv2d(3, dims[0] // 2, 3, stride=2, padding=1), nn.InstanceNorm2d(dims[0] // 2), nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1), nn.InstanceNorm2d(dims[0]), nn.GELU())
        self.downsample_layers = nn.ModuleList([stem] + [Downsample(dims[i - 1], dims[i]) for i in range(1, 4)])
        rates = _linspace(drop_path_rate, sum(depths))
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.stages.append(nn.ModuleList([ConvFormerBlock(dims[i], rates[start + j]) for j in range(depth)]))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        feats = []
        for i, (down, stage) in enumerate(zip(self.downsample_layers, self.stages)):
            x = stem_forward(down, x) if i == 0 else down(x)
            if i == 0:
                x = x.permute(0, 2, 3, 1)
                if x.is_cuda:
                    # the stem's map as (B, H, W, C) rows (free when stem_forward's kernel path made it
                    # channels-last): as a permuted NCHW view, the first stage's LayerNorms miss the row
                    # kernel (PyTorch copies, 5.8 ms of a 4K T forward) and its residual adds run strided.
                    # On the CPU the view stays (same values, the official layout for later convolutions)
                    x = x.contiguous()
            in_place = updates_in_place(self, x) and x.is_contiguous()  # x: made by the stem / downsample
            for block in stage:
                x = block.forward_in_place(x) if in_place else block(x)
            feats.append(x)
        return feats


# --- initial matching at 1/32 ----------------------------------------------------------------

def _local_expectation(prob: torch.Tensor, blurred: torch.Tensor, positions: torch.Tensor,
                       k: int = 5) -> torch.Tensor:
    """Expectation of ``positions`` over a k-window around the argmax of ``blurred``.

    prob, blurred: (..., D) probabilities; positions: (D, P) coordinates of the D candidates.
    Candidates with probability below 1/D are dropped before renormalising. Returns (..., P).
    """
    D = prob.shape[-1]
    r = k // 2
    centre = blurred.argmax(dim=-1, keepdim=True).clamp(r, D - 1 - r)  # (..., 1)
    idx = centre + torch.arange(-r, r + 1, device=prob.device)  # (..., k)
    p = prob.gather(-1, idx)
    p = torch.where(p < 1.0 / D, torch.zeros_like(p), p)
    p = p / p.sum(-1, keepdim=True).clamp(min=torch.finfo(p.dtype).tiny)
    return (p.unsqueeze(-1) * positions[idx]).sum(-2)


class GlobalCorrelation(nn.Module):
    """Initial field at 1/32 from a softmax over all candidates, refined by a local expectation.

    Stereo: correlation along rows; candidate ``d`` of a left pixel ``x`` is right pixel ``x-d``
    (of a right pixel: left pixel ``x+d``); candidates outside the image get logit 0 and, after
    the softmax over ``d``, the probability of the first column where ``d`` is visible. Flow:
    all-pairs correlation, the argmax taken after a 5x5 mean filter over the (HW, HW) matrix
    (the official model's choice, kept for weight compatibility).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = LayerNorm(dim, 1e-5)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.scale = dim ** -0.5

    def forward(self, x: torch.Tensor, stereo: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (2B, h, w, C) -> field (2B, h, w, 2), cost volume ((2B, w, h, w) stereo or (2B, h, w, hw) flow)."""
        x = self.norm(x)
        ref, tgt = x.chunk(2, dim=0)
        ref, tgt = self.q(ref), self.k(tgt)
        B, H, W, C = ref.shape
        if stereo:
            return self._stereo(ref, tgt)
        return self._flow(ref, tgt)

    def _stereo(self, ref, tgt):
        B, H, W, C = ref.shape
        corr = ref @ tgt.transpose(-2, -1) * self.scale  # (B, H, W_left, W_right)
        x = torch.arange(W, device=ref.device).view(W, 1)
        d = torch.arange(W, device=ref.device).view(1, W)
        left_idx, right_idx = x - d, x + d  # (W, D) partner column of candidate d
        # left view: volume[b, d, h, x] = corr[b, h, x, x-d]; right view: corr[b, h, x+d, x]
        left = corr.gather(3, left_idx.clamp(min=0).expand(B, H, W, W))
        right = corr.transpose(2, 3).gather(3, right_idx.clamp(max=W - 1).expand(B, H, W, W))
        left = torch.where(left_idx >= 0, left, torch.zeros_like(left))
        right = torch.where(right_idx <= W - 1, right, torch.zeros_like(right))
        prob = torch.cat((left, right), 0).softmax(dim=-1)  # (2B, H, W, D)
        # out-of-view candidates copy the probability of the first column where they are visible
        fill_left = torch.maximum(x, d).expand(W, W)  # column used for (x, d)
        fill_right = torch.minimum(x, W - 1 - d).expand(W, W)
        prob = torch.cat((self._take_column(prob[:B], fill_left), self._take_column(prob[B:], fill_right)), 0)
        blurred = F.avg_pool1d(prob.reshape(-1, 1, W), 5, stride=1, padding=2).view(prob.shape)
        disp = _local_expectation(prob, blurred, torch.arange(W, device=ref.device, dtype=prob.dtype).view(W, 1))
        sign = torch.ones(2 * B, 1, 1, 1, device=ref.device, dtype=prob.dtype)
        sign[:B] = -1  # left view moves left
        field = torch.cat((disp * sign, torch.zeros_like(disp)), dim=-1)
        return field, prob.permute(0, 3, 1, 2)

    @staticmethod
    def _take_column(prob: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
        """prob (B, H, W, D); out[b, h, x, d] = prob[b, h, column[x, d], d]."""
        B, H, W, D = prob.shape
        flat = prob.transpose(2, 3)  # (B, H, D, W)
        return flat.gather(3, column.t().expand(B, H, D, W)).transpose(2, 3)

    def _flow(self, ref, tgt):
        B, H, W, C = ref.shape
        corr = ref.reshape(B, H * W, C) @ tgt.reshape(B, H * W, C).transpose(1, 2) * self.scale
        prob = torch.cat((corr, corr.transpose(1, 2)), 0).softmax(dim=-1)  # (2B, HW, HW)
        blurred = F.avg_pool2d(prob, 5, stride=1, padding=2)
        grid = pixel_grid(H, W, prob).view(H * W, 2)
        D = H * W
        r = 2
        top = blurred.argmax(-1, keepdim=True)
        cy = (top // W).clamp(r, H - 1 - r)
        cx = (top % W).clamp(r, W - 1 - r)
        off = torch.arange(-r, r + 1, device=ref.device)
        idx = ((cy.unsqueeze(-1) + off.view(5, 1)) * W + cx.unsqueeze(-1) + off).flatten(-2)  # (2B, HW, 25)
        p = prob.gather(-1, idx)
        p = torch.where(p < 1.0 / D, torch.zeros_like(p), p)
        p = p / p.sum(-1, keepdim=True).clamp(min=torch.finfo(p.dtype).tiny)
        match = (p.unsqueeze(-1) * grid[idx]).sum(-2)  # (2B, HW, 2)
        field = (match - grid).view(2 * B, H, W, 2).to(prob.dtype)
        return field, prob.view(2 * B, H, W, D)


# --- decoder ---------------------------------------------------------------------------------

class MatchAttention(nn.Module):
    """Self or cross MatchAttention on (2B, H, W, dim) tokens.

    Self: keys from the same view, centres ``pixel + per-head offset``, the consistency mask as an
    extra input channel. Cross: queries from each view, keys/values from the other, centres
    ``pixel + field``; output gated by SiLU(g(x)) and concatenated with the attention weights
    before the projection (so the projection sees the matching distribution).
    """

    def __init__(self, dim: int, out_dim: int, radius: int, num_heads: int, head_dim: int, cross: bool,
                 attn_impl: str = "auto"):
        super().__init__()
        self.radius, self.num_heads, self.cross, self.attn_impl = radius, num_heads, cross, attn_impl
        inner = num_heads * head_dim
        window = (2 * radius + 2) ** 2
        self.q = nn.Linear(dim, inner, bias=False)
        self.k = nn.Linear(dim, inner, bias=False)
        self.v = nn.Linear(dim, inner, bias=False)
        if cross:
            # the official layout (state-dict key g.0); forward passes g.0's output to
            # match_attention(gate=), which applies the SiLU
            self.g = nn.Sequential(nn.Linear(dim, inner, bias=False), nn.SiLU())
            self.proj = nn.Linear(inner + num_heads * window, out_dim, bias=False)
        else:
            self.proj = nn.Linear(inner, out_dim, bias=False)
        # the GEMM operands (q, k, v (, g) stacked; the projection), aligned: see prepared_weight
        self.qkv_weight, self.proj_weight = DerivedTensor(), DerivedTensor()

    def forward(self, x: torch.Tensor, centers: torch.Tensor, accumulate: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """x (2B, H, W, dim), possibly zero-padded past ``dim`` (:func:`norm_aligned`), centers
        (2B, H*W, heads, 2) -> (2B, H, W, out_dim) (a view of an aligned-width output).

        ``accumulate`` (2B, H, W, >= aligned(out_dim)): the projection is added into it in place and it
        is returned (:func:`linear_aligned`). Inference only (no autograd through it)."""
        B, H, W, width = x.shape
        x = x.reshape(B, H * W, width)
        # one GEMM for q, k, v (and the gate's pre-activation): the op reads them as column slices;
        # cross attention takes k/v of the other view through kv_batch_shift instead of a swapped
        # copy (k(swap(x)) == swap(k(x)): the projections act per token).
        weights = (self.q.weight, self.k.weight, self.v.weight) + ((self.g[0].weight,) if self.cross else ())
        projected = linear_aligned(x, prepared_weight(self.qkv_weight, weights, width),
                                   len(weights) * self.q.out_features)
        q, k, v, *gate = projected.split(self.q.out_features, dim=-1)  # gate: [g's pre-activation] if cross
        del projected
        if not self.cross:
            out = match_attention(q, k, v, centers, (H, W), self.radius, impl=self.attn_impl)
            return self._project(out, accumulate).reshape(B, H, W, -1)
        # the projection reads [SiLU(g) * attention output, attention weights]
        args = (q, k, v, centers, (H, W), self.radius)
        kwargs = dict(return_attn=True, impl=self.attn_impl, kv_batch_shift=B // 2, gate=gate[0])
        if needs_grad(x, centers, *self.parameters()):
            out, attn = match_attention(*args, **kwargs)
            out = torch.cat((out, attn.reshape(B, H * W, -1)), dim=-1)
        else:  # the op writes both into one buffer (the kernel applies the gate before its store)
            used = self.proj.in_features
            out = x.new_empty(B, H * W, aligned(used))
            out[..., used:].zero_()  # the weight's zero alignment columns must not meet NaN
            match_attention(*args, **kwargs, out=out)
        return self._project(out, accumulate).reshape(B, H, W, -1)

    def _project(self, out: torch.Tensor, accumulate: Optional[torch.Tensor]) -> torch.Tensor:
        weight = prepared_weight(self.proj_weight, (self.proj.weight,), out.shape[-1])
        return linear_aligned(out, weight, self.proj.out_features, accumulate)


class ConvGLU(nn.Module):
    """Convolutional GLU on (B, H, W, C): fc1 -> (DW3x3 -> GELU) * gate -> fc2."""

    def __init__(self, dim: int, ratio: int = 2):
        super().__init__()
        hidden = dim * ratio
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.fc2_with_bias = DerivedTensor()  # fc2's weight with its bias as a column, see _fc2_into

    def forward(self, x: torch.Tensor, accumulate: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``accumulate`` (..., >= dim) rows of unit channel stride: fc2's output is added to its first
        ``dim`` channels in place (the residual add inside the GEMM) and it is returned. Inference only."""
        # the conv branch and the gate are fc1's two halves; one kernel (on CUDA) convolves the first,
        # applies GELU and multiplies by the second, writing into the gate half when no gradient is
        # needed (no hidden-size tensor besides fc1's output is allocated: peak memory at 4K)
        h = self.fc1(x)
        inplace = not (torch.is_grad_enabled() and h.requires_grad)
        y = depthwise_glu(h, self.dwconv.weight, self.dwconv.bias, inplace=inplace)
        if accumulate is not None and inplace and y.shape[-1] >= ROW_ALIGN:
            return self._fc2_into(h, accumulate)
        # fc2 on the (tokens, hidden) rows: a 2-D input keeps the bias in the GEMM (F.linear adds it in
        # a pass of its own for a strided N-D input such as the gate-half view)
        out = self.fc2(y.reshape(-1, y.shape[-1])).view(*y.shape[:-1], -1)
        if accumulate is not None:
            accumulate[..., :out.shape[-1]] += out
            return accumulate
        return out

    def _fc2_into(self, h: torch.Tensor, accumulate: torch.Tensor) -> torch.Tensor:
        """``accumulate[..., :dim] += fc2(y)`` for the GLU's output ``y`` in ``h``'s gate half, in one GEMM.

        cuBLAS adds into its output (beta = 1) but takes no bias then; the bias becomes a weight column
        instead. The last ``ROW_ALIGN`` channels of the conv half, consumed by the GLU, are set to 1 and
        the GEMM reads them with the gate half, against weight columns ``0, ..., 0, bias``: a 16-byte
        aligned operand, and no pass over the stream besides the GEMM (one narrow fill)."""
        hidden = h.shape[-1] // 2
        h[..., hidden - ROW_ALIGN:hidden].fill_(1)
        weight, bias = self.fc2.weight, self.fc2.bias
        weight = prepared_weight(self.fc2_with_bias, (weight, bias), ROW_ALIGN + hidden, lambda: torch.cat(
            (weight.new_zeros(weight.shape[0], ROW_ALIGN - 1), bias[:, None], weight), 1))
        return linear_aligned(h[..., hidden - ROW_ALIGN:], weight, self.fc2.out_features, accumulate)


class MatchAttentionLayer(nn.Module):
    """Self-MatchAttention, cross-MatchAttention and ConvGLU, each pre-norm residual.

    The field (2 channels, scaled by a learnt ``field_scale``) and the per-head self offsets (2h)
    ride along as extra channels of the residual stream, so each attention refines them.
    """

    def __init__(self, dim: int, radius: int, num_heads: int, head_dim: int, drop_path: float = 0.0,
                 consistency_threshold: float = 2.0, attn_impl: str = "auto"):
        super().__init__()
        self.num_heads = num_heads
        self.consistency_threshold = consistency_threshold
        self_dim = dim + 2 + 2 * num_heads
        self.match_attention_self = MatchAttention(self_dim + 1, self_dim, radius, num_heads, head_dim, False, attn_impl)
        self.norm0 = LayerNorm(self_dim, 1e-5)
        self.match_attention_cross = MatchAttention(dim + 2, dim + 2, radius, num_heads, head_dim, True, attn_impl)
        self.norm1 = LayerNorm(dim + 2, 1e-5)
        self.mlp = ConvGLU(dim)
        self.norm2 = LayerNorm(dim, 1e-5)
        self.field_scale = nn.Parameter(torch.full((1, 1, 1, 2), 0.1))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _read_field(self, x: torch.Tensor, stereo: bool) -> torch.Tensor:
        """Zero the vertical field channel (the last one of ``x``, in place) for stereo; return the field."""
        if stereo:
            x[..., -1] = 0
        return x[..., -2:] / self.field_scale.to(x.dtype)

    def forward_in_place(self, stream: torch.Tensor, field: torch.Tensor, stereo: bool, grid: torch.Tensor):
        """:meth:`forward` on the residual stream ``stream`` (2B, H, W, >= aligned(C + 2 + 2h)) =
        ``[x, field channels, self_rpos, zeros]``, updated in place; ``field``: the previous layer's.
        Returns field and {'self', 'cross'}. Inference only (CUDA, no autograd, no dropped paths).

        What it saves against :meth:`forward`: the concatenation of the stream at each layer, the copy
        of the self offsets, and the three residual adds, which the projections' GEMMs and the ConvGLU's
        fc2 do (``accumulate=``). Same values in float32; in half precision the GEMM's float32 sum and
        the residual are rounded once instead of twice.
        """
        B, H, W, _ = stream.shape
        h, C = self.num_heads, self.mlp.fc2.out_features
        torch.mul(field, self.field_scale.to(field.dtype), out=stream[..., C:C + 2])  # no temporary
        noc = consistency_mask(field, self.consistency_threshold, dtype=stream.dtype, grid=grid)
        wide = stream[..., :C + 2 + 2 * h]
        centers = (wide[..., C + 2:].view(B, H, W, h, 2) + grid.unsqueeze(2)).view(B, H * W, h, 2)
        self.match_attention_self(norm_aligned(self.norm0, wide, noc), centers, accumulate=stream)
        field = self._read_field(stream[..., :C + 2], stereo)
        out = {"self": field}
        centers = (field + grid).view(B, H * W, 1, 2).expand(B, H * W, h, 2)
        self.match_attention_cross(norm_aligned(self.norm1, stream[..., :C + 2]), centers, accumulate=stream)
        field = self._read_field(stream[..., :C + 2], stereo)
        out["cross"] = field
        self.mlp(self.norm2(stream[..., :C]), accumulate=stream)
        return field, out

    def forward(self, x, self_rpos, field, stereo: bool = True, grid: Optional[torch.Tensor] = None):
        """x (2B, H, W, C), self_rpos (2B, H, W, 2h), field (2B, H, W, 2); ``grid``: ``pixel_grid(H, W)``.

        Returns x, self_rpos, field and {'self': field after self-attn, 'cross': after cross-attn}.
        """
        B, H, W, C = x.shape
        h = self.num_heads
        grid = pixel_grid(H, W, field) if grid is None else grid
        noc = consistency_mask(field, self.consistency_threshold, dtype=x.dtype, grid=grid)
        x = torch.cat((x, field * self.field_scale.to(field.dtype), self_rpos), dim=-1)
        # centres in float32 whatever the model dtype (positions need more than 8 mantissa bits): the
        # grid is float32 (float64 for a float64 model), and the sum takes the wider dtype in one pass
        centers = (self_rpos.view(B, H, W, h, 2) + grid.unsqueeze(2)).view(B, H * W, h, 2)
        x = x + self.drop_path(self.match_attention_self(norm_aligned(self.norm0, x, noc), centers))
        self_rpos = x[..., -2 * h:].contiguous()  # small copy; the wide tensor is freed after this layer
        x = x[..., :-2 * h]
        field = self._read_field(x, stereo)
        out = {"self": field}
        centers = (field + grid).view(B, H * W, 1, 2).expand(B, H * W, h, 2)
        x = x + self.drop_path(self.match_attention_cross(norm_aligned(self.norm1, x), centers))
        field = self._read_field(x, stereo)
        out["cross"] = field
        x = x[..., :-2]
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, self_rpos, field, out


class MatchAttentionBlock(nn.Module):
    def __init__(self, dim, radius, num_layers, num_heads, head_dim, drop_paths, attn_impl="auto"):
        super().__init__()
        self.num_heads = num_heads
        self.layers = nn.ModuleList([
            MatchAttentionLayer(dim, radius, num_heads, head_dim, drop_paths[i], attn_impl=attn_impl)
            for i in range(num_layers)])

    def forward(self, x, self_rpos, field, stereo=True):
        """self_rpos (2B, H, W, 2) is shared by the heads on entry and averaged over them on exit."""
        B, H, W, C = x.shape
        h = self.num_heads
        self_rpos = self_rpos.repeat(1, 1, 1, h)
        grid = pixel_grid(H, W, field)  # once per level
        fields = []
        if updates_in_place(self, x, field):
            # [x, field channels (each layer writes them), self_rpos, zeros up to a 16-byte row]
            stream = x.new_zeros(B, H, W, aligned(C + 2 + 2 * h))
            stream[..., :C] = x
            stream[..., C + 2:C + 2 + 2 * h] = self_rpos
            for layer in self.layers:
                field, out = layer.forward_in_place(stream, field, stereo, grid)
                fields.append(out)
            x, self_rpos = stream[..., :C].contiguous(), stream[..., C + 2:C + 2 + 2 * h]
        else:
            for layer in self.layers:
                x, self_rpos, field, out = layer(x, self_rpos, field, stereo, grid)
                fields.append(out)
        return x, self_rpos.view(B, H, W, h, 2).mean(-2), field, fields


class UpConv(nn.Module):
    """Transposed conv x2 of the coarse map, concatenated after the skip feature, 1x1 + ReLU + 3x3."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_dim, out_dim, 2, stride=2)
        self.conv = ConvSequence(nn.Conv2d(2 * out_dim, out_dim, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(out_dim, out_dim, 3, padding=1))

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """coarse (B, h, w, Cin), skip (B, 2h, 2w, Cout) -> (B, 2h, 2w, Cout)."""
        up = conv_bias_apart(self.up, coarse.permute(0, 3, 1, 2))
        x = self.conv(torch.cat((skip.permute(0, 3, 1, 2), up), 1))
        return x.permute(0, 2, 3, 1)


def _mask_head(dim: int, hidden: int, factor: int) -> ConvSequence:
    return ConvSequence(nn.Conv2d(dim, hidden, 3, padding=1), nn.ReLU(inplace=True),
                        nn.Conv2d(hidden, 9 * factor * factor, 1))


def _check_args(dims, depths, num_layers, radii, num_heads, drop_path_rate, consistency_threshold, attn_impl):
    """Constructor arguments, each with its name, value and allowed range (four levels each)."""
    owner = "MatchStereo"
    check_ints(owner, "dims", dims, minimum=1, length=4)
    check_ints(owner, "depths", depths, minimum=1, length=4)
    check_ints(owner, "num_layers", num_layers, minimum=1, length=4)
    check_ints(owner, "radii", radii, minimum=0, length=4)
    check_ints(owner, "num_heads", num_heads, minimum=1, length=4)
    for i, (dim, heads) in enumerate(zip(list(dims)[::-1], num_heads)):
        check_divides(owner, f"num_heads[{i}]", heads, f"dims[{3 - i}] (the level's channels)", dim)
    check_rate(owner, "drop_path_rate", drop_path_rate)
    if isinstance(consistency_threshold, bool) or not isinstance(consistency_threshold, (int, float)) \
            or not consistency_threshold > 0:
        raise ValueError(f"{owner}: consistency_threshold={consistency_threshold!r} is out of range; it must be a "
                         f"number of pixels > 0")
    check_choice(owner, "attn_impl", attn_impl, ("auto",) + MATCH_IMPLS)


class MatchStereo(nn.Module):
    """MatchStereo (``task='stereo'``) / MatchFlow (``task='flow'``).

    ``model(left, right)``: images (B, 3, H, W), RGB, values in [0, 255] (uint8 or float), H and W
    multiples of ``size_multiple`` (32) and at least ``min_size`` (192). Images of any size, with
    their range checked and optionally replayed from a CUDA graph, go through
    ``visionattn.inference.predict_stereo`` / ``predict_disparity`` / ``predict_flow``, which pad
    at the top and right (the official padder's layout) and crop the outputs back. The methods
    ``model.predict_disparity`` / ``model.predict_flow`` that callers used before are shims over
    those functions, attached by ``visionattn.inference`` (networks never import it).

    Returns a dict:
        ``disparity`` (B, 1, H, W) left-view disparity >= 0 (stereo) or ``flow`` (B, 2, H, W);
        ``disparity_right`` / ``flow_backward``: the same for the second view;
        ``field`` (2B, 2, H, W): full-resolution field of both views (left half first);
        ``consistency`` (B, 1, H, W) bool: left-right (forward-backward) check passed, i.e.
        not occluded (threshold ``consistency_threshold`` px);
        training intermediates (channels-last): ``init_field`` (2B, H/32, W/32, 2),
        ``init_cost_volume``, ``fields`` (list of (2B, h, w, 2): every layer's self and cross field
        and each upsampled field, coarse to fine), ``field_up`` (2B, H, W, 2), ``self_rpos``
        (2B, H/4, W/4, 2).
    """

    size_multiple = PAD_MULTIPLE  # the input contract visionattn.inference reads
    min_size = MIN_SIZE

    def __init__(self, dims: Sequence[int], task: str = "stereo", depths: Sequence[int] = (2, 2, 6, 2),
                 num_layers: Sequence[int] = (8, 8, 8, 2), radii: Sequence[int] = (2, 2, 1, 1),
                 num_heads: Sequence[int] = (4, 4, 4, 4), drop_path_rate: float = 0.0,
                 consistency_threshold: float = 8.0, attn_impl: str = "auto"):
        super().__init__()
        if task not in ("stereo", "flow"):
            raise ValueError(f"task must be 'stereo' or 'flow', got {task!r}")
        _check_args(dims, depths, num_layers, radii, num_heads, drop_path_rate, consistency_threshold, attn_impl)
        self.task = task
        self.consistency_threshold = consistency_threshold
        self.encoder = ConvFormerEncoder(dims, depths)
        chans = list(dims)[::-1]  # 1/32 .. 1/4
        self.up_decoders = nn.ModuleList([nn.Identity()] + [UpConv(chans[i - 1], chans[i]) for i in range(1, 4)])
        self.up_masks = nn.ModuleList([nn.Identity()] + [_mask_head(chans[i - 1], chans[i - 1], 2) for i in range(1, 4)]
                                      + [_mask_head(chans[-1], 2 * chans[-1], 4)])
        rates = _linspace(drop_path_rate, sum(num_layers))
        self.match_attentions = nn.ModuleList([
            MatchAttentionBlock(chans[i], radii[i], num_layers[i], num_heads[i], chans[i] // num_heads[i],
                                rates[sum(num_layers[:i]):sum(num_layers[:i + 1])], attn_impl)
            for i in range(4)])
        self.init_correlation_volume = GlobalCorrelation(chans[0])
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _check_shapes(self, left: torch.Tensor, right: torch.Tensor) -> None:
        """The input contract (shapes, dtypes, device; no host synchronisation): values and padding are
        inference's job."""
        like = self.encoder.downsample_layers[0][0].weight
        for name, img in (("left RGB images", left), ("right RGB images", right)):
            check_images(img, network="MatchStereo", channels=3, like=like, casts=True, dtypes=INPUT_DTYPES,
                         multiple=self.size_multiple, min_size=self.min_size, name=name,
                         pad_hint="visionattn.inference.predict_stereo(model, left, right) pads any size and crops "
                                  "the outputs back")
            if img is left and isinstance(right, torch.Tensor) and not tracing(left) and left.shape != right.shape:
                raise ValueError(f"left {tuple(left.shape)} and right {tuple(right.shape)} images differ in shape")

    def forward(self, left: torch.Tensor, right: torch.Tensor,
                init_field: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        self._check_shapes(left, right)
        stereo = self.task == "stereo"
        dtype = self.encoder.downsample_layers[0][0].weight.dtype
        x = 2 * (torch.cat((left, right), 0).to(dtype) / 255.0) - 1  # the official network's normalisation
        feats = self.encoder(x)[::-1]  # 1/32 .. 1/4, channels-last
        fields = []
        init_cv = None
        for i in range(4):
            if i == 0:
                if init_field is None:
                    init_field, init_cv = self.init_correlation_volume(feats[0], stereo)
                field = init_field
                self_rpos = torch.zeros_like(field)
            else:
                mask = self.up_masks[i](feats[i - 1].permute(0, 3, 1, 2))
                feats[i] = self.up_decoders[i](feats[i - 1], feats[i])
                # one mask for both: upsampled together as one 4-channel field
                both = convex_upsample(torch.cat((self_rpos, field), -1), mask, 2)
                self_rpos, field = both[..., :2], both[..., 2:]
                fields.append(field)
            feats[i], self_rpos, field, layer_fields = self.match_attentions[i](feats[i], self_rpos, field, stereo)
            for f in layer_fields:
                fields.extend((f["self"], f["cross"]))
        field_up = convex_upsample(field, self.up_masks[4](feats[3].permute(0, 3, 1, 2)), 4)

        out = field_outputs(field_up.permute(0, 3, 1, 2), self.task, self.consistency_threshold)
        out.update(init_field=init_field, init_cost_volume=init_cv, fields=fields, field_up=field_up,
                   self_rpos=self_rpos)
        return out


# --- variants, registration, official checkpoints --------------------------------------------

VARIANT_DIMS = {"tiny": (32, 64, 128, 160), "small": (64, 128, 160, 320), "base": (128, 256, 320, 512)}
# Parameter counts of the official modules, which also hold an unused 1000-class encoder head and
# unused res_scale vectors; see ``official_param_count``.
OFFICIAL_PARAM_COUNTS = {"tiny": 8_784_528, "small": 25_231_248, "base": 75_448_400}


def official_param_count(model: MatchStereo) -> int:
    """Our parameter count plus the official dead parameters (encoder.head, res_scale1/2 of stages 2-3)."""
    dims, depths = model.encoder.dims, [len(s) for s in model.encoder.stages]
    dead = dims[3] * 1000 + 1000 + 2 * (depths[2] * dims[2] + depths[3] * dims[3])
    return sum(p.numel() for p in model.parameters()) + dead


def _example_inputs(batch_size: int = 1, h: int = 192, w: int = 224):
    """A (left, right) pair in [0, 255]; the right view is the left shifted by 4 px."""
    g = torch.Generator().manual_seed(0)
    left = torch.rand(batch_size, 3, int(h), int(w), generator=g) * 255
    right = torch.roll(left, shifts=-4, dims=-1)
    return left, right


def _register(name: str, variant: str, task: str, checkpoint: str):
    @register_network(name, family="matchstereo", task=task, example_inputs=_example_inputs,
                      paper="arXiv 2510.14260", official_params=OFFICIAL_PARAM_COUNTS[variant],
                      official_checkpoint=checkpoint)
    def build(**kwargs) -> MatchStereo:
        if "task" in kwargs or "dims" in kwargs:
            raise ValueError(f"{name} fixes task={task!r} and dims={VARIANT_DIMS[variant]}; pick the network of "
                             f"the task and size you want (`visionattn.list_models('match*')`)")
        return MatchStereo(VARIANT_DIMS[variant], task=task, **kwargs)

    build.__name__ = name
    build.__doc__ = f"{name}: MatchStereo-{variant[0].upper()} layout, task {task!r} (official {checkpoint})."
    return build


matchstereo_tiny = _register("matchstereo_tiny", "tiny", "stereo", "matchstereo_tiny_fsd.pth")
matchstereo_small = _register("matchstereo_small", "small", "stereo", "matchstereo_small_fsd.pth")
matchstereo_base = _register("matchstereo_base", "base", "stereo", "matchstereo_base_fsd.pth")
matchflow_base = _register("matchflow_base", "base", "flow", "matchflow_base_sintel.pth")


def _is_dead_official_key(key: str) -> bool:
    parts = key.split(".")
    return key.startswith("encoder.head.") or (
        key.startswith("encoder.stages.") and len(parts) == 6 and parts[4] in ("res_scale1", "res_scale2")
        and parts[5] == "scale")


@register_converter("matchstereo")
def convert_official(checkpoint, model: nn.Module, **_) -> Dict[str, torch.Tensor]:
    """Official ``{'model': state_dict}`` -> our state dict, strictly.

    Drops only the parameters the official forward never uses (``encoder.head.*`` and
    ``encoder.stages.*.*.res_scale{1,2}.scale``); every other key must exist in our model with
    the same shape, and every key of ours must be present.
    """
    from ...hub import extract_state_dict

    official = extract_state_dict(checkpoint)
    ours = model.state_dict()
    kept = {k: v for k, v in official.items() if not _is_dead_official_key(k)}
    unexpected = sorted(set(kept) - set(ours))
    missing = sorted(set(ours) - set(kept))
    if unexpected or missing:
        raise RuntimeError(f"official MatchStereo checkpoint does not fit {type(model).__name__}: "
                           f"unexpected {unexpected[:6]}, missing {missing[:6]} (wrong variant?)")
    wrong = [(k, tuple(v.shape), tuple(ours[k].shape)) for k, v in kept.items() if v.shape != ours[k].shape]
    if wrong:
        raise RuntimeError(f"official MatchStereo checkpoint has other shapes (wrong variant?): {wrong[:4]}")
    return kept
