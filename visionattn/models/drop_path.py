"""Drop path (stochastic depth) whose per-sample factors the residual add can apply itself.

timm's ``DropPath`` multiplies a residual branch by a per-sample factor (0 or ``1 / keep``) in a
broadcast pass of its own, and its backward multiplies the gradient in another; the add that
follows is a third pass. :class:`DropPath` is timm's module (same ``drop_prob`` and values, so
schedules that change ``drop_prob`` and checkpoints are unaffected) with :meth:`DropPath.factors`,
which draws the factors exactly as timm does (same random stream, dtype and device) and hands them
to the add: :func:`add_dropped_path` (one ``addcmul`` pass on CUDA) or the fused add + LayerNorm
(:func:`visionattn.ops.layer_norm.layer_norm` with ``residual_scale=``).

The factors are scaled out of place. timm's ``drop_path`` scales its random tensor with an in-place
``div_`` whose result nothing reads, so torch.fx's dead-code elimination (run by timm's and
torchvision's ``create_feature_extractor``) drops it: a traced model in training mode kept its paths
unscaled (factor 1 instead of ``1 / keep``). :meth:`DropPath.forward` multiplies by :meth:`factors`,
so a traced model trains as the eager one does.
"""
from typing import Optional

import torch
from timm.layers import DropPath as _TimmDropPath

__all__ = ["DropPath", "add_dropped_path", "per_sample"]


def per_sample(factors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(N,)`` factors as ``(N, 1, ..., 1)``, broadcasting over the other axes of ``like (N, ...)``."""
    return factors.view([-1] + [1] * (like.dim() - 1))


class DropPath(_TimmDropPath):
    """timm's ``DropPath`` (same values), plus :meth:`factors` for callers that fuse the multiply into their add."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factors = self.factors(x)
        if factors is None:
            return x
        return x * per_sample(factors, x)

    @torch.jit.export  # callable on a scripted module too
    def factors(self, branch: torch.Tensor) -> Optional[torch.Tensor]:
        """The ``(N,)`` per-sample factors ``forward`` would multiply ``branch (N, ...)`` by, drawn as it
        draws them, or None when every path is kept (evaluation, or ``drop_prob == 0``)."""
        if not self.training or self.drop_prob == 0.0:
            return None
        keep = 1.0 - self.drop_prob
        factors = branch.new_empty([branch.shape[0]]).bernoulli_(keep)  # as many draws as timm's (N, 1, ..., 1)
        if keep > 0.0 and self.scale_by_keep:
            factors = factors / keep  # out of place: an in-place div_ is dead code to torch.fx
        return factors


def add_dropped_path(x: torch.Tensor, branch: torch.Tensor, factors: Optional[torch.Tensor]) -> torch.Tensor:
    """``x + branch * factors`` per sample (``x + branch`` for None factors).

    On CUDA one ``addcmul`` pass, the product and sum rounded once; elsewhere the multiply and the add
    as timm's ``DropPath`` writes them, so CPU results stay bit-equal to the unfused module's."""
    if factors is None:
        return x + branch
    factors = per_sample(factors, branch)
    if not torch.jit.is_scripting() and branch.is_cuda:
        return torch.addcmul(x, branch, factors)
    return x + branch * factors
