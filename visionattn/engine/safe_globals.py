"""Let mmengine 0.10 checkpoints load under torch >= 2.6's ``torch.load(weights_only=True)`` default.

mmengine pickles its MessageHub into every checkpoint (HistoryBuffer objects holding numpy
arrays, and references to HistoryBuffer's statistics methods written as
``getattr(HistoryBuffer, 'mean')``) and reads it back with a plain ``torch.load``, which
torch >= 2.6 refuses. Instead of turning ``weights_only`` off (which would run any pickled
code), allow exactly these data classes, and a ``getattr`` that resolves nothing but
HistoryBuffer's statistics methods.
"""
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer


def _numpy_globals():
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed np.core
    dtype_classes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


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
            [HistoryBuffer, *_numpy_globals(), (history_buffer_getattr, "builtins.getattr")])
