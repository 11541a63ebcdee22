"""visionattn backbones as OpenMMLab backbones (mmdet 3.x and mmsegmentation 1.x).

Declared lazy (needs the ``det`` extra): not imported by ``import visionattn``; configs import it with
``custom_imports = dict(imports=['visionattn.engine.mm_backbone'])`` (the runtime bases
``configs/_base_/runtime/mmdet.py``/``mmseg.py`` do), which registers in mmdet's and mmseg's ``MODELS``
(whichever is installed):

- the families by name, with the arguments of mmdet's own backbones::

      backbone=dict(type='BiFormer', arch='small', n_win=16, out_indices=(0, 1, 2, 3), frozen_stages=-1,
                    drop_path_rate=0.2, init_cfg=dict(type='Pretrained', checkpoint='biformer_small.in1k'))

  ``type='FFNet'`` (``arch='1'``...``'4'``) and ``type='GQAViT'`` (``arch='small'|'base'|'large'``,
  ``attention='gqa'|'kdgqa'|'dgqa'|'pgqa'|'mha'``) likewise;
- :class:`VisionAttnBackbone`, the generic wrapper under them, for any visionattn/timm backbone::

      backbone=dict(type='VisionAttnBackbone', model_name='convnext_tiny', checkpoint='convnext_tiny.pth')
"""
import re
from pathlib import Path
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
        frozen_stages: as mmdet's backbones: -1 trains everything, 0 freezes the stem, ``k`` the stem
            and stages ``0..k-1`` (ViTs: the patch embedding and blocks ``0..k-1``). Frozen parts get
            ``requires_grad=False`` and stay in eval mode (dropout, drop path, norms) through ``train()``.
            Stem and stages are found with the network's timm ``group_matcher``.
        init_cfg: ``dict(type='Pretrained', checkpoint=SOURCE[, prefix='backbone.'])`` as in mmdet.
            SOURCE is a local path, an http(s) URL or a model-zoo name (``'biformer_small.in1k'``;
            ``visionattn-zoo list``). Without ``prefix`` it is a whole-network file, ours or the
            family's official release, converted strictly by the hub into the network built with
            ``model_kwargs`` (as ``checkpoint=``); with ``prefix`` it is a checkpoint of a model
            holding this backbone under ``prefix`` (a detector's), loaded strictly into the backbone.
            A file that does not exist, does not fit, or any other init type raises: nothing is
            skipped silently. Takes precedence over ``pretrained``/``checkpoint``.

    Input (B, 3, H, W); output: tuple of (B, C_i, H / s_i, W / s_i) for each out index.
    """

    def __init__(self, model_name: str, out_indices: Sequence[int] = (0, 1, 2, 3), pretrained: bool = False,
                 checkpoint: Optional[str] = None, model_kwargs: Optional[Dict] = None,
                 feature_kwargs: Optional[Dict] = None, out_norm: Optional[str] = None, norm_eval: bool = False,
                 frozen_stages: int = -1, init_cfg: Optional[Dict] = None):
        super().__init__(init_cfg=init_cfg)
        _check_init_cfg(init_cfg)
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
        if not isinstance(frozen_stages, int) or frozen_stages < -1:
            raise ValueError(f"frozen_stages={frozen_stages!r}: use -1 (nothing frozen), 0 (the stem) or k "
                             f"(the stem and the first k stages)")
        self.frozen_stages = frozen_stages
        self._frozen_modules = self._freeze() if frozen_stages >= 0 else []

    def init_weights(self) -> None:
        """Load the ``init_cfg`` Pretrained or ``pretrained``/``checkpoint`` weights (strict, through
        the hub's converters).

        Not recursing into the timm model on purpose: some timm models define their own
        ``init_weights`` that would re-initialise loaded weights.
        """
        if self._is_init:
            return
        if self.init_cfg:
            self._load_init_cfg(self.init_cfg)
        elif self.pretrained or self.checkpoint:
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

    def _load_init_cfg(self, init_cfg: Dict) -> None:
        """``init_cfg=dict(type='Pretrained', checkpoint=..., [prefix=...])``: see the class docstring."""
        from .. import hub

        cfg = dict(init_cfg)
        source, prefix = str(cfg["checkpoint"]), cfg.get("prefix")
        is_file = source.startswith(("http://", "https://")) or Path(source).expanduser().is_file()
        if prefix is not None:
            if not is_file:
                raise FileNotFoundError(f"init_cfg checkpoint {source!r} (prefix={prefix!r}) is not a file or URL; "
                                        f"give the path of a checkpoint holding this backbone under {prefix!r}")
            state = hub.extract_state_dict(hub.read_checkpoint(source))
            ours = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not ours:
                raise RuntimeError(f"init_cfg checkpoint {source!r} has no key starting with prefix {prefix!r} "
                                   f"(first keys: {sorted(state)[:5]}); set prefix to where the backbone is saved")
            missing, unexpected = self.load_state_dict(ours, strict=False)
            if missing or unexpected:
                raise RuntimeError(f"init_cfg checkpoint {source!r} (prefix {prefix!r}) does not fit this backbone: "
                                   f"missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
            print_log(f"{self.model_name}: loaded {source} (prefix {prefix!r})", logger="current")
            return
        if is_file:
            full = create_model(self.model_name, checkpoint=source, **self.model_kwargs)
        elif hub.has_entry(source):
            entry = hub.get_entry(source)
            if entry.model != self.model_name:
                raise ValueError(f"init_cfg checkpoint {source!r} is a zoo entry for {entry.model!r}, but this "
                                 f"backbone is {self.model_name!r}; pick an entry of {self.model_name!r} "
                                 f"(`visionattn-zoo list`)")
            full = create_model(self.model_name, **self.model_kwargs)
            hub.load_pretrained(full, entry)
        else:
            raise FileNotFoundError(
                f"init_cfg checkpoint {source!r} is neither an existing file, an http(s) URL nor a model-zoo "
                f"name (`visionattn-zoo list`); fix the path in the config's backbone init_cfg")
        kept = copy_into_features(self.body, full)
        print_log(f"{self.model_name}: loaded {source}"
                  f"{f'; {len(kept)} dense-only tensors keep their init' if kept else ''}", logger="current")

    def _freeze(self) -> list:
        """Freeze the stem and stages ``< frozen_stages``; the frozen modules (kept in eval mode)."""
        frozen = set()
        for name, param in self.body.named_parameters():
            group, ordinal, _ = self._group_of(name)
            stem = group == "stem"
            stage = group == "blocks" and ordinal and ordinal[0] < 99999 and ordinal[0] < self.frozen_stages
            if stem or stage:
                param.requires_grad_(False)
                frozen.add(name)
        if not frozen:
            raise ValueError(f"frozen_stages={self.frozen_stages} froze nothing in {self.model_name!r}: its "
                             f"group_matcher names no stem or stage; use frozen_stages=-1")
        # a module is frozen when all its parameters are; parameter-free modules follow their parent
        modules, state = [], {}
        for name, module in self.body.named_modules():
            params = [f"{name}.{p}" if name else p for p, _ in module.named_parameters()]
            if params:
                state[name] = all(p in frozen for p in params)
            else:
                state[name] = state.get(name.rpartition(".")[0], False) if name else False
            if state[name] and not state.get(name.rpartition(".")[0], False) or (state[name] and name == ""):
                modules.append(module)
        return modules

    def train(self, mode: bool = True) -> "VisionAttnBackbone":
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        if mode:
            for m in self._frozen_modules:
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
        ``rule='stage_wise'`` (mmdet's ``decay_type='stage_wise'``): stem 0, stage s -> s + 1.
        """
        if rule not in ("convnext", "ffnet", "stage_wise"):
            raise ValueError(f"layer-decay rule must be 'convnext', 'ffnet' or 'stage_wise', got {rule!r}")
        if not name.startswith("body."):
            return num_layers + 1
        group, ordinal, is_block = self._group_of(name[len("body."):])
        if group == "stem":
            return num_layers + 1 if rule == "ffnet" else 0
        if group != "blocks" or not ordinal:
            return num_layers + 1
        if ordinal[0] >= 99999:  # timm's ordinal of a final norm inside the backbone
            return num_layers
        if len(ordinal) == 1:  # one ordinal per block (ViT)
            return min(ordinal[0] + 1, num_layers)
        stage, block = ordinal[:2]
        if rule == "stage_wise":
            return min(stage + 1, num_layers)
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


_INIT_KEYS = {"type", "checkpoint", "prefix", "map_location"}


def _check_init_cfg(init_cfg) -> None:
    """Only ``dict(type='Pretrained', checkpoint=...)`` is meaningful for a pretrained-network backbone."""
    if init_cfg is None:
        return
    if not isinstance(init_cfg, dict) or init_cfg.get("type") != "Pretrained" or "checkpoint" not in init_cfg:
        raise ValueError(f"init_cfg={init_cfg!r} is not supported by visionattn backbones: use "
                         f"dict(type='Pretrained', checkpoint=PATH_URL_OR_ZOO_NAME) or None (the network's own "
                         f"initialisation)")
    unknown = set(init_cfg) - _INIT_KEYS
    if unknown:
        raise ValueError(f"init_cfg keys {sorted(unknown)} are not supported; use {sorted(_INIT_KEYS)}")


class _FamilyBackbone(VisionAttnBackbone):
    """A family's backbone by architecture name, with mmdet's backbone arguments.

    Subclasses set ``ARCHS`` (arch -> model name) and ``STAGE_NORM`` (the constructor argument that
    adds the per-stage output LayerNorm2d of the official dense setups, absent from ImageNet files).
    """

    ARCHS: Dict[str, str] = {}
    STAGE_NORM: Optional[str] = None

    def __init__(self, arch: str, out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 drop_path_rate: float = 0.0, stage_norm: bool = True, norm_eval: bool = False,
                 init_cfg: Optional[Dict] = None, **model_kwargs):
        model_name = self.arch_name(arch)
        model_kwargs["drop_path_rate"] = drop_path_rate
        feature_kwargs = {self.STAGE_NORM: True} if stage_norm and self.STAGE_NORM else {}
        super().__init__(model_name, out_indices=out_indices, model_kwargs=model_kwargs,
                         feature_kwargs=feature_kwargs, norm_eval=norm_eval, frozen_stages=frozen_stages,
                         init_cfg=init_cfg)
        self.arch = arch

    def arch_name(self, arch: str) -> str:
        """The visionattn model name of ``arch``."""
        if str(arch) not in self.ARCHS:
            raise ValueError(f"{type(self).__name__}: arch={arch!r} is not one of {sorted(self.ARCHS)}")
        return self.ARCHS[str(arch)]


class BiFormer(_FamilyBackbone):
    """BiFormer (``arch='tiny'|'small'|'base'``); ``n_win`` (regions per side: 16 for COCO, 8 for
    ADE20K 512 crops, as the official dense setups) and other constructor arguments pass through.
    ``stage_norm=True`` adds the per-stage output LayerNorm2d (the model's ``out_norm``)."""

    ARCHS = {"tiny": "biformer_tiny", "small": "biformer_small", "base": "biformer_base"}
    STAGE_NORM = "out_norm"


class FFNet(_FamilyBackbone):
    """FFNet (``arch='1'|'2'|'3'|'4'``, the paper's FFNet-1...4); ``stage_norm=True`` adds the per-stage
    output LayerNorm2d of the official dense setups."""

    ARCHS = {str(i): f"ffnet_{i}" for i in (1, 2, 3, 4)}
    STAGE_NORM = "stage_norm"


class GQAViT(_FamilyBackbone):
    """ViT with grouped-query attention (``arch='small'|'base'|'large'``, ``attention='gqa'|'kdgqa'|
    'dgqa'|'pgqa'|'mha'``). ``out_indices`` are block indices (default the last of each quarter); every
    map has stride 16. ``frozen_stages=k`` freezes the patch embedding and blocks ``0..k-1``. Input sizes
    other than 224 work (``dynamic_img_size``, position embeddings interpolated)."""

    ARCHS = {"small": "small", "base": "base", "large": "large"}
    ATTENTIONS = ("mha", "gqa", "kdgqa", "dgqa", "pgqa")

    def __init__(self, arch: str = "base", attention: str = "gqa", out_indices: Sequence[int] = (2, 5, 8, 11),
                 frozen_stages: int = -1, drop_path_rate: float = 0.0, norm_eval: bool = False,
                 init_cfg: Optional[Dict] = None, **model_kwargs):
        if attention not in self.ATTENTIONS:
            raise ValueError(f"GQAViT: attention={attention!r} is not one of {self.ATTENTIONS}")
        self.attention = attention
        model_kwargs.setdefault("dynamic_img_size", True)
        super().__init__(arch, out_indices=out_indices, frozen_stages=frozen_stages, drop_path_rate=drop_path_rate,
                         stage_norm=False, norm_eval=norm_eval, init_cfg=init_cfg, **model_kwargs)

    def arch_name(self, arch: str) -> str:
        size = super().arch_name(arch)
        return f"vit_{size}_patch16_224_{self.attention}"


BACKBONES = (VisionAttnBackbone, BiFormer, FFNet, GQAViT)


def _register() -> None:
    """Register in mmdet's and mmseg's MODELS (whichever is installed; at least one must be)."""
    registered = []
    for package in ("mmdet", "mmseg"):
        try:
            registry = require_extra(f"{package}.registry").MODELS
        except ImportError:
            continue
        for cls in BACKBONES:
            registry.register_module(module=cls, force=True)
        registered.append(package)
    if not registered:
        require_extra("mmdet.registry")  # raises the ImportError naming the extra to install


_register()
