"""A tensor derived from parameters (a re-parameterised kernel, a folded bias), kept between
no-grad calls and recomputed as soon as any of its parameters changes."""
from typing import Callable, Optional, Sequence, Tuple

import torch


class DerivedTensor:
    """``get(params, compute)`` returns ``compute()``, cached under the parameters' identity.

    The key is each parameter's version counter (bumped by every in-place update: optimiser steps,
    ``load_state_dict``, ``copy_``), storage pointer, dtype and device, so the cached value is never
    stale. Use it only where no gradient is needed; traced, fake and meta tensors (torch.compile,
    torch.export) are computed afresh since they have no storage to key on.
    """

    def __init__(self):
        self.value: Optional[torch.Tensor] = None
        self._key: Optional[Tuple] = None

    def clear(self) -> None:
        self.value, self._key = None, None

    def get(self, params: Sequence[torch.Tensor], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if torch.compiler.is_compiling() or any(p.device.type == "meta" for p in params):
            return compute()
        try:
            key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)
        except RuntimeError:  # tensor subclasses without storage (e.g. fake tensors in torch.export)
            return compute()
        if self.value is None or key != self._key:
            with torch.no_grad():
                self.value = compute()
            self._key = key
        return self.value
