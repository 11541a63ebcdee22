"""Reading pickles without running code: the one allowlist of numpy classes visionattn admits.

Two readers use it: ``torch.load(weights_only=True)`` (checkpoints; :func:`numpy_globals` is passed
to its allowlist) and :func:`load_arrays_only` (data files such as CIFAR batches, which are plain
pickles). Neither can construct anything but numpy arrays, numpy scalars and Python containers.
Checkpoints written by mmengine's Runner (``tools/train.py``) also hold its MessageHub:
:func:`mmengine_globals` adds exactly what that needs.
"""
import io
import pickle
from typing import Any, BinaryIO, List

import numpy as np

# numpy 2 renamed numpy.core to numpy._core; files written under either name must load.
_CORES = ("numpy.core.multiarray", "numpy._core.multiarray")
_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64")
# (module, name) a data pickle may refer to; _codecs.encode is how Python 2 pickles store bytes;
# numeric._frombuffer (an array from its raw bytes, dtype and shape) is how protocol 5 stores arrays.
_ALLOWED = {*((core, name) for core in _CORES for name in ("_reconstruct", "scalar")),
            *((core.replace("multiarray", "numeric"), "_frombuffer") for core in _CORES),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
            *(("numpy.dtypes", type(np.dtype(t)).__name__) for t in _DTYPES)}


def numpy_globals() -> List[Any]:
    """numpy's array/scalar reconstruction classes for ``torch.serialization.safe_globals``."""
    core = getattr(np, "_core", None) or np.core
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    allowed: List[Any] = [np.ndarray, np.dtype, reconstruct, scalar]
    allowed += [(reconstruct, f"{c}._reconstruct") for c in _CORES] + [(scalar, f"{c}.scalar") for c in _CORES]
    return allowed + [type(np.dtype(t)) for t in _DTYPES]


class _ArraysOnly(pickle.Unpickler):
    what = "file"

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{self.what} refers to {module}.{name}, which is not a numpy array: refused "
                                     f"(visionattn never runs code from a data file)")


def load_arrays_only(file: BinaryIO, what: str = "file", encoding: str = "ASCII") -> Any:
    """Unpickle ``file`` admitting only numpy arrays/scalars and Python containers.

    ``what`` names the file in the error raised for anything else; ``encoding='bytes'`` reads
    Python 2 pickles (CIFAR).
    """
    data = file.read()
    reader = _ArraysOnly(io.BytesIO(data), encoding=encoding)
    reader.what = what
    try:
        return reader.load()
    except pickle.UnpicklingError as err:
        if "which is not a numpy array" in str(err):
            raise
        raise pickle.UnpicklingError(f"{what} is not a readable pickle ({err}); it is damaged or another format") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError,
            UnicodeDecodeError, OverflowError) as err:
        kind = "is truncated" if isinstance(err, EOFError) or "truncated" in str(err) else "is damaged"
        raise pickle.UnpicklingError(f"{what} {kind}: unpickling {len(data)} bytes failed with "
                                     f"{type(err).__name__}: {err}") from None


def history_buffer_getattr(obj, name: str):
    """``getattr`` as the weights-only unpickler sees it: only ``HistoryBuffer.<statistics method>``."""
    from mmengine.logging import HistoryBuffer

    if obj is HistoryBuffer and name in {"min", "max", "current", "mean", *HistoryBuffer._statistics_methods}:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"weights-only load refuses getattr({obj!r}, {name!r}): only "
                                 "mmengine HistoryBuffer statistics methods are allowed")


def mmengine_globals() -> List[Any]:
    """What mmengine 0.10 pickles into every checkpoint besides tensors, for torch's weights-only
    allowlist: its MessageHub's HistoryBuffer objects (numpy arrays inside) and references to their
    statistics methods written as ``getattr(HistoryBuffer, 'mean')``, resolved by
    :func:`history_buffer_getattr` and nothing else. Empty without mmengine."""
    try:
        from mmengine.logging import HistoryBuffer
    except ImportError:
        return []
    return [HistoryBuffer, (history_buffer_getattr, "builtins.getattr")]
