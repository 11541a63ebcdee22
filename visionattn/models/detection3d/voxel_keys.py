"""Linear keys of voxel/window/pillar coordinates, narrowed for sorting.

Sorting (``torch.sort``, ``torch.unique``) is a radix sort on the GPU with one pass per key byte, so
int64 keys cost twice the passes of int32 ones. The keys here are computed in int64 (no overflow)
and sorted as int32 whenever their bound, known on the host from the grid size, allows it.
"""
import torch

_INT32_LIMIT = 2 ** 31


def narrowed(key: torch.Tensor, bound: int) -> torch.Tensor:
    """``key`` (values in ``[0, bound)``) as int32 when ``bound`` fits, else unchanged."""
    return key.int() if int(bound) <= _INT32_LIMIT else key
