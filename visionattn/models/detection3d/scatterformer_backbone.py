"""ScatterFormer's voxel backbone: CPE, two stages of ScatterFormer blocks, attention pillar pooling.

Voxels (M, 64) at ``[batch, z, y, x]`` -> pillars (P, 128) at ``[batch, y, x]`` on the BEV grid at
half the voxel resolution. The blocks follow the official code (skyhehe123/ScatterFormer), which
differs from the paper in the channel grouping of the cross-window interaction. Module names
mirror the official ones, so OpenPCDet checkpoints map key for key (see ``scatterformer.py``).

Sparse convolutions run on :mod:`.sparse_backend` (spconv on CPU, spconv-triton on GPU); the
attention and the depth-wise convolutions run on the library's ops
(:func:`visionattn.ops.scattered_linear_attention.scattered_linear_attention`,
:func:`visionattn.ops.sparse_depthwise_conv.sparse_depthwise_conv`).
"""
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...cuda_graph import graph_runner
from ...ops.scattered_linear_attention import scattered_linear_attention
from ...ops.sparse_depthwise_conv import sparse_depthwise_conv
from ...ops.submanifold_pairs import submanifold_pairs_many
from . import sparse_backend as sp
from .norms import bn1d as _bn1d


# --- convolutional position encoding (CPE) --------------------------------------------------------

class SparseBasicBlock(nn.Module):
    """Two biased 3x3x3 submanifold convolutions with BatchNorm, residual, ReLU (OpenPCDet's block)."""

    sparse_input = True

    def __init__(self, dim: int, indice_key: str):
        super().__init__()
        self.conv1 = sp.SubMConv3d(dim, dim, 3, padding=1, bias=True, indice_key=indice_key)
        self.bn1 = _bn1d(dim, relu=True)
        self.conv2 = sp.SubMConv3d(dim, dim, 3, padding=1, bias=True, indice_key=indice_key)
        self.bn2 = _bn1d(dim, relu=True)  # relu(bn2(.) + x): the add inside the norm

    def forward(self, x):
        out = self.conv1(x)
        out = out.replace_feature(self.bn1(out.features))
        out = self.conv2(out)
        return out.replace_feature(self.bn2(out.features, residual=x.features))


STEM = 4  # the CPE's first four modules are submanifold: they keep the voxels' rows


class ConvPositionEncoding(sp.SparseSequential):
    """SubMConv 3x3x3 in->dim, three SparseBasicBlocks, then a (3, 1, 1) stride-(2, 1, 1) convolution
    that halves the height (Waymo: z 33 -> 16).

    ``cuda_graph=True`` (CUDA inference, ``torch`` sparse backend) replays the submanifold part from a
    CUDA graph per padded voxel count (:func:`replay_rows`), its neighbour tables built eagerly."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__(
            sp.SparseSequential(sp.SubMConv3d(in_channels, dim, 3, bias=False, indice_key="subm1"),
                                _bn1d(dim, relu=True)),
            SparseBasicBlock(dim, indice_key="stem"),
            SparseBasicBlock(dim, indice_key="stem"),
            SparseBasicBlock(dim, indice_key="stem"),
            sp.SparseSequential(sp.SparseConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False,
                                                indice_key="spconv1"), _bn1d(dim, relu=True)),
        )

    def forward(self, x, cuda_graph: bool = False):
        return self.down(self.submanifold(x, cuda_graph))

    def submanifold(self, x, cuda_graph: bool = False):
        """The submanifold part (the first ``STEM`` modules): the voxels keep their rows."""
        if not (cuda_graph and isinstance(x, sp.SparseTensor)):
            for module in list(self)[:STEM]:
                x = self.apply_module(module, x)
            return x
        tables = sp.submanifold_tables(self.submanifold_part(), x)
        shape = tuple(x.spatial_shape)
        feats = replay_rows(self, f"stem{list(shape)}", lambda cpe, *args: cpe.stem(shape, *args),
                            [x.features, x.indices], tables)
        return x.replace_feature(feats)

    def down(self, x):
        """The strided convolution, BatchNorm and ReLU."""
        for module in list(self)[STEM:]:
            x = self.apply_module(module, x)
        return x

    def submanifold_part(self) -> sp.SparseSequential:
        return sp.SparseSequential(*list(self)[:STEM])

    def stem(self, spatial_shape: Sequence[int], features: torch.Tensor, indices: torch.Tensor,
             *tables: torch.Tensor) -> torch.Tensor:
        """Features after the submanifold part, its convolutions reading the given (K, N) tables (in the
        order of ``sparse_backend.submanifold_keys``); the batch size is not read there."""
        stem = self.submanifold_part()
        x = sp.with_tables(features, indices, spatial_shape, 1, dict(zip(sp.submanifold_keys(stem), tables)))
        return stem(x).features


# --- CUDA-graph replay of the voxel part -------------------------------------------------------------

def padded_rows(n: int) -> int:
    """The row count a graph of ``n`` voxels is captured for: ``n`` rounded up to a multiple of
    ``2 ** (bit_length(n) - 4)`` (at least 256), so one graph serves every count within 1/8 of an octave
    (at most 12.5 % padding, eight graphs per doubling of the voxel count)."""
    step = max(256, 1 << max(int(n).bit_length() - 4, 0))
    return -(-int(n) // step) * step


def pad_rows(n_pad: int, rows: Sequence[torch.Tensor], tables: Sequence[torch.Tensor],
             offsets: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """``[*rows, offsets, *tables]`` padded from N to ``n_pad`` rows: (N, ...) tensors with zero rows, the
    (K, N) neighbour tables with columns that have no neighbour (-1), and the (M+1,) window boundaries
    with one more window that holds the padding rows. No real row reads a padding row (no table points
    at one, no real window holds one), so the real rows compute what they compute unpadded."""
    p = n_pad - rows[0].shape[0]
    out = [F.pad(r, (0, 0) * (r.dim() - 1) + (0, p)) for r in rows]
    if offsets is not None:
        out.append(F.pad(offsets, (0, 1), value=n_pad))
    return out + [F.pad(t, (0, p), value=-1) for t in tables]


def replay_rows(owner: nn.Module, name: str, fn: Callable[..., torch.Tensor], rows: Sequence[torch.Tensor],
                tables: Sequence[torch.Tensor], offsets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``fn(owner, *rows, [offsets], *tables)[:N]`` (an (N', C) result per row), replayed from a CUDA graph.

    The voxel part runs hundreds of small kernels whose sizes follow the voxel count N, so eagerly the
    GPU waits on Python, and a graph captured for one N would rarely serve again. The inputs are padded
    to :func:`padded_rows` (:func:`pad_rows`) and graphs are kept per padded count and autocast dtype
    (eight per ``owner`` and ``name``, sharing one memory pool). Inference only (eval, no grad)."""
    n = rows[0].shape[0]
    args = pad_rows(padded_rows(n), rows, tables, offsets)
    autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
    runner = graph_runner(owner, f"{name}/{autocast}", fn, max_graphs=8, clone_outputs=False, share_pool=True)
    return runner(*args)[:n].clone()  # the graph's output buffer is overwritten by its next replay


# --- window grouping ---------------------------------------------------------------------------------

def group_by_window(indices: torch.Tensor, spatial_shape: Sequence[int], window: int, batch_size: int
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sort voxels by BEV window: (permutation (N,), offsets (batch_size * ny * nx + 1,) int64).

    The window of voxel ``[b, z, y, x]`` is ``(b, y // window, x // window)``: windows span the whole
    height and are not shifted. Offsets cover every window of the grid in (b, wy, wx) order, empty ones
    included (they hold no rows, so the attention is that of the official code's occupied windows from
    ``torch.unique``); a fixed count keeps the GPU from waiting for the number of occupied windows.
    Inside a window voxels keep their input order (a stable sort; the official unstable sort orders
    them differently, which changes rows, not per-voxel results).
    """
    idx = indices.long()
    ny, nx = math.ceil(spatial_shape[1] / window), math.ceil(spatial_shape[2] / window)
    key = (idx[:, 0] * ny + idx[:, 2] // window) * nx + idx[:, 3] // window
    key, perm = torch.sort(key, stable=True)
    offsets = torch.searchsorted(key, torch.arange(int(batch_size) * ny * nx + 1, device=key.device))
    return perm, offsets


# --- ScatterFormer block -------------------------------------------------------------------------

class SLALayer(nn.Module):
    """Scattered linear attention: q, k, v = x W (no bias), per window and head
    ``o_n = relu(q_n) KV_w / (relu(q_n) . s_w + 1e-6)`` with ``KV_w = sum relu(k_i)^T v_i`` and
    ``s_w = sum relu(k_i)``, then an output projection. x (N, C), voxels sorted by window."""

    def __init__(self, dim: int, num_heads: int, attn_impl: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        N, C = x.shape
        q, k, v = self.qkv(x).view(N, 3, self.num_heads, C // self.num_heads).unbind(1)  # (N, h, d) each
        y = scattered_linear_attention(q, k, v, offsets, impl=self.attn_impl)  # (N, h, d)
        return self.proj(y.reshape(N, C))


class SparseDepthwiseConv(nn.Module):
    """Depth-wise submanifold convolution with weight (kz, ky, kx, C) (the official layout):
    ``out[o, c] = sum_k weight.view(K, C)[k, c] * x[pairs[k, o], c]``, kernel offsets k in row-major
    (z, y, x) order, pairs from ``submanifold_pairs``."""

    def __init__(self, channels: int, kernel_size: Tuple[int, int, int], impl: str = "auto"):
        super().__init__()
        self.kernel_size = tuple(kernel_size)
        self.impl = impl
        self.weight = nn.Parameter(torch.randn(*self.kernel_size, channels))  # official init: N(0, 1)

    def forward(self, x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        return sparse_depthwise_conv(x, self.weight.view(-1, self.weight.shape[-1]), pairs, impl=self.impl)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[-1]}, kernel_size={self.kernel_size}"


class CWIFFNLayer(nn.Module):
    """Cross-window interaction then FFN, the official code's grouping of C = 4 g channels:
    u = BN(x); u <- u + [dw3x3x3(u_1) | dw(1,1,L)(u_2) along x | dw(1,L,1)(u_3) along y | u_4];
    out = u + fc2(ReLU(fc1(BN(u)))). Note the residual base is BN(x), not x."""

    def __init__(self, dim: int, long_kernel: int, conv_impl: str = "auto"):
        super().__init__()
        g = dim // 4
        self.group = g
        self.bn = _bn1d(dim)
        self.conv_k = SparseDepthwiseConv(g, (3, 3, 3), conv_impl)
        self.conv_h = SparseDepthwiseConv(g, (1, 1, long_kernel), conv_impl)
        self.conv_w = SparseDepthwiseConv(g, (1, long_kernel, 1), conv_impl)
        self.bn2 = _bn1d(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(2 * dim, dim)

    def kernel_sizes(self):
        return [conv.kernel_size for conv in (self.conv_k, self.conv_h, self.conv_w)]

    def forward(self, x: torch.Tensor, pairs: Dict[tuple, torch.Tensor]) -> torch.Tensor:
        g = self.group
        u = self.bn(x)
        mixed = torch.cat([self.conv_k(u[:, :g], pairs[self.conv_k.kernel_size]),
                           self.conv_h(u[:, g:2 * g], pairs[self.conv_h.kernel_size]),
                           self.conv_w(u[:, 2 * g:3 * g], pairs[self.conv_w.kernel_size]),
                           u[:, 3 * g:]], dim=1)
        u = u + mixed
        return u + self.fc2(self.act(self.fc1(self.bn2(u))))


class WindowGrouping(NamedTuple):
    """What a block's layers need of one voxel set besides the features (:meth:`ScatterFormerBlock.group`)."""
    perm: torch.Tensor  # (N,) the input rows in window order
    offsets: torch.Tensor  # (M + 1,) window boundaries in that order
    indices: torch.Tensor  # (N, 4) the voxels in that order: the block's output voxels
    tables: Tuple[torch.Tensor, ...]  # the depth-wise convolutions' (K, N) tables, one per kernel size


class ScatterFormerBlock(nn.Module):
    """``num_layers`` x (x <- x + SLA(BN(x)); x <- CWI-FFN(x)) on one window grouping.

    Sorts the voxels of the sparse tensor by window once (the output keeps that order) and builds
    the depth-wise convolutions' index pairs once for all layers (the official ScatterFormerLayer3x).
    """

    sparse_input = True

    def __init__(self, dim: int, num_heads: int, num_layers: int = 3, window: int = 12, attn_impl: str = "auto",
                 conv_impl: str = "auto"):
        super().__init__()
        self.window = window
        self.norm_layers = nn.ModuleList(_bn1d(dim) for _ in range(num_layers))
        self.attn_layers = nn.ModuleList(SLALayer(dim, num_heads, attn_impl) for _ in range(num_layers))
        self.cffn_layers = nn.ModuleList(CWIFFNLayer(dim, window + 1, conv_impl) for _ in range(num_layers))
        self.kernel_sizes = tuple(sorted({k for layer in self.cffn_layers for k in layer.kernel_sizes()}))

    def group(self, x) -> WindowGrouping:
        """The window grouping of the voxels of ``x`` (only its indices, shape and batch size are read)."""
        shape = [int(s) for s in x.spatial_shape]
        perm, offsets = group_by_window(x.indices, shape, self.window, x.batch_size)
        indices = x.indices[perm]
        return WindowGrouping(perm, offsets, indices,
                              submanifold_pairs_many(indices, shape, self.kernel_sizes))

    def forward(self, x, cuda_graph: bool = False):
        """``cuda_graph=True`` (CUDA inference) replays the layers from a graph per padded voxel count
        (:func:`replay_rows`); the grouping and its neighbour tables are built eagerly."""
        g = self.group(x)
        feats = x.features[g.perm]
        if cuda_graph:
            feats = replay_rows(self, "layers", ScatterFormerBlock.layers, [feats], g.tables, g.offsets)
        else:
            feats = self.layers(feats, g.offsets, *g.tables)
        # a fresh tensor: index pairs cached for the old row order must not be reused
        return type(x)(feats, g.indices, x.spatial_shape, x.batch_size)

    def layers(self, feats: torch.Tensor, offsets: torch.Tensor, *tables: torch.Tensor) -> torch.Tensor:
        """The layers on voxels sorted by window: (N, C) features, window boundaries, the depth-wise
        convolutions' (K, N) neighbour tables in the order of ``kernel_sizes``."""
        pairs = dict(zip(self.kernel_sizes, tables))
        for norm, attn, cffn in zip(self.norm_layers, self.attn_layers, self.cffn_layers):
            feats = feats + attn(norm(feats), offsets)
            feats = cffn(feats, pairs)
        return feats


class ScatterFormerStage(sp.SparseSequential):
    """A :class:`ScatterFormerBlock` then BatchNorm (and a strided convolution): ``SparseSequential``
    with the block's ``cuda_graph`` passed on."""

    def forward(self, x, cuda_graph: bool = False):
        block, *rest = self
        x = block(x, cuda_graph=cuda_graph)
        for module in rest:
            x = self.apply_module(module, x)
        return x


# --- voxels -> pillars -------------------------------------------------------------------------------

class AttnPillarPool(nn.Module):
    """Pools each (batch, y, x) column of ``height`` voxels into one pillar feature.

    query = max(0, max over the column's voxels) (the official SparseMaxPool3d((height, 1, 1)), whose
    maximum starts at 0); keys =
    the column's dense z-stack (height, C) plus a learned per-z embedding, values = the z-stack
    without it; empty slots are masked; out = LayerNorm(MultiheadAttention(query, keys, values) +
    query). Returns pillar features (P, C) and their ``[batch, y, x]`` (P, 3), sorted by (b, y, x).
    """

    def __init__(self, dim: int, height: int, num_heads: int = 8):
        super().__init__()
        self.height = height
        self.norm = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.pos_embedding = nn.Embedding(height, dim)
        nn.init.normal_(self.pos_embedding.weight, std=0.01)

    @staticmethod
    def pillars(indices: torch.Tensor, spatial_shape: Optional[Sequence[int]] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The pillars ``[b, y, x]`` (P, 3) of voxels (N, 4), sorted, and each voxel's pillar (N,)."""
        idx = indices.long()
        # unique over one int64 key (much faster than unique over rows); the grid's (Y, X) when given, else
        # read from the indices (which waits for the GPU once more)
        if spatial_shape is not None:
            ny, nx = int(spatial_shape[1]), int(spatial_shape[2])
        else:
            ny, nx = (int(idx[:, 2].max()) + 1, int(idx[:, 3].max()) + 1) if idx.shape[0] else (1, 1)
        keys, pillar_of_voxel = torch.unique((idx[:, 0] * ny + idx[:, 2]) * nx + idx[:, 3], return_inverse=True)
        return torch.stack([keys // (ny * nx), keys // nx % ny, keys % nx], 1), pillar_of_voxel

    def forward(self, features: torch.Tensor, indices: torch.Tensor, spatial_shape: Optional[Sequence[int]] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = indices.long()
        pillars, pillar_of_voxel = self.pillars(idx, spatial_shape)  # .long() of a long tensor is itself
        P, C = pillars.shape[0], features.shape[1]
        # spconv's max-pool starts its maximum at 0 (CPU and GPU), so a channel whose voxels are all
        # negative pools to 0: include_self=True on a zero tensor does the same
        query = features.new_zeros(P, C).scatter_reduce_(
            0, pillar_of_voxel[:, None].expand_as(features), features, reduce="amax", include_self=True)
        stack = features.new_zeros(P, self.height, C)
        stack[pillar_of_voxel, idx[:, 1]] = features
        present = torch.zeros(P, self.height, dtype=torch.bool, device=features.device)
        present[pillar_of_voxel, idx[:, 1]] = True
        key = stack + self.pos_embedding.weight.unsqueeze(0)
        return self.norm(self._attend(query, key, stack, present) + query), pillars

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, present: torch.Tensor
                ) -> torch.Tensor:
        """``self.self_attn(query[:, None], key, value, key_padding_mask=~present)`` for one query per
        pillar, written out: with a single query and ``height`` keys the scores are a product and a sum
        over channels, where MultiheadAttention runs one tiny batched matrix product per pillar and
        head (about 5x slower on a Waymo frame). Same weights, same result up to rounding."""
        attn = self.self_attn
        P, L, C = key.shape
        h = attn.num_heads
        wq, wk, wv = attn.in_proj_weight.chunk(3)
        bq, bk, bv = attn.in_proj_bias.chunk(3)
        q = F.linear(query, wq, bq).view(P, 1, h, C // h)
        k = F.linear(key, wk, bk).view(P, L, h, C // h)
        v = F.linear(value, wv, bv).view(P, L, h, C // h)
        scores = (q * k).sum(-1) * (C // h) ** -0.5  # (P, L, h)
        scores = scores.masked_fill(~present[:, :, None], float("-inf"))
        weights = scores.softmax(dim=1)  # every pillar holds at least one voxel: no all-masked row
        out = (weights[..., None] * v).sum(1).reshape(P, C)
        return attn.out_proj(out)


class ScatterFormerBackbone3d(nn.Module):
    """Voxel features (M, in_channels) at ``[b, z, y, x]`` of a ``sparse_shape`` (Z, Y, X) grid ->
    pillar features (P, dim) at ``[b, y, x]`` on the (Y/2, X/2) BEV grid.

    CPE (z stride 2) -> stage 1 (block, BN, 3x3x3 stride-2 conv) -> stage 2 (block, BN) ->
    AttnPillarPool over the remaining height.
    """

    def __init__(self, in_channels: int, sparse_shape: Sequence[int], dim: int = 128, num_heads: int = 4,
                 num_layers: int = 3, window: int = 12, attn_impl: str = "auto", conv_impl: str = "auto"):
        super().__init__()
        self.sparse_shape = tuple(int(s) for s in sparse_shape)
        self.cpe = ConvPositionEncoding(in_channels, dim)
        block = dict(num_heads=num_heads, num_layers=num_layers, window=window, attn_impl=attn_impl,
                     conv_impl=conv_impl)
        self.stage1 = ScatterFormerStage(ScatterFormerBlock(dim, **block), _bn1d(dim),
                                         sp.SparseConv3d(dim, dim, 3, stride=2, padding=1, bias=False,
                                                         indice_key="down"))
        self.stage2 = ScatterFormerStage(ScatterFormerBlock(dim, **block), _bn1d(dim))
        Z, Y, X = self.sparse_shape
        height = ((Z - 3) // 2 + 1 - 1) // 2 + 1  # after the CPE's (3,1,1)/2 and stage 1's 3/2 (pad 1) convs
        if height != Z // 4:  # the official pillar size is Z // 4; both must agree for its z-stack
            raise ValueError(f"sparse_shape {self.sparse_shape}: the height after the backbone's convolutions "
                             f"({height}) differs from Z // 4 = {Z // 4}; choose Z = 4 k + 1 (e.g. 33 or 41)")
        self.app = AttnPillarPool(dim, height)
        self.bev_shape = ((Y - 1) // 2 + 1, (X - 1) // 2 + 1)
        self.num_out_features = dim

    def forward(self, voxel_features: torch.Tensor, voxel_coords: torch.Tensor, batch_size: int,
                cuda_graph: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """``cuda_graph=True`` (CUDA inference) replays the CPE's submanifold part (``torch`` sparse backend)
        and the blocks' layers from CUDA graphs per padded voxel count (:func:`replay_rows`)."""
        x = sp.sparse_tensor(voxel_features, voxel_coords, self.sparse_shape, batch_size)
        x = self.cpe(x, cuda_graph=cuda_graph)
        x = self.stage1(x, cuda_graph=cuda_graph)
        x = self.stage2(x, cuda_graph=cuda_graph)
        return self.app(x.features, x.indices, x.spatial_shape)
