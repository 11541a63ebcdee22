"""Layer-wise learning-rate decay for dense-prediction fine-tuning (ConvNeXt/FFNet recipes).

Config::

    optim_wrapper = dict(
        type='OptimWrapper', constructor='LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.8, num_layers=12))

Parameter ``backbone.X`` gets layer id ``model.backbone.layer_id('X', num_layers)`` (see
:meth:`VisionAttnBackbone.layer_id`); everything outside the backbone gets ``num_layers + 1``.
The lr of layer ``i`` is ``lr * decay_rate ** (num_layers + 1 - i)``, so the heads keep ``lr``.
1-D parameters (norms, biases, layer scales) get no weight decay, as in those recipes.
"""
from typing import List

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS


# Registered in mmengine's root registry so mmdet/mmseg-scoped configs find it too.
@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """paramwise_cfg: ``decay_rate`` (float), ``num_layers`` (int, the id of the last stage),
    ``rule`` (``'convnext'``, default, ``'ffnet'``: the official FFNet grouping, or ``'stage_wise'``;
    see :meth:`VisionAttnBackbone.layer_id`). mmdet's ``LearningRateDecayOptimizerConstructor``
    settings work unchanged apart from the constructor name: ``decay_type='layer_wise'`` is
    ``rule='convnext'`` and ``decay_type='stage_wise'`` is ``rule='stage_wise'``."""

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        cfg = dict(self.paramwise_cfg)
        unknown = set(cfg) - {"decay_rate", "num_layers", "rule", "decay_type"}
        if unknown or "decay_rate" not in cfg or "num_layers" not in cfg or {"rule", "decay_type"} <= set(cfg):
            raise ValueError(
                f"LayerDecayOptimWrapperConstructor takes paramwise_cfg=dict(decay_rate=..., num_layers=..., "
                f"[rule='convnext'|'ffnet'|'stage_wise'] or [decay_type='layer_wise'|'stage_wise']); "
                f"got {sorted(self.paramwise_cfg)}")
        decay_rate, num_layers = float(cfg["decay_rate"]), int(cfg["num_layers"])
        decay_types = {"layer_wise": "convnext", "stage_wise": "stage_wise"}
        if "decay_type" in cfg and cfg["decay_type"] not in decay_types:
            raise ValueError(f"decay_type={cfg['decay_type']!r}: use 'layer_wise' or 'stage_wise' (as mmdet)")
        rule = decay_types[cfg["decay_type"]] if "decay_type" in cfg else cfg.get("rule", "convnext")
        backbone = getattr(module, "backbone", None)
        if backbone is None or not hasattr(backbone, "layer_id"):
            raise ValueError(
                f"layer-wise lr decay needs model.backbone with a layer_id() method (VisionAttnBackbone); "
                f"{type(module).__name__}.backbone is {type(backbone).__name__}")

        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("backbone."):
                layer = backbone.layer_id(name[len("backbone."):], num_layers, rule=rule)
            else:
                layer = num_layers + 1
            no_decay = param.ndim == 1 or name.endswith(".bias")
            key = (layer, no_decay)
            if key not in groups:
                scale = decay_rate ** (num_layers + 1 - layer)
                groups[key] = dict(params=[], lr=self.base_lr * scale, lr_scale=scale,
                                   weight_decay=0.0 if no_decay else self.base_wd,
                                   group_name=f"layer_{layer}_{'no_decay' if no_decay else 'decay'}")
            groups[key]["params"].append(param)
        for key in sorted(groups):
            g = groups[key]
            print_log(f"{g['group_name']}: {len(g['params'])} tensors, lr x{g['lr_scale']:.4g}, "
                      f"wd {g['weight_decay']}", logger="current")
        params.extend(groups[k] for k in sorted(groups))
