"""Any visionattn/timm backbone as an OpenMMLab backbone (mmdet 3.x and mmsegmentation 1.x).

Declared lazy (needs the ``det`` extra): not imported by ``import visionattn``; configs import it with
``custom_imports = dict(imports=['visionattn.engine.mm_backbone'])``, which
registers :class:`VisionAttnBackbone` in mmdet's and mmseg's ``MODELS``::

    backbone=dict(type='VisionAttnBackbone', model_name='biformer_small', out_indices=(0, 1, 2, 3),
                  checkpoint='biformer_small.pth', model_kwargs=dict(n_win=16, drop_path_rate=0.2))
"""
import re
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d

from visionattn.extras import require_extra
from ..factory import create_model
from ..hub import canonical_name, copy_into_features


class VisionAttnBackbone(BaseModule):
    """A backbone from :func:`visionattn.create_model` returning its stage feature maps.

    Args:
        model_name: any name from ``visionattn.list_models()`` or timm (``'biformer_small'``).
        out_indices: which stages to return (timm ``features_only`` indices).
        pretrained: load the model-zoo/timm weights of ``model_name`` in :meth:`init_weights`.
        checkpoint: a path or URL of weights (ours or the family's official format, converted
            strictly by the hub); loaded in :meth:`init_weights`. Takes precedence over
            ``pretrained``, so a config's ``pretrained=True`` needs no edit to use a local file.
        model_kwargs: passed to the model constructor (``n_win``, ``drop_path_rate``...), also when
            the checkpoint is loaded.
        feature_kwargs: constructor arguments that add dense-only layers absent from ImageNet
            checkpoints: the family's per-stage output norms (BiFormer ``out_norm=True``, FFNet
            ``stage_norm=True``). The checkpoint is loaded strictly into the network built without
            them; the layers they add keep their initialisation, as in the official dense backbones.
        out_norm: ``'layernorm2d'`` puts a channels-first LayerNorm (eps 1e-6) on every returned
            map, for backbones without a per-stage norm of their own; ``None`` returns the maps as is.
        norm_eval: keep the backbone's BatchNorm layers in eval mode while training (frozen
            statistics, the usual choice for small detection batches).
        init_cfg: mmengine's init config, not applied: weights come from ``pretrained``/``checkpoint``.

    Input (B, 3, H, W); output: tuple of (B, C_i, H / s_i, W / s_i) for each out index.
    """

    def __init__(self, model_name: str, out_indices: Sequence[int] = (0, 1, 2, 3), pretrained: bool = False,
                 checkpoint: Optional[str] = None, model_kwargs: Optional[Dict] = None,
                 feature_kwargs: Optional[Dict] = None, out_norm: Optional[str] = None, norm_eval: bool = False,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if out_norm not in (None, "layernorm2d"):
            raise ValueError(f"out_norm={out_norm!r} is not supported; use 'layernorm2d' or None")
        self.model_name = model_name
        self.out_indices = tuple(out_indices)
        self.pretrained = pretrained
        self.checkpoint = checkpoint
        self.model_kwargs = dict(model_kwargs or {})
        self.feature_kwargs = dict(feature_kwargs or {})
        both = set(self.model_kwargs) & set(self.feature_kwargs)
        if both:
            raise ValueError(f"{sorted(both)} given in both model_kwargs and feature_kwargs; keep each in one")
        self.norm_eval = norm_eval
        self._matcher = None  # (timm group_matcher, canonical -> full-model name), built on first layer_id()
        self.body = create_model(model_name, features_only=True, out_indices=self.out_indices,
                                 **self.model_kwargs, **self.feature_kwargs)
        self.out_channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        self.out_norms = (nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in self.out_channels)
                          if out_norm else None)

    def init_weights(self) -> None:
        """Load ``pretrained``/``checkpoint`` weights (strict, through the hub's converters).

        Not recursing into the timm model on purpose: some timm models define their own
        ``init_weights`` that would re-initialise loaded weights.
        """
        if self._is_init:
            return
        if self.pretrained or self.checkpoint:
            full = create_model(self.model_name, pretrained=self.pretrained and not self.checkpoint,
                                checkpoint=self.checkpoint, **self.model_kwargs)
            kept = copy_into_features(self.body, full)  # dense-only layers keep their init
            print_log(f"{self.model_name}: loaded {self.checkpoint or 'pretrained weights'}"
                      f"{f'; {len(kept)} dense-only tensors keep their init' if kept else ''}", logger="current")
        self._is_init = True

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, 3, H, W) -> tuple of (B, C_i, H/s_i, W/s_i)."""
        feats = self.body(x)
        if self.out_norms is not None:
            feats = [norm(f) for norm, f in zip(self.out_norms, feats)]
        return tuple(feats)

    def train(self, mode: bool = True) -> "VisionAttnBackbone":
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def layer_id(self, name: str, num_layers: int, rule: str = "convnext") -> int:
        """Layer index of parameter ``name`` (relative to this module) for layer-wise lr decay.

        The stage and block of a parameter come from the network's own timm ``group_matcher``
        (stem, ``(stage, block)`` ordinals; a stage's downsampling counts as its block 0).
        ``rule='convnext'`` (mmdet's ConvNeXt rule): stem 0, stage 0 -> 1, stage 1 -> 2,
        stage 2 -> 3 + block // 3, stage 3 -> ``num_layers``; networks whose matcher gives one
        ordinal per block (ViTs) get block + 1. The added norms and anything outside the stages ->
        ``num_layers + 1`` (the heads' lr). ``rule='ffnet'`` reproduces the official FFNet
        constructor: its stem fell through to the heads' group (the constructor matched ConvNeXt's
        stem name only) and a stage's patch merging is block 0, so block j counts as j + 1.
        """
        if rule not in ("convnext", "ffnet"):
            raise ValueError(f"layer-decay rule must be 'convnext' or 'ffnet', got {rule!r}")
        if not name.startswith("body."):
            return num_layers + 1
        group, ordinal, is_block = self._group_of(name[len("body."):])
        if group == "stem":
            return 0 if rule == "convnext" else num_layers + 1
        if group != "blocks" or not ordinal:
            return num_layers + 1
        if ordinal[0] >= 99999:  # timm's ordinal of a final norm inside the backbone
            return num_layers
        if len(ordinal) == 1:  # one ordinal per block (ViT)
            return min(ordinal[0] + 1, num_layers)
        stage, block = ordinal[:2]
        if rule == "ffnet" and is_block and stage > 0:
            block += 1
        return {0: 1, 1: 2, 2: 3 + block // 3}.get(stage, num_layers) if stage < 3 else num_layers

    def _group_of(self, name: str):
        """``(group, ordinal, is_block)`` of a parameter of ``self.body`` under the network's timm
        ``group_matcher(coarse=False)``: group ``'stem'``/``'blocks'`` (None when nothing matches),
        the ordinal tuple timm sorts by, and whether the ordinal names a block (not a stage's
        downsampling, whose ordinal timm completes with a fixed suffix)."""
        if self._matcher is None:
            with torch.device("meta"):
                full = create_model(self.model_name, **self.model_kwargs)
            if not hasattr(full, "group_matcher"):
                raise ValueError(f"{self.model_name} has no timm group_matcher(), which layer-wise lr decay "
                                 f"needs to find stages and blocks; use a constant lr for it")
            self._matcher = (full.group_matcher(coarse=False),
                             {canonical_name(k): k for k, _ in full.named_parameters()})
        matcher, full_names = self._matcher
        full_name = full_names.get(canonical_name(name))
        if full_name is None:  # a dense-only layer the classification network does not have
            return None, (), False
        for group, specs in matcher.items():
            for pattern, suffix in ([(specs, None)] if isinstance(specs, str) else specs):
                m = re.match(pattern, full_name)
                if m:
                    ordinal = tuple(int(g) for g in m.groups() if g is not None) + tuple(suffix or ())
                    return group, ordinal, suffix is None
        return None, (), False


def _register() -> None:
    """Register in mmdet's and mmseg's MODELS (whichever is installed; at least one must be)."""
    registered = []
    for package in ("mmdet", "mmseg"):
        try:
            registry = require_extra(f"{package}.registry").MODELS
        except ImportError:
            continue
        registry.register_module(module=VisionAttnBackbone, force=True)
        registered.append(package)
    if not registered:
        require_extra("mmdet.registry")  # raises the ImportError naming the extra to install


_register()
