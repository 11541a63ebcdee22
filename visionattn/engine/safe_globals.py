"""Let mmengine 0.10 checkpoints load under torch >= 2.6's ``torch.load(weights_only=True)`` default.

mmengine pickles its MessageHub into every checkpoint and reads it back with a plain ``torch.load``,
which torch >= 2.6 refuses. Instead of turning ``weights_only`` off (which would run any pickled
code), the runner allows exactly the data classes of :func:`visionattn.safe_pickle.mmengine_globals`.
"""
import torch

from ..safe_pickle import mmengine_globals, numpy_globals


def allow_mmengine_checkpoints() -> None:
    """Add mmengine's checkpoint classes to torch's weights-only unpickler allow-list (idempotent)."""
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals([*mmengine_globals(), *numpy_globals()])
