"""What BiFormer and FFNet share as timm classifiers: four stages, a final norm, an average-pooled
linear head, and timm's grouping, checkpointing and classifier interface over that layout."""
from typing import Dict, Optional

import torch
import torch.nn as nn

from ..input_contract import check_images, check_num_classes


class StageClassifier(nn.Module):
    """Base of a stem -> ``stages`` (each with ``downsample`` and ``blocks``) -> ``norm`` -> pooled
    ``head`` network. Subclasses set ``stages``, ``norm``, ``head_drop``, ``head``,
    ``num_features``, ``num_classes`` and ``global_pool`` (``'avg'`` or ``''``), and define
    ``forward_features``; each stage has a ``grad_checkpointing`` flag. ``forward_features`` and
    ``forward_intermediates`` start with :meth:`check_input` (``in_chans`` and ``stem`` set)."""

    in_chans = 3

    def check_input(self, x: torch.Tensor) -> None:
        """The input check at the network boundary: (B >= 1, in_chans, H, W) floats in the network's
        dtype on its device (:func:`visionattn.models.input_contract.check_images`); skipped under
        TorchScript, which cannot compile it."""
        if not torch.jit.is_scripting():
            check_images(x, network=type(self).__name__, channels=self.in_chans,
                         like=next(self.stem.parameters(), None))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """timm's parameter grouping (layer-wise lr decay): stem, then (stage, block); a stage's
        downsampling is its block 0."""
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False):
        """A new head for ``num_classes`` (0: none); ``reset_other`` also drops the final norm."""
        check_num_classes(type(self).__name__, num_classes)
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"{type(self).__name__}: global_pool {global_pool!r} is not supported; "
                                 f"use 'avg' or '' (none)")
            self.global_pool = global_pool
        if reset_other:
            self.norm = nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, num_classes), or the pooled features with ``pre_logits``."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))
