"""The one input check a network runs at its forward entry, and the constructor-argument checks.

Each network (timm backbone or task network) calls :func:`check_images` once per forward, before any
layer, so a wrong input fails with a sentence that names the network, the bad value and the fix
instead of an error from deep inside torch. The check reads only shapes, dtypes and devices (no
host synchronisation, no tensor op) and is skipped while tracing (torch.compile, torch.export, fx,
TorchScript), where the traced graph must not carry it.

Dtype rule (one for every network): images are floating point in the network's parameter dtype.
uint8 images are refused (``x.float() / 255`` then the model's normalisation, or the
``visionattn.inference`` helpers, which take uint8); float64 is refused unless the network itself
runs in float64 (``model.double()``). Under autocast any float dtype is accepted (autocast casts).
Networks that cast their input themselves (MatchStereo) pass ``casts=True`` with the dtypes they take.

The constructor helpers (:func:`check_positive_int`, :func:`check_rate`...) raise ``ValueError``
with the argument's name, its value and the allowed range.
"""
from typing import Iterable, Optional, Sequence, Tuple, Union

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def tracing(x=None) -> bool:
    """Under torch.compile / torch.export / fx / TorchScript tracing: input checks are skipped."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    exporting = getattr(torch.compiler, "is_exporting", None)
    if exporting is not None and exporting():
        return True
    return isinstance(x, torch.fx.Proxy)


def channel_fix(got: int, want: int, shape: Tuple[int, ...]) -> str:
    """How to turn a ``got``-channel image batch of ``shape`` into ``want`` channels."""
    if shape[-1] == want and got != want:
        return "it looks channels-last (B, H, W, C): use x.permute(0, 3, 1, 2)"
    if got == 1 and want == 3:
        return "repeat a grayscale image with x.expand(-1, 3, -1, -1)"
    if got in (3, 4) and want == 1:
        return "convert to one channel first (e.g. x[:, :3].mean(1, keepdim=True))"
    return f"convert the images to {want} channel{'' if want == 1 else 's'}"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_images(x, *, network: str, channels: Optional[Union[int, Sequence[int]]] = None,
                 like: Optional[torch.Tensor] = None, multiple: int = 1, min_size: int = 1,
                 fixed_size: Optional[Tuple[int, int]] = None, casts: bool = False,
                 dtypes: Sequence[torch.dtype] = FLOAT_DTYPES, name: str = "images", pad_hint: str = "",
                 size_hint: str = "") -> None:
    """Raise ``ValueError`` (``TypeError`` for a non-tensor) unless ``x`` is what ``network`` takes.

    Args:
        x: the input, expected (B, C, H, W) with B >= 1.
        network: how the message names the network (its class or model name).
        channels: the allowed C (None: any).
        like: a parameter of the network: ``x`` must be on its device and, unless ``casts``, have its
            dtype (float64 only for a float64 network; any float under autocast).
        multiple, min_size: H and W must be multiples of ``multiple`` and at least ``min_size``;
            ``pad_hint`` names what pads any size (e.g. ``visionattn.inference.run_padded(model, x)``).
        fixed_size: (H, W) the network takes exactly (a ViT without ``dynamic_img_size``);
            ``size_hint`` says how to get other sizes.
        casts: the network casts ``x`` itself: every dtype in ``dtypes`` is accepted.
    """
    if tracing(x):
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{network} takes a torch.Tensor of {name} (B, C, H, W), got {type(x).__name__}; "
                        "convert e.g. with torch.from_numpy(array).permute(2, 0, 1)[None].float()")
    shape = tuple(x.shape)
    if x.dim() != 4:
        fix = {3: "add the batch axis with x[None]", 2: "add batch and channel axes with x[None, None]"}.get(
            x.dim(), "pass one (B, C, H, W) batch")
        raise ValueError(f"{network} takes {name} (B, C, H, W), got a {x.dim()}-D tensor of shape {shape}; {fix}")
    if shape[0] == 0:
        raise ValueError(f"{network} got an empty batch of {name} {shape}; pass at least one image (B >= 1)")
    if channels is not None:
        allowed = (channels,) if isinstance(channels, int) else tuple(channels)
        if shape[1] not in allowed:
            want = " or ".join(str(c) for c in allowed)
            raise ValueError(f"{network} takes {name} (B, {want}, H, W) with {want} channel"
                             f"{'' if allowed == (1,) else 's'}, got {shape[1]} (shape {shape}); "
                             f"{channel_fix(shape[1], allowed[0], shape)}")
    _check_dtype_device(x, network, name, like, casts, dtypes)
    H, W = shape[-2:]
    if fixed_size is not None:
        if (H, W) != tuple(fixed_size):
            raise ValueError(f"{network} takes {name} of exactly {fixed_size[0]}x{fixed_size[1]}, got {H}x{W}; "
                             f"resize or crop to {fixed_size[0]}x{fixed_size[1]}{'; ' + size_hint if size_hint else ''}")
        return
    if min(H, W) < min_size or H % multiple or W % multiple:
        need = []
        if multiple > 1:
            need.append(f"multiples of {multiple}")
        if min_size > 1:
            need.append(f"at least {min_size}")
        raise ValueError(f"{network} takes {name} whose H and W are {' and '.join(need) or 'at least 1'}, got "
                         f"{H}x{W}; {pad_hint or f'pad them to a multiple of {multiple}'}")


def _check_dtype_device(x: torch.Tensor, network: str, name: str, like: Optional[torch.Tensor], casts: bool,
                        dtypes: Sequence[torch.dtype]) -> None:
    dtype = x.dtype
    if casts:
        if dtype not in tuple(dtypes):
            accepted = ", ".join(_dtype_name(d) for d in dtypes)
            raise ValueError(f"{network} takes {name} of dtype {accepted}, got {_dtype_name(dtype)}; "
                             f"cast with x.float()")
    elif not dtype.is_floating_point:
        if dtype == torch.uint8:
            fix = ("convert with x.float() / 255 (then the model's mean/std normalisation), or use the "
                   "visionattn.inference helpers, which take uint8 images")
        else:
            fix = "convert with x.float()"
        raise ValueError(f"{network} takes floating-point {name}, got {_dtype_name(dtype)}; {fix}")
    elif like is not None and dtype != like.dtype and not like.is_meta:
        autocast = torch.is_autocast_enabled(x.device.type) if x.device.type in ("cuda", "cpu") else False
        if not autocast and not (like.dtype == torch.float64 and dtype in FLOAT_DTYPES):
            if dtype == torch.float64:
                fix = f"cast with x.to(torch.{_dtype_name(like.dtype)}) (or run the model in float64: model.double())"
            else:
                fix = f"cast with x.to(torch.{_dtype_name(like.dtype)}), or run under torch.autocast"
            raise ValueError(f"{network} runs in {_dtype_name(like.dtype)} but got {name} of dtype "
                             f"{_dtype_name(dtype)}; {fix}")
    if like is not None and x.device != like.device and not like.is_meta:
        raise ValueError(f"{network} is on {like.device} but got {name} on {x.device}; move them with "
                         f"x.to('{like.device}') (or the model with model.to('{x.device}'))")


# --- constructor arguments -------------------------------------------------------------------------

def _fail(owner: str, arg: str, value, allowed: str, fix: str = ""):
    raise ValueError(f"{owner}: {arg}={value!r} is out of range; it must be {allowed}{'; ' + fix if fix else ''}")


def check_int(owner: str, arg: str, value, minimum: int = 1, maximum: Optional[int] = None) -> None:
    """``value`` is an int (bool excluded) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np
            ok = isinstance(value, np.integer)
        except ImportError:  # pragma: no cover
            ok = False
        if not ok:
            raise ValueError(f"{owner}: {arg} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        _fail(owner, arg, value, f"an integer >= {minimum}" if maximum is None else
              f"an integer in [{minimum}, {maximum}]")


def check_ints(owner: str, arg: str, values: Iterable, minimum: int = 1, length: Optional[int] = None) -> None:
    """Each entry of the sequence ``values`` is an int >= minimum (and there are ``length`` of them)."""
    try:
        values = list(values)
    except TypeError:
        raise ValueError(f"{owner}: {arg} must be a sequence of integers, got {values!r}") from None
    if length is not None and len(values) != length:
        raise ValueError(f"{owner}: {arg} must have {length} entries (one per stage), got {len(values)}: {values}")
    for i, v in enumerate(values):
        check_int(owner, f"{arg}[{i}]", v, minimum)


def check_num_classes(owner: str, num_classes) -> None:
    """0 (no head: pooled features) or a positive class count."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        _fail(owner, "num_classes", num_classes, "an integer >= 0", "0 builds the network without a classifier head")


def check_rate(owner: str, arg: str, value, maximum: float = 1.0, inclusive: bool = False) -> None:
    """A probability-like rate (dropout, drop path) in [0, maximum) (``inclusive``: [0, maximum])."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {arg} must be a number, got {value!r}") from None
    if not (0.0 <= v < maximum or (inclusive and v == maximum)):
        _fail(owner, arg, value, f"in [0, {maximum:g}{']' if inclusive else ')'}")


def check_divides(owner: str, arg: str, value: int, of_arg: str, of_value: int) -> None:
    """``value`` (>= 1) divides ``of_value``."""
    check_int(owner, arg, value, 1)
    if of_value % value:
        divisors = [d for d in range(1, of_value + 1) if of_value % d == 0]
        raise ValueError(f"{owner}: {arg}={value} must divide {of_arg}={of_value}; pick one of "
                         f"{divisors[:12]}{'...' if len(divisors) > 12 else ''}")


def check_choice(owner: str, arg: str, value, choices: Sequence) -> None:
    if value not in tuple(choices):
        raise ValueError(f"{owner}: {arg}={value!r} is not one of {tuple(choices)}")
