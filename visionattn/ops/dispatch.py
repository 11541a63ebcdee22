"""Choosing an op's implementation.

Every op takes ``impl`` in its own set of names (``"reference"`` always among them) or ``"auto"``.
``"auto"`` takes, in order: the implementation forced by :func:`use_impl` when the op has it and
it supports the inputs, else the first supported one of the op's preference order (fastest first).
"""
import contextlib
import threading
from typing import Dict, Iterator, Optional

_state = threading.local()


@contextlib.contextmanager
def _setting(name: str, value) -> Iterator[None]:
    """``_state.<name> = value`` inside the block (this thread), the previous value restored after it."""
    previous = getattr(_state, name, None)
    setattr(_state, name, value)
    try:
        yield
    finally:
        setattr(_state, name, previous)


@contextlib.contextmanager
def use_impl(impl: Optional[str]) -> Iterator[None]:
    """Make ``impl='auto'`` resolve to ``impl`` inside the block, wherever the op supports it.

    Used by benchmarks and tests to run a whole model on e.g. the reference path:
    ``with use_impl("reference"): model(x)``. ``"op:impl"`` forces one op only, and several such
    pairs join with ``+`` (``"layer_norm:reference+key_norm_allocation:reference"``): the other
    ops keep their auto-selection (one op's fast path against its reference, inside a model).
    ``None`` restores plain auto-selection.
    """
    with _setting("forced", impl):
        yield


def forced_impl(op: Optional[str] = None) -> Optional[str]:
    """The implementation forced by :func:`use_impl` (for ``op``, when it names ops)."""
    forced = getattr(_state, "forced", None)
    if forced is None or ":" not in forced:
        return forced
    scoped = dict(pair.split(":", 1) for pair in forced.split("+") if ":" in pair)
    return scoped.get(op)


@contextlib.contextmanager
def portable_ops() -> Iterator[None]:
    """Inside the block no op takes a Triton kernel: each runs its fastest PyTorch-only path
    (the reference, or e.g. an SDPA path). Used when exporting (ONNX, ``torch.export``,
    TorchScript), so the saved graph holds standard ATen ops that any runtime and device can run
    instead of ``visionattn::`` custom ops."""
    with _setting("portable", True):
        yield


def portable() -> bool:
    """Whether :func:`portable_ops` is active (in this thread)."""
    return bool(getattr(_state, "portable", False))


@contextlib.contextmanager
def recording_graph() -> Iterator[None]:
    """Mark the calls that a CUDA graph records: its warm-up runs and its capture
    (:class:`visionattn.cuda_graph.TrainingGraph` sets it). There each kernel launch costs host time
    once, not at every replay, so a path that adds launches from Python to save GPU time pays off
    only inside this block; the code that makes such a trade asks :func:`graph_recording`."""
    with _setting("recording", True):
        yield


def graph_recording() -> bool:
    """Whether :func:`recording_graph` is active (in this thread)."""
    return bool(getattr(_state, "recording", False))


def pick(op: str, impl: str, supported: Dict[str, bool]) -> str:
    """Resolve ``impl`` for ``op``.

    Args:
        op: the op's name, for error messages.
        impl: the caller's choice, or ``"auto"``.
        supported: every implementation of the op, fastest first, mapped to whether it can run
            the current inputs (device, dtype, shapes); ``"reference"`` must be present.
    """
    if impl != "auto":
        if impl not in supported:
            raise ValueError(f"{op}: unknown impl {impl!r}; choose from {['auto', *supported]}")
        if not supported[impl]:
            raise ValueError(f"{op}: impl {impl!r} does not support these inputs (device/dtype/shape)")
        return impl
    forced = forced_impl(op)
    if forced is not None and supported.get(forced):
        return forced
    for name, ok in supported.items():
        if ok:
            return name
    raise RuntimeError(f"{op}: no implementation supports these inputs")
