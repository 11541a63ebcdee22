"""mmengine's optimiser wrappers with the clipped gradient norm logged without a device sync.

mmengine's ``OptimWrapper._clip_grad`` hands ``float(grad_norm)`` to the message hub: the host
waits there for the whole backward pass, and the GPU then idles while the host runs the optimiser
step, the hooks and the next batch's loading (MatchStereo-T with ``clip_grad``: about a tenth of
a training step on an H200). These wrappers clip exactly as mmengine does and pass the norm as a
tensor to :func:`visionattn.engine.hooks.runtime_info.update_scalar_later`, which logs the same
values when the logger reads them. ``tools/train.py`` uses them for ``type='OptimWrapper'`` /
``'AmpOptimWrapper'`` together with :class:`~visionattn.engine.hooks.DeferredRuntimeInfoHook`.
"""
from typing import List

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from ..registry import OPTIM_WRAPPERS
from .hooks.runtime_info import update_scalar_later


class _NormLoggedLater:
    def _clip_grad(self) -> None:
        params: List[torch.Tensor] = [p for group in self.optimizer.param_groups for p in group["params"]
                                      if p.requires_grad and p.grad is not None]
        if params:
            norm = self.clip_func(params, **self.clip_grad_kwargs)
            if norm is not None:  # clip_grad_value_ returns None
                update_scalar_later(self.message_hub, f"train/{self.grad_name}", norm)


@OPTIM_WRAPPERS.register_module()
class NoSyncOptimWrapper(_NormLoggedLater, OptimWrapper):
    """mmengine's ``OptimWrapper``; the clipped gradient norm is logged without a device sync."""


@OPTIM_WRAPPERS.register_module()
class NoSyncAmpOptimWrapper(_NormLoggedLater, AmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper``; the clipped gradient norm is logged without a device sync."""
