"""MHA -> GQA up-training start: mean-pool a ViT's key/value heads into groups."""
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..hub import extract_state_dict, read_checkpoint

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
