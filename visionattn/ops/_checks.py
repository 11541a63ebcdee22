"""Boundary checks shared by the ops' ``_check`` functions: tensor types, dtypes and devices of the
arguments, and integer/number parameters, each error naming the op, the argument, its value and the fix.

They read only Python attributes (types, dtypes, devices, shapes), never tensor values, so they cost
a few microseconds per call and behave the same under torch.compile.
"""
import math
from numbers import Integral, Real
from typing import Dict, Iterable, Optional

import torch

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_tensors(op: str, tensors: Dict[str, Optional[torch.Tensor]], *, floating: bool = True,
                  same_dtype: bool = True) -> None:
    """The named tensors (None entries skipped) are tensors on one device; floating point if
    ``floating``; of one dtype if ``same_dtype``. The happy path is one loop of attribute reads."""
    first = None
    for t in tensors.values():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or (floating and not t.is_floating_point()):
            break
        if first is None:
            first = t
        elif t.device != first.device or (same_dtype and t.dtype != first.dtype):
            break
    else:
        return
    _raise_tensors(op, tensors, floating, same_dtype)


def _raise_tensors(op: str, tensors: Dict[str, Optional[torch.Tensor]], floating: bool, same_dtype: bool) -> None:
    given = {k: t for k, t in tensors.items() if t is not None}
    names = ", ".join(given)
    for key, t in given.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {key} must be a torch.Tensor, got {type(t).__name__}")
    for key, t in given.items():
        if floating and t.dtype not in _FLOATS:
            if len(given) > 1 and same_dtype:
                listing = ", ".join(f"{k} {_name(v.dtype)}" for k, v in given.items())
                raise ValueError(f"{op}: {names} must share one floating dtype (float16, bfloat16, float32, float64), "
                                 f"got {listing}; cast with {key}.float()")
            raise ValueError(f"{op}: {key} must be a floating-point tensor, got {_name(t.dtype)}; cast it with "
                             f"{key}.float()")
    first_key, first = next(iter(given.items()))
    for key, t in given.items():
        if t.device != first.device:
            listing = ", ".join(f"{k} on {v.device}" for k, v in given.items())
            raise ValueError(f"{op}: the tensors must be on one device, got {listing}; move them with "
                             f"{key}.to({first_key}.device)")
        if same_dtype and t.dtype != first.dtype:
            listing = ", ".join(f"{k} {_name(v.dtype)}" for k, v in given.items())
            kind = "floating dtype" if floating else "dtype"
            raise ValueError(f"{op}: {names} must share one {kind}, got {listing}; cast them to one, "
                             f"e.g. {key}.to({first_key}.dtype)")


def check_params(op: str, like: torch.Tensor, params: Dict[str, Optional[torch.Tensor]],
                 dtypes: Optional[Iterable[torch.dtype]] = None) -> None:
    """Per-channel parameters (None skipped): floating tensors on ``like``'s device, of a dtype in
    ``dtypes`` (default: any floating dtype)."""
    allowed = tuple(dtypes) if dtypes is not None else _FLOATS
    device = like.device
    for key, t in params.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {key} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.dtype not in allowed:
            raise ValueError(f"{op}: {key} has dtype {_name(t.dtype)}; it must be one of "
                             f"{', '.join(_name(d) for d in allowed)} (cast it with {key}.to({_name(allowed[0])}))")
        if t.device != device:
            raise ValueError(f"{op}: {key} is on {t.device} but the input is on {device}; move it with "
                             f"{key}.to(x.device)")


def param_dtypes(x: torch.Tensor) -> tuple:
    """Dtypes accepted for the per-channel parameters of a ``x``: its own, and float32 for a half or
    bfloat16 ``x`` (parameters kept in float32 under mixed precision)."""
    return (x.dtype, torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else (x.dtype,)


def check_int(op: str, name: str, value, minimum: Optional[int] = 1, maximum: Optional[int] = None) -> int:
    """``value`` is an integer (not a bool) in [minimum, maximum]; returns it as an int (a symbolic
    size of a traced shape is returned as it is)."""
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{op}: {name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            allowed = f">= {minimum}"
        elif minimum is None:
            allowed = f"<= {maximum}"
        else:
            allowed = f"in [{minimum}, {maximum}]"
        raise ValueError(f"{op}: {name} must be {allowed} (an integer), got {value}")
    return value


def check_number(op: str, name: str, value, minimum: Optional[float] = None, maximum: Optional[float] = None,
                 positive: bool = False) -> float:
    """``value`` is a finite real number (> 0 if ``positive``, within [minimum, maximum]); returns a float
    (a symbolic value of a traced graph is returned as it is)."""
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return value
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{op}: {name} must be a finite number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise ValueError(f"{op}: {name}={value:g} is out of range; it must be > 0")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{op}: {name}={value:g} is out of range; it must be in "
                         f"[{'-inf' if minimum is None else f'{minimum:g}'}, {'inf' if maximum is None else f'{maximum:g}'}]")
    return value
