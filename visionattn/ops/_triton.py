"""What the Triton kernels of every op share: the guarded import and whether a kernel can run.

Triton is optional (it ships with PyTorch on Linux): without it ``triton`` and ``tl`` are ``None``,
the kernel modules ``_<op>_triton.py`` define nothing, and every op runs its reference.

On a machine without a GPU the kernels run on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, set before Python starts), which is how the tests check them.
"""
import os
from typing import Optional, Tuple

import torch

from .dispatch import portable

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch on Linux
    triton = tl = None


def _read_interpret_flag() -> bool:
    if triton is None:
        return False
    try:
        from triton import knobs
    except ImportError:  # pragma: no cover - older triton reads the variable itself, this way
        return os.environ.get("TRITON_INTERPRET", "0") == "1"
    return bool(knobs.runtime.interpret)


# Read once: Triton decides when a kernel is defined (at import) whether it runs interpreted, and
# torch.compile traces a module constant where it could not trace the knob.
_INTERPRET = _read_interpret_flag()

FLOAT_DTYPES: Tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)


def power_of_two_ranges(n: int) -> Tuple[int, int]:
    """``n`` as two power-of-two tile sides, the second 0 when one suffices (else masked past ``n``):
    36 -> (32, 4), 80 -> (64, 16), 128 -> (128, 0), 272 -> (256, 16). Their sum is at most 1.5 n, where
    one power of two can be 2 n: the masked lanes a kernel computes but does not use."""
    first = 1 << (n.bit_length() - 1)
    rest = n - first
    return first, (1 << (rest - 1).bit_length() if rest else 0)


def triton_available() -> bool:
    return triton is not None


def interpreting() -> bool:
    """Whether Triton runs on the CPU interpreter (``TRITON_INTERPRET=1``), for tests without a GPU."""
    return _INTERPRET


def can_run(x: torch.Tensor, *others: Optional[torch.Tensor], dtypes: Tuple[torch.dtype, ...] = FLOAT_DTYPES
            ) -> bool:
    """Whether a Triton kernel can take ``x``: Triton installed, ``x`` on CUDA (or on the CPU under
    the interpreter), ``x.dtype`` in ``dtypes``, and every tensor of ``others`` (``None`` skipped)
    of ``x``'s dtype. Each op's ``_triton_supports`` adds its own shape and layout conditions.

    Never under ``torch.fx`` symbolic tracing (timm's FX feature extraction) nor inside
    :func:`.dispatch.portable_ops` (export): the graph then records PyTorch ops, which any
    runtime and device runs."""
    if isinstance(x, torch.fx.Proxy) or portable():
        return False
    on_device = x.is_cuda or (_INTERPRET and x.device.type == "cpu")
    if triton is None or not on_device or x.dtype not in dtypes:
        return False
    for t in others:
        if t is not None and t.dtype != x.dtype:
            return False
    return True


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last axis has unit stride (any other strides: kernels read views of a
    fused projection in place), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def needs_grad(*tensors) -> bool:
    """Whether autograd will differentiate through these tensors (``None`` entries are skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def launch_directly(*tensors) -> bool:
    """Whether an op may call its Triton launcher itself instead of through its ``torch.library``
    custom op: in eager mode when no gradient is needed. A custom-op call costs tens of microseconds
    of host time, which batch-1 inference of a network of small kernels notices; torch.compile,
    torch.export and autograd still see the registered op."""
    if torch.compiler.is_compiling():
        return False
    return not needs_grad(*tensors)
