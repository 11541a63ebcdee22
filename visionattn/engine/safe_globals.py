"""Let mmengine 0.10 checkpoints load under torch >= 2.6's ``torch.load(weights_only=True)`` default.

mmengine pickles its MessageHub into every checkpoint (HistoryBuffer objects holding numpy
arrays, and references to HistoryBuffer's statistics methods written as
``getattr(HistoryBuffer, 'mean')``) and reads it back with a plain ``torch.load``, which
torch >= 2.6 refuses. Instead of turning ``weights_only`` off (which would run any pickled
code), allow exactly these data classes, and a ``getattr`` that resolves nothing but
HistoryBuffer's statistics methods.
"""
import pickle

import torch
from mmengine.logging import HistoryBuffer

from ..safe_pickle import numpy_globals


def history_buffer_getattr(obj, name: str):
    """``getattr`` as the weights-only unpickler sees it: only ``HistoryBuffer.<statistics method>``."""
    if obj is HistoryBuffer and name in {"min", "max", "current", "mean", *HistoryBuffer._statistics_methods}:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"weights-only load refuses getattr({obj!r}, {name!r}): only "
                                 "mmengine HistoryBuffer statistics methods are allowed")


def allow_mmengine_checkpoints() -> None:
    """Add mmengine's checkpoint classes to torch's weights-only unpickler allow-list (idempotent)."""
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(
            [HistoryBuffer, *numpy_globals(), (history_buffer_getattr, "builtins.getattr")])
