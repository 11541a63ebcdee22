"""An exponential moving average of the weights updated with one multi-tensor op per step.

mmengine's ``ExponentialMovingAverage`` (what ``EMAHook`` builds by default) rebuilds the model's
``state_dict()`` and calls ``lerp_`` once per tensor at every iteration: for a network of a few
hundred tensors that is a few hundred kernel launches and a Python loop, paid at every training
step. :class:`ForeachExponentialMovingAverage` computes the same update,
``avg = avg.lerp(src, momentum)`` for floating-point tensors (integer buffers untouched, as
mmengine does), with ``torch._foreach_lerp_`` over lists of tensors collected once. Its state
dict is mmengine's (same keys, ``steps`` included), so checkpoints move freely between the two.

Use it from a config: ``dict(type="EMAHook", ema_type="ForeachExponentialMovingAverage", ...)``.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.model import ExponentialMovingAverage

from ..registry import MODELS


@MODELS.register_module()
class ForeachExponentialMovingAverage(ExponentialMovingAverage):
    """mmengine's ``ExponentialMovingAverage`` with the per-step update as multi-tensor ops.

    The source tensors are collected at the first averaging step and reused: the optimiser
    updates them in place (a model whose tensors are replaced during training, e.g. moved with
    ``.to()``, needs mmengine's class).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pairs: Optional[Tuple[int, List[torch.Tensor], List[torch.Tensor]]] = None

    def _collect(self, model: nn.Module) -> Optional[Tuple[List[torch.Tensor], List[torch.Tensor]]]:
        """(averaged, source) floating-point tensors; None when the average lives on another
        device than the model (a copy per step is needed then: mmengine's path)."""
        src = model.state_dict() if self.update_buffers else dict(model.named_parameters())
        avg, source = [], []
        for k, p_avg in self.avg_parameters.items():
            if p_avg.dtype.is_floating_point:
                if src[k].device != p_avg.device:
                    return None
                avg.append(p_avg.data)
                source.append(src[k].data)
        return avg, source

    def update_parameters(self, model: nn.Module) -> None:
        if self.steps == 0 or self.steps % self.interval != 0:
            super().update_parameters(model)  # the first copy, buffer syncing and skipped steps as mmengine does
            return
        cached = self._pairs
        if cached is None or cached[0] != id(model):
            pairs = self._collect(model)
            if pairs is None:
                super().update_parameters(model)
                return
            self._pairs = cached = (id(model), *pairs)
        _, avg, source = cached
        if avg:
            torch._foreach_lerp_(avg, source, self.momentum)
        if not self.update_buffers:
            for b_avg, b_src in zip(self.module.buffers(), model.buffers()):
                b_avg.data.copy_(b_src.data.to(b_avg.device))
        self.steps += 1
