"""ViTs with grouped-query attention variants: GQA, KDGQA, DGQA, PGQA (and MHA as the control).

Khan et al., *Beyond Uniform Query Distribution: Key-Driven Grouped Query Attention*,
arXiv 2408.08454. The network is timm's ``VisionTransformer`` (same module names), only the
attention differs:

- ``gqa``: H query heads in G uniform groups, each sharing one key/value head.
- ``kdgqa``: the number of query heads per KV head follows the (min-max normalised) Frobenius
  norms of the key heads, recomputed every forward.
- ``dgqa``: the allocation follows a running statistic of the key-head norms over training
  (``ema`` or ``diff`` mode), re-allocated every ``window`` training steps.
- ``pgqa``: uniform GQA whose per-head outputs get a noise matrix with the same row mean/std
  subtracted (training only, unless ``faithful``).

The attention projection is one fused ``qkv`` Linear of ``(H + 2G) * head_dim`` rows
(queries, then G keys, then G values); with G = H it is exactly timm's ``Attention``, so timm
ViT checkpoints load as they are into the ``_mha`` models and through
:func:`convert_mha_to_gqa` (mean-pooled K/V) into the others.

Fixes of the official code (``faithful=True`` restores its behaviour where it differs):
allocations never give a KV head zero queries (``min_queries_per_kv``, default 1); tied norms
or G = 1 give uniform groups instead of NaN and a hang; KDGQA allocates per image, so an
image's output does not depend on the rest of the batch; DGQA's statistic, allocation and step
counter are buffers (saved in ``state_dict``) and eval uses the stored allocation without
changing state; PGQA adds noise only while training. The fixed path has no host sync and no
data-dependent shapes (one SDPA call per layer).
"""
from functools import partial
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath as TimmDropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block, VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as timm_checkpoint_filter_fn

from ...hub import extract_state_dict, read_checkpoint
from ...registry import register_converter
from ..drop_path import DropPath
from ...ops.grouped_query_attention import grouped_query_attention, grouped_query_attention_sdpa, kv_head_index
from ...ops.key_norm_allocation import allocate_queries, key_head_norms, key_norm_allocation, min_max_normalise
from ..input_contract import check_divides, check_images, check_int, check_num_classes, check_rate

# torch.fx (timm's FX feature extraction): the ops are single graph nodes (they read shapes)
torch.fx.wrap("kv_head_index")
torch.fx.wrap("allocate_queries")


@torch.fx.wrap  # one node under torch.fx (the op's checks read shapes)
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sizes: Optional[torch.Tensor], dropout_p: float,
               attn_mask: Optional[torch.Tensor], is_causal: bool, impl: str) -> torch.Tensor:
    """:func:`grouped_query_attention`; under TorchScript (also of an FX graph) its SDPA paths, undispatched."""
    if torch.jit.is_scripting():
        return grouped_query_attention_sdpa(q, k, v, sizes, dropout_p, attn_mask, is_causal)
    return grouped_query_attention(q, k, v, sizes, impl=impl, dropout_p=dropout_p, attn_mask=attn_mask,
                                   is_causal=is_causal)


@torch.fx.wrap  # one node under torch.fx (the op's checks read shapes)
def _key_norm_allocation(k: torch.Tensor, num_heads: int, min_queries: int) -> torch.Tensor:
    """:func:`key_norm_allocation`; under TorchScript (also of an FX graph), which cannot compile the op's
    checks, its reference, undispatched."""
    if torch.jit.is_scripting():
        return allocate_queries(min_max_normalise(key_head_norms(k)), num_heads, min_queries)
    return key_norm_allocation(k, num_heads, min_queries)


__all__ = ["GQAVisionTransformer", "GroupedQueryAttention", "KeyDrivenGQA", "DynamicGQA", "PerturbedGQA", "allocate_queries",
           "key_head_norms", "checkpoint_filter_fn", "convert_mha_to_gqa", "convert_official", "ATTENTIONS"]


# --- query allocation -------------------------------------------------------------------------

def _uniform_sizes(num_heads: int, num_kv_heads: int) -> torch.Tensor:
    sizes = torch.full((num_kv_heads,), num_heads // num_kv_heads, dtype=torch.long)
    sizes[: num_heads % num_kv_heads] += 1
    return sizes


def _official_kdgqa_sizes(norms: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The official KDGQA allocation (may give zero queries); tied norms -> uniform instead of a hang.

    norms: (G,) key norms summed over the batch.
    """
    if norms.amax() == norms.amin():
        return _uniform_sizes(num_heads, norms.numel()).to(norms.device)
    w = (norms - norms.amin()) / (norms.amax() - norms.amin())
    sizes = (w / w.sum() * num_heads).round().long()
    while sizes.sum() > num_heads:
        sizes[sizes.argmax()] -= 1
    while sizes.sum() < num_heads:
        sizes[sizes.argmin()] += 1
    return sizes


def _official_dgqa_sizes(weights: torch.Tensor, num_heads: int, fallback: torch.Tensor) -> torch.Tensor:
    """The official DGQA allocation: round, then fix the sum at random KV heads (torch RNG)."""
    total = weights.sum()
    if not torch.isfinite(total) or total <= 0:
        return fallback.clone()
    sizes = (weights / total * num_heads).round().long()
    while sizes.sum() > num_heads:
        i = int(torch.randint(0, sizes.numel(), (1,)))
        if sizes[i] > 0:
            sizes[i] -= 1
    while sizes.sum() < num_heads:
        sizes[int(torch.randint(0, sizes.numel(), (1,)))] += 1
    return sizes


# --- attention layers ---------------------------------------------------------------------------

class GroupedQueryAttention(nn.Module):
    """Uniform GQA (MHA when ``num_kv_heads == num_heads``), timm ``Attention`` layout.

    Input/output (B, N, C). ``qkv``: C -> (H + 2G) * d, rows = [queries, G keys, G values].
    """

    def __init__(self, dim: int, num_heads: int = 8, num_kv_heads: Optional[int] = None, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, attn_impl: str = "auto", faithful: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if not 1 <= num_kv_heads <= num_heads:
            raise ValueError(f"num_kv_heads must be in [1, num_heads={num_heads}], got {num_kv_heads}")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.attn_impl, self.faithful = attn_impl, faithful
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self._check_static_groups()

    def _check_static_groups(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{type(self).__name__}: {self.num_heads} heads cannot form {self.num_kv_heads} "
                             f"equal groups; pick num_kv_heads dividing num_heads")

    def split_heads(self, x: torch.Tensor):
        """x: (B, N, C) -> q (B, H, N, d), k and v (B, G, N, d)."""
        B, N, _ = x.shape
        H, G, d = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([H * d, G * d, G * d], dim=-1)
        return (q.view(B, N, H, d).transpose(1, 2), k.view(B, N, G, d).transpose(1, 2),
                v.view(B, N, G, d).transpose(1, 2))

    def group_sizes(self, k: torch.Tensor) -> Optional[torch.Tensor]:
        """Query heads per KV head for keys k (B, G, N, d): None (uniform), (G,) or (B, G)."""
        return None

    def perturb(self, out: torch.Tensor) -> torch.Tensor:
        """Hook on the per-head outputs (B, H, N, d)."""
        return out

    def project(self, x: torch.Tensor):
        """x (B, N, C) -> q (B, H, N, d), k and v (B, G, N, d), group sizes (see :meth:`group_sizes`)."""
        q, k, v = self.split_heads(x)
        return q, k, v, self.group_sizes(k)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        """x (B, N, C) -> (B, N, C); ``attn_mask`` / ``is_causal`` as in timm's ``Attention`` (SDPA's:
        bool True = attend, or an additive float mask, broadcastable to (B, H, N, N))."""
        B, N, C = x.shape
        q, k, v, sizes = self.project(x)
        out = _attention(q, k, v, sizes, self.attn_drop if self.training else 0.0, attn_mask, is_causal,
                         self.attn_impl)
        out = self.perturb(out)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, faithful={self.faithful}"


class KeyDrivenGQA(GroupedQueryAttention):
    """KDGQA: query heads per KV head from the min-max normalised key-head norms of this forward.

    Fixed (default): per image ((B, G) sizes), at least ``min_queries_per_kv`` each.
    ``faithful=True``: norms summed over the batch, the official rounding (zero queries possible).
    """

    def __init__(self, *args, min_queries_per_kv: int = 1, **kwargs):
        self.min_queries_per_kv = min_queries_per_kv
        super().__init__(*args, **kwargs)

    def _check_static_groups(self) -> None:
        allocate_queries(torch.ones(self.num_kv_heads), self.num_heads, self.min_queries_per_kv)

    def group_sizes(self, k: torch.Tensor) -> torch.Tensor:
        if self.faithful:
            return _official_kdgqa_sizes(key_head_norms(k).sum(0), self.num_heads)
        # per image: min-max normalised key-head norms -> largest-remainder allocation (one kernel)
        return _key_norm_allocation(k, self.num_heads, self.min_queries_per_kv)


class DynamicGQA(GroupedQueryAttention):
    """DGQA: allocation from a running statistic of the key-head norms, updated every ``window`` steps.

    Buffers (in ``state_dict``): ``key_norm_stat`` (G,) the statistic, ``group_sizes_now`` (G,)
    the current allocation, ``num_steps`` () training forwards seen. Every ``window``-th
    training forward (starting with the first), with m the batch-mean key-head norms:
    ``ema``: a = beta m + (1 - beta) stat, stat <- a;  ``diff``: a = |stat - m|, stat <- m;
    the allocation becomes proportional to a. Eval uses the stored allocation and changes nothing.
    ``faithful=True``: official behaviour (norms summed over the batch, stat <- (stat + m) / window,
    random fix-up of the rounding, eval re-allocating from each batch and storing its norms).
    """

    def __init__(self, *args, dgqa_mode: str = "ema", window: int = 300, beta: float = 0.9,
                 min_queries_per_kv: int = 1, **kwargs):
        if dgqa_mode not in ("ema", "diff"):
            raise ValueError(f"dgqa_mode must be 'ema' or 'diff', got {dgqa_mode!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1 training steps, got {window}")
        self.dgqa_mode, self.window, self.beta, self.min_queries_per_kv = dgqa_mode, window, beta, min_queries_per_kv
        super().__init__(*args, **kwargs)
        G = self.num_kv_heads
        self.register_buffer("key_norm_stat", torch.zeros(G))
        self.register_buffer("group_sizes_now", _uniform_sizes(self.num_heads, G))
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    def _check_static_groups(self) -> None:
        allocate_queries(torch.ones(self.num_kv_heads), self.num_heads, self.min_queries_per_kv)

    def _weights(self, norms: torch.Tensor) -> torch.Tensor:
        if self.dgqa_mode == "ema":
            return self.beta * norms + (1.0 - self.beta) * self.key_norm_stat
        return (self.key_norm_stat - norms).abs()

    def _update(self, k: torch.Tensor) -> None:
        with torch.no_grad():  # (a statement, not a decorator: TorchScript compiles it)
            norms = key_head_norms(k)  # (B, G)
            if self.faithful:
                norms = norms.sum(0)
                if self.training and int(self.num_steps) % self.window:
                    return
                sizes = _official_dgqa_sizes(self._weights(norms), self.num_heads, self.group_sizes_now)
                self.group_sizes_now.copy_(sizes)
                self.key_norm_stat.copy_((self.key_norm_stat + norms) / self.window if self.training else norms)
                return
            norms = norms.mean(0)
            weights = self._weights(norms)
            due = self.num_steps % self.window == 0  # tensor: no host sync
            sizes = allocate_queries(weights, self.num_heads, self.min_queries_per_kv)
            self.group_sizes_now.copy_(torch.where(due, sizes, self.group_sizes_now))
            new_stat = weights if self.dgqa_mode == "ema" else norms
            self.key_norm_stat.copy_(torch.where(due, new_stat, self.key_norm_stat))

    def project(self, x: torch.Tensor):
        """Eval (fixed allocation): K/V per query head straight from the projection.

        The K/V weight rows of each query head's KV head are gathered, so one MHA-sized linear
        layer gives K/V already expanded to H heads (exactly the same numbers as expanding the
        activations, without an index op on them) and attention runs as plain MHA.
        """
        if self.training or self.faithful:
            q, k, v = self.split_heads(x)
            return q, k, v, self.group_sizes(k)
        B, N, _ = x.shape
        H, G, d = self.num_heads, self.num_kv_heads, self.head_dim
        head_of = kv_head_index(self.group_sizes_now, H)  # (H,) KV head of each query head
        rows = (head_of[:, None] * d + torch.arange(d, device=x.device)).flatten()  # (H * d,)
        w_q, w_k, w_v = self.qkv.weight.split([H * d, G * d, G * d])
        weight = torch.cat([w_q, w_k[rows], w_v[rows]])  # (3 * H * d, C)
        bias = None
        if self.qkv.bias is not None:
            b_q, b_k, b_v = self.qkv.bias.split([H * d, G * d, G * d])
            bias = torch.cat([b_q, b_k[rows], b_v[rows]])
        q, k, v = F.linear(x, weight, bias).view(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v, None

    def group_sizes(self, k: torch.Tensor) -> torch.Tensor:
        if self.training or self.faithful:
            self._update(k)
        if self.training:
            self.num_steps.add_(1)
        return self.group_sizes_now.clone()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dgqa_mode={self.dgqa_mode!r}, window={self.window}"


@torch.fx.wrap  # sizes from shapes: one node under torch.fx
def _group_noise(num_groups: int, group: int, length: int, device: torch.device) -> torch.Tensor:
    """PGQA's noise (H, length), H = num_groups * group: uniform(0, 1) drawn one group at a time,
    entry [i, i % group] zeroed, each row standardised."""
    H = num_groups * group
    noise = torch.cat([torch.rand(group, length, device=device) for _ in range(num_groups)])
    local = torch.arange(H, device=device) % group  # index of each head inside its group
    noise[torch.arange(H, device=device), local] = 0
    return (noise - noise.mean(-1, keepdim=True)) / noise.std(-1, keepdim=True).clamp_min(1e-12)


class PerturbedGQA(GroupedQueryAttention):
    """PGQA: uniform GQA; from each head's output (flattened to a row of N * d values) a noise row
    with the same mean and std is subtracted. The noise is uniform(0, 1) per group (n_g, N * d),
    shared over the batch, with entry [i, i] zeroed, standardised per row. Training only unless
    ``faithful`` (the official code also perturbs in eval).
    """

    def perturb(self, out: torch.Tensor) -> torch.Tensor:
        if not (self.training or self.faithful):
            return out
        B, H, N, d = out.shape
        n = H // self.num_kv_heads
        rows = out.reshape(B, H, N * d)
        noise = _group_noise(self.num_kv_heads, n, N * d, out.device)  # (H, N*d), standardised rows
        noise = noise.to(out.dtype) * rows.std(-1, keepdim=True) + rows.mean(-1, keepdim=True)  # (B, H, N*d)
        return (rows - noise).view(B, H, N, d)


ATTENTIONS = {"mha": GroupedQueryAttention, "gqa": GroupedQueryAttention, "kdgqa": KeyDrivenGQA,
              "dgqa": DynamicGQA, "pgqa": PerturbedGQA}


class GroupedQueryBlock(Block):
    """timm's pre-norm ``Block`` with one of :data:`ATTENTIONS` as ``attn``."""

    def __init__(self, dim: int, num_heads: int, *, attn_cls=GroupedQueryAttention, attn_kwargs: Dict = None,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, **kwargs):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **kwargs)
        self.attn = attn_cls(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                             **(attn_kwargs or {}))
        for name in ("drop_path1", "drop_path2"):  # the library's DropPath: same values, and torch.fx keeps its scale
            if isinstance(getattr(self, name), TimmDropPath):
                setattr(self, name, DropPath(getattr(self, name).drop_prob))


class GQAVisionTransformer(VisionTransformer):
    """timm's ``VisionTransformer`` (same modules, keys and behaviour) with the library's input check at
    its entry points: (B >= 1, in_chans, H, W) floats in the model's dtype and device, and H x W the
    model's ``img_size`` unless it was built with ``dynamic_img_size=True`` (position embeddings
    interpolated; then H and W multiples of the patch size, or any size with ``dynamic_img_pad=True``).
    """

    def check_input(self, x: torch.Tensor) -> None:
        pe = self.patch_embed
        fixed = tuple(pe.img_size) if pe.img_size is not None and pe.strict_img_size else None
        multiple = 1 if pe.dynamic_img_pad or fixed else pe.patch_size[0]
        check_images(x, network=f"{type(self).__name__} ({getattr(self, 'pretrained_cfg', {}).get('architecture', 'ViT')})",
                     channels=pe.proj.in_channels, like=pe.proj.weight, fixed_size=fixed, multiple=multiple,
                     min_size=1 if pe.dynamic_img_pad else pe.patch_size[0],
                     size_hint="or build the model with dynamic_img_size=True (position embeddings are then "
                               "interpolated to the input size)",
                     pad_hint="resize to a multiple of the patch size, or build with dynamic_img_pad=True")

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> torch.Tensor:
        """timm's ``forward_features`` (same signature) after :meth:`check_input`."""
        if not torch.jit.is_scripting():
            self.check_input(x)
            return super().forward_features(x, attn_mask, is_causal)
        # TorchScript compiles neither the check nor ``super()``: timm's body, written out
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        if attn_mask is not None or is_causal:
            for blk in self.blocks:
                x = blk(x, attn_mask=attn_mask, is_causal=is_causal)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        self.check_input(x)
        return super().forward_intermediates(x, *args, **kwargs)


def _check_vit_args(kwargs: Dict) -> None:
    """The ViT constructor arguments timm does not check, with name, value and range."""
    owner = "GQA ViT"
    for arg, minimum in (("in_chans", 1), ("depth", 1), ("embed_dim", 1), ("num_heads", 1), ("patch_size", 1)):
        if arg in kwargs and not isinstance(kwargs[arg], (tuple, list)):
            check_int(owner, arg, kwargs[arg], minimum)
    if "num_classes" in kwargs:
        check_num_classes(owner, kwargs["num_classes"])
    for arg in ("drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "patch_drop_rate"):
        if arg in kwargs:
            check_rate(owner, arg, kwargs[arg])
    if "embed_dim" in kwargs or "num_heads" in kwargs:
        check_divides(owner, "num_heads", kwargs["num_heads"], "embed_dim", kwargs["embed_dim"])
    img, patch = kwargs.get("img_size"), kwargs.get("patch_size")
    if isinstance(img, int) and isinstance(patch, int) and (img < patch or img % patch):
        raise ValueError(f"{owner}: img_size={img} must be a multiple of patch_size={patch}")


# --- checkpoints -------------------------------------------------------------------------------

def _attn_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, GroupedQueryAttention)]


def _fill_state_buffers(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Add DGQA buffers the source lacks, from the model's fresh state (uniform groups, step 0)."""
    for name, buf in model.state_dict().items():
        if name.endswith(("attn.key_norm_stat", "attn.group_sizes_now", "attn.num_steps")) and name not in state_dict:
            state_dict[name] = buf.clone()
    return state_dict


Source = Union[nn.Module, Mapping[str, torch.Tensor], str, Path]


def _pool_heads(w: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """(H * d, ...) -> (G * d, ...): mean over each block of H / G consecutive heads."""
    d = w.shape[0] // num_heads
    return w.reshape(num_kv_heads, num_heads // num_kv_heads, d, *w.shape[1:]).mean(1).reshape(
        num_kv_heads * d, *w.shape[1:])


def convert_mha_to_gqa(model_or_state_dict: Source, num_kv_heads: int,
                       num_heads: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """A timm ViT (fused ``attn.qkv``) state dict -> the weights of a ``vit_*_{gqa,kdgqa,dgqa,pgqa}`` model.

    Queries are copied; keys and values (weights and biases) are averaged over each contiguous
    group of ``H / G`` heads; every other entry (patch embedding, norms incl. the final ``norm``,
    MLPs, head) is kept as is. With ``num_kv_heads == H`` the result is the input.

    Args:
        model_or_state_dict: a timm ``VisionTransformer``, its state dict, or a checkpoint file.
        num_kv_heads: G, must divide the number of heads.
        num_heads: H; read from the model when given one, else ``dim // 64`` (timm ViT head size).
    Returns:
        a new state dict (tensors for the pooled K/V, the others shared with the input). DGQA
        models also need their state buffers: load with ``visionattn.hub.load_checkpoint(model,
        state_dict, family='gqa_vit')``, which adds them.
    """
    if isinstance(model_or_state_dict, nn.Module):
        attn = getattr(model_or_state_dict, "blocks")[0].attn
        num_heads = num_heads or attn.num_heads
        state_dict = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, (str, Path)):
        state_dict = extract_state_dict(read_checkpoint(model_or_state_dict))
    else:
        state_dict = extract_state_dict(model_or_state_dict)
    qkv_keys = [k for k in state_dict if k.endswith("attn.qkv.weight")]
    if not qkv_keys:
        raise ValueError("convert_mha_to_gqa: no 'attn.qkv.weight' entries; expected a timm ViT state dict "
                         f"(first keys: {list(state_dict)[:5]})")
    out = dict(state_dict)
    for key in qkv_keys:
        weight = state_dict[key]
        dim = weight.shape[1]
        if weight.shape[0] != 3 * dim:
            raise ValueError(f"convert_mha_to_gqa: {key} has shape {tuple(weight.shape)}, not (3 * dim, dim): "
                             f"the source is not a multi-head attention ViT")
        heads = num_heads or dim // 64
        if dim % heads or heads % num_kv_heads or num_kv_heads < 1:
            raise ValueError(f"convert_mha_to_gqa: num_kv_heads={num_kv_heads} must divide num_heads={heads} "
                             f"(dim {dim}); pass num_heads if the head size is not 64")
        for leaf in ("weight", "bias"):
            name = key[: -len("weight")] + leaf
            if name not in state_dict:
                continue
            q, k, v = state_dict[name].chunk(3, dim=0)
            out[name] = torch.cat([q, _pool_heads(k, heads, num_kv_heads), _pool_heads(v, heads, num_kv_heads)])
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: VisionTransformer) -> Dict[str, torch.Tensor]:
    """timm ViT (MHA, fused qkv) weights -> this model: K/V mean-pooled to the model's KV heads."""
    state_dict = timm_checkpoint_filter_fn(state_dict, model)
    attn = _attn_layers(model)
    if attn and attn[0].num_kv_heads != attn[0].num_heads and any(k.endswith("attn.qkv.weight") for k in state_dict):
        qkv = next(v for k, v in state_dict.items() if k.endswith("attn.qkv.weight"))
        if qkv.shape[0] == 3 * qkv.shape[1]:  # still MHA
            state_dict = convert_mha_to_gqa(state_dict, attn[0].num_kv_heads, num_heads=attn[0].num_heads)
    return _fill_state_buffers(dict(state_dict), model)


@register_converter("gqa_vit")
def convert_official(checkpoint, model: nn.Module, **kwargs) -> Dict[str, torch.Tensor]:
    """Official key-driven-gqa checkpoints (separate q/k/v Linears, DGQA ``attn.cache``), or timm MHA
    ViT weights, to this model's keys."""
    state_dict = extract_state_dict(checkpoint)
    if not any(k.endswith("attn.q.weight") for k in state_dict):
        return checkpoint_filter_fn(state_dict, model)
    out = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".attn.")
        if not prefix:
            out[key] = value
        elif leaf in ("q.weight", "q.bias"):
            kind = leaf.split(".")[1]
            out[f"{prefix}.attn.qkv.{kind}"] = torch.cat(
                [value, state_dict[f"{prefix}.attn.k.{kind}"], state_dict[f"{prefix}.attn.v.{kind}"]])
        elif leaf == "cache":
            out[f"{prefix}.attn.key_norm_stat"] = value.float()
        elif leaf.startswith(("k.", "v.")):
            continue
        else:
            out[key] = value
    return _fill_state_buffers(out, model)


# --- models ------------------------------------------------------------------------------------

_ATTN_KWARGS = ("num_kv_heads", "attn_impl", "faithful", "min_queries_per_kv", "dgqa_mode", "window", "beta")

# timm's up-training sources (as the official code: `timm.create_model('vit_*_patch16_224', pretrained=True)`)
_SOURCES = {"small": "augreg_in21k_ft_in1k", "base": "augreg2_in21k_ft_in1k", "large": "augreg_in21k_ft_in1k"}
_ARCH = {"small": dict(embed_dim=384, depth=12, num_heads=6), "base": dict(embed_dim=768, depth=12, num_heads=12),
         "large": dict(embed_dim=1024, depth=24, num_heads=16)}
# KV heads: ViT-S 3 and ViT-L 4 (official factory defaults), ViT-B 6 (the README's example run).
_DEFAULT_KV_HEADS = {"small": 3, "base": 6, "large": 4}


def _cfg(size: str, **kwargs):
    return {
        "hf_hub_id": f"timm/vit_{size}_patch16_224.{_SOURCES[size]}",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.9,
        "interpolation": "bicubic", "fixed_input_size": True, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    f"vit_{size}_patch16_224_{attn}.{_SOURCES[size]}": _cfg(size)
    for size in _ARCH for attn in ATTENTIONS
})


def _create(size: str, attn: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    attn_kwargs = {k: kwargs.pop(k) for k in _ATTN_KWARGS if k in kwargs}
    heads = kwargs.get("num_heads", _ARCH[size]["num_heads"])
    if attn == "mha":
        if attn_kwargs.setdefault("num_kv_heads", heads) != heads:
            raise ValueError(f"the MHA control has num_kv_heads = num_heads = {heads}; use the _gqa model for fewer")
    else:
        attn_kwargs.setdefault("num_kv_heads", _DEFAULT_KV_HEADS[size])
    out_indices = kwargs.pop("out_indices", 3)
    _check_vit_args({"patch_size": 16, "img_size": 224, **_ARCH[size], **kwargs})
    depth = kwargs.get("depth", _ARCH[size]["depth"])
    if kwargs.get("features_only") and isinstance(out_indices, int) and not 0 < out_indices <= depth:
        raise ValueError(f"vit_{size}_patch16_224_{attn}: out_indices={out_indices} (the last n blocks) must be in "
                         f"[1, depth={depth}]")
    heads_kv = attn_kwargs["num_kv_heads"]
    check_int(f"vit_{size}_patch16_224_{attn}", "num_kv_heads", heads_kv, 1, heads)
    block_fn = partial(GroupedQueryBlock, attn_cls=ATTENTIONS[attn], attn_kwargs=attn_kwargs)
    return build_model_with_cfg(
        GQAVisionTransformer, f"vit_{size}_patch16_224_{attn}", pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **{"patch_size": 16, "img_size": 224, **_ARCH[size], **kwargs, "block_fn": block_fn},
    )


@register_model
def vit_small_patch16_224_mha(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-S/16 at 224 with MHA attention (num_kv_heads default 6)."""
    return _create("small", "mha", pretrained, **kwargs)


@register_model
def vit_small_patch16_224_gqa(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-S/16 at 224 with GQA attention (num_kv_heads default 3)."""
    return _create("small", "gqa", pretrained, **kwargs)


@register_model
def vit_small_patch16_224_kdgqa(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-S/16 at 224 with KDGQA attention (num_kv_heads default 3)."""
    return _create("small", "kdgqa", pretrained, **kwargs)


@register_model
def vit_small_patch16_224_dgqa(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-S/16 at 224 with DGQA attention (num_kv_heads default 3)."""
    return _create("small", "dgqa", pretrained, **kwargs)


@register_model
def vit_small_patch16_224_pgqa(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-S/16 at 224 with PGQA attention (num_kv_heads default 3)."""
    return _create("small", "pgqa", pretrained, **kwargs)


@register_model
def vit_base_patch16_224_mha(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-B/16 at 224 with MHA attention (num_kv_heads default 12)."""
    return _create("base", "mha", pretrained, **kwargs)


@register_model
def vit_base_patch16_224_gqa(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-B/16 at 224 with GQA attention (num_kv_heads default 6)."""
    return _create("base", "gqa", pretrained, **kwargs)


@register_model
def vit_base_patch16_224_kdgqa(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-B/16 at 224 with KDGQA attention (num_kv_heads default 6)."""
    return _create("base", "kdgqa", pretrained, **kwargs)


@register_model
def vit_base_patch16_224_dgqa(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-B/16 at 224 with DGQA attention (num_kv_heads default 6)."""
    return _create("base", "dgqa", pretrained, **kwargs)


@register_model
def vit_base_patch16_224_pgqa(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-B/16 at 224 with PGQA attention (num_kv_heads default 6)."""
    return _create("base", "pgqa", pretrained, **kwargs)


@register_model
def vit_large_patch16_224_mha(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-L/16 at 224 with MHA attention (num_kv_heads default 16)."""
    return _create("large", "mha", pretrained, **kwargs)


@register_model
def vit_large_patch16_224_gqa(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-L/16 at 224 with GQA attention (num_kv_heads default 4)."""
    return _create("large", "gqa", pretrained, **kwargs)


@register_model
def vit_large_patch16_224_kdgqa(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-L/16 at 224 with KDGQA attention (num_kv_heads default 4)."""
    return _create("large", "kdgqa", pretrained, **kwargs)


@register_model
def vit_large_patch16_224_dgqa(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-L/16 at 224 with DGQA attention (num_kv_heads default 4)."""
    return _create("large", "dgqa", pretrained, **kwargs)


@register_model
def vit_large_patch16_224_pgqa(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-L/16 at 224 with PGQA attention (num_kv_heads default 4)."""
    return _create("large", "pgqa", pretrained, **kwargs)
