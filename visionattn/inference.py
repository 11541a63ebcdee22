"""What runs around a network at inference: input checks, value rescaling, padding, tiling with
overlap blending and CUDA-graph replay, and the task-level predictors built from them.

Networks keep only ``forward``, on inputs that already meet their contract. A network states its
size contract with two class attributes read here (absent: no constraint):
``size_multiple`` (H and W must be multiples of it) and ``min_size`` (smallest H and W).

Generic pieces (any image network)::

    check_image(x, channels=3, value_range=(0, 255))     # ValueError that names the fix
    padded, padding = pad_to_multiple(x, 32, mode="reflect"); y = padding.crop(net(padded))
    y = tiled(fn, x, tile=256, overlap=32)                 # overlapping tiles, linear cross-fades
    y = run_padded(net, x)                                 # pad to the network's contract, run, crop

Task predictors::

    disp = predict_disparity(model, left, right, cuda_graph=True)   # MatchStereo family
    out = predict_stereo(model, left, right)                        # disparity + consistency, ...
    y = restore_image(model, x, tile=256, overlap=32)               # image-to-image restoration
    dets = predict_boxes_3d(model, points)                          # LiDAR detectors (ScatterFormer)

CUDA graphs are captured per input shape by ``visionattn.cuda_graph`` and kept per model by
:func:`visionattn.cuda_graph.graph_runner` (nothing is stored on the network).
"""
from functools import partial
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cuda_graph import graph_runner
from .models.input_contract import FLOAT_DTYPES, channel_fix
from .models.stereo.matchstereo import MatchStereo, field_outputs
ANCHORS = ("top_left", "bottom_left", "center")
PAD_MODES = ("reflect", "replicate", "constant")


# --- input checks ----------------------------------------------------------------------------

def _tracing(x: torch.Tensor) -> bool:
    """Under torch.compile / torch.export / CUDA-graph capture (data-dependent checks are skipped)."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
    return torch.compiler.is_compiling() or exporting() or capturing


def check_image(x, *, channels: Optional[Union[int, Sequence[int]]] = None,
                value_range: Optional[Tuple[float, float]] = None,
                dtypes: Sequence[torch.dtype] = FLOAT_DTYPES, name: str = "image", hint: str = "") -> None:
    """Raise ``ValueError`` (with the fix) unless ``x`` is a non-empty (B, C, H, W) image batch.

    Args:
        channels: the allowed channel count(s) C (None: any).
        value_range: (lo, hi) the values must lie in. One host synchronisation; skipped on the
            'meta' device and while compiling, exporting or capturing a CUDA graph.
        dtypes: accepted dtypes; by default float16/bfloat16/float32 (uint8 and float64 raise).
        name: how the message calls ``x``; hint: appended to the value-range message.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor (B, C, H, W), got {type(x).__name__}; "
                         "convert with torch.from_numpy(array).permute(2, 0, 1)[None]")
    shape = tuple(x.shape)
    if x.dim() == 3:
        raise ValueError(f"{name} must be a batch (B, C, H, W), got a 3-D tensor {shape}; "
                         "add the batch axis with x[None]")
    if x.dim() == 2:
        raise ValueError(f"{name} must be a batch (B, C, H, W), got a 2-D tensor {shape}; use x[None, None]")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a batch (B, C, H, W), got a {x.dim()}-D tensor {shape}")
    if shape[0] == 0 or shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"{name} batch {shape} is empty; pass at least one image of at least 1x1 pixels")
    if channels is not None:
        allowed = (channels,) if isinstance(channels, int) else tuple(channels)
        if shape[1] not in allowed:
            want = " or ".join(str(c) for c in allowed)
            raise ValueError(f"{name} must have {want} channel{'s' if allowed != (1,) else ''}, got {shape[1]} "
                             f"(shape {shape}); "
                             f"{channel_fix(shape[1], allowed[0], shape)}")
    if x.dtype not in tuple(dtypes):
        accepted = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        got = str(x.dtype).replace("torch.", "")
        if x.dtype == torch.uint8:
            lo, hi = value_range or (0.0, 1.0)
            fix = "x.float() / 255" if (lo, hi) == (0, 1) else "x.float()"
            fix = f"convert to floats in [{lo:g}, {hi:g}], e.g. {fix}"
        else:
            target = [d for d in dtypes if d.is_floating_point]
            fix = f"cast with x.to(torch.{str(target[-1]).replace('torch.', '')})" if target else "convert it"
        raise ValueError(f"{name} has dtype {got}, expected {accepted}: {fix}")
    if value_range is not None and x.device.type != "meta" and not _tracing(x):
        lo, hi = value_range
        got_lo, got_hi = x.aminmax()
        if got_lo < lo or got_hi > hi:
            raise ValueError(f"{name} values must lie in [{lo:g}, {hi:g}], got [{got_lo.item():.3g}, "
                             f"{got_hi.item():.3g}]{'; ' + hint if hint else ''}")


def rescale(x: torch.Tensor, src: Tuple[float, float], dst: Tuple[float, float]) -> torch.Tensor:
    """Map values linearly from the range ``src`` to ``dst`` (e.g. (0, 1) -> (-1, 1))."""
    (a, b), (c, d) = src, dst
    if a == b:
        raise ValueError(f"the source range {src} is empty; give (lo, hi) with lo != hi")
    if (a, b) == (c, d):
        return x
    return (x - a) * ((d - c) / (b - a)) + c


# --- padding -----------------------------------------------------------------------------------

class Padding(NamedTuple):
    """Pixels added on each side by :func:`pad_to_multiple`; ``crop`` removes them again."""

    top: int
    bottom: int
    left: int
    right: int

    def crop(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` (..., H + top + bottom, W + left + right) -> (..., H, W): the original image's pixels."""
        H, W = y.shape[-2:]
        return y[..., self.top:H - self.bottom, self.left:W - self.right]


def pad_to_multiple(x: torch.Tensor, multiple: int, *, min_size: int = 1, mode: str = "reflect",
                    anchor: str = "top_left", value: float = 0.0) -> Tuple[torch.Tensor, Padding]:
    """Pad (B, C, H, W) so H and W are multiples of ``multiple`` and at least ``min_size``.

    Args:
        mode: 'reflect' (falls back to 'replicate' where the image is too small to mirror),
            'replicate' or 'constant' (``value``).
        anchor: where the image sits in the padded canvas: 'top_left' (padding at the bottom and
            right), 'bottom_left' (top and right: MatchStereo's official layout) or 'center'
            (split, the odd pixel at the bottom/right).

    Returns the padded tensor (``x`` itself when nothing is needed) and the :class:`Padding`,
    whose ``crop`` cuts a same-size output back to (H, W).
    """
    if multiple < 1 or min_size < 0:
        raise ValueError(f"multiple must be >= 1 and min_size >= 0, got {multiple} and {min_size}")
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
    H, W = x.shape[-2:]
    extra = []
    for size in (H, W):
        target = max(size, min_size)
        extra.append(target + (-target % multiple) - size)
    (ph, pw) = extra
    if anchor == "top_left":
        padding = Padding(0, ph, 0, pw)
    elif anchor == "bottom_left":
        padding = Padding(ph, 0, 0, pw)
    else:
        padding = Padding(ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if not (ph or pw):
        return x, padding
    if mode == "reflect" and not (max(padding.top, padding.bottom) < H and max(padding.left, padding.right) < W):
        mode = "replicate"  # reflect needs each pad smaller than the side it mirrors
    pad = (padding.left, padding.right, padding.top, padding.bottom)
    return (F.pad(x, pad, mode="constant", value=value) if mode == "constant" else F.pad(x, pad, mode=mode)), padding


def run_padded(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, multiple: Optional[int] = None,
               min_size: Optional[int] = None, mode: str = "reflect", anchor: str = "top_left") -> torch.Tensor:
    """``fn`` (an image-to-image network or function) on ``x`` padded to its size contract, cropped back.

    ``multiple``/``min_size`` default to ``fn.size_multiple``/``fn.min_size`` (1 when absent).
    ``fn`` must return an image of the padded input's size.
    """
    multiple = multiple if multiple is not None else getattr(fn, "size_multiple", 1)
    min_size = min_size if min_size is not None else getattr(fn, "min_size", 1)
    padded, padding = pad_to_multiple(x, multiple, min_size=min_size, mode=mode, anchor=anchor)
    y = fn(padded)
    if y.shape[-2:] != padded.shape[-2:]:
        raise ValueError(f"run_padded needs an output of the input's size, got {tuple(y.shape[-2:])} for "
                         f"{tuple(padded.shape[-2:])}; crop such outputs with Padding.crop yourself")
    return padding.crop(y)


# --- tiling --------------------------------------------------------------------------------------

def _ramp(n: int, overlap: int, first: bool, last: bool, like: torch.Tensor) -> torch.Tensor:
    """1-D blending weight of a tile of length n: rises over ``overlap`` pixels on inner edges."""
    w = torch.ones(n, dtype=like.dtype, device=like.device)
    if overlap > 0:
        ramp = (torch.arange(overlap, dtype=like.dtype, device=like.device) + 0.5) / overlap
        if not first:
            w[:overlap] = torch.minimum(w[:overlap], ramp)
        if not last:
            w[n - overlap:] = torch.minimum(w[n - overlap:], ramp.flip(0))
    return w


def _starts(size: int, tile: int, stride: int):
    if size <= tile:
        return [0]
    return list(range(0, size - tile, stride)) + [size - tile]


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int = 32) -> torch.Tensor:
    """``fn`` on overlapping tile x tile crops of (B, C, H, W), blended into one (B, C', H, W) output.

    Neighbouring tiles overlap by at least ``overlap`` pixels and are cross-faded with linear ramps
    (the weights sum to one everywhere), so memory is that of one tile whatever the image size and
    a pixel-wise ``fn`` gives exactly ``fn(x)``. Every crop is tile x tile where the image is at least
    that large (the last row/column of tiles is shifted inwards). An image that fits in one tile is
    passed to ``fn`` whole. ``fn`` must keep the spatial size (C' may differ from C).
    """
    if overlap < 0 or tile <= overlap:
        raise ValueError(f"tile must be larger than overlap >= 0, got tile={tile}, overlap={overlap}")
    B, _, H, W = x.shape
    if H <= tile and W <= tile:
        return fn(x)
    stride = tile - overlap
    ys, xs = _starts(H, tile, stride), _starts(W, tile, stride)
    out = norm = None
    for y0 in ys:
        for x0 in xs:
            crop = x[..., y0:y0 + tile, x0:x0 + tile]
            h, w = crop.shape[-2:]
            y = fn(crop)
            if y.shape[-2:] != (h, w):
                raise ValueError(f"tiled needs fn to keep the spatial size, got {tuple(y.shape[-2:])} for a "
                                 f"{h}x{w} tile")
            if out is None:
                out = y.new_zeros(B, y.shape[1], H, W)
                norm = y.new_zeros(1, 1, H, W)
            # the actual overlap with the neighbour can exceed `overlap` for the last tile: ramp over it
            oy = min(overlap, h) if len(ys) > 1 else 0
            ox = min(overlap, w) if len(xs) > 1 else 0
            weight = _ramp(h, oy, y0 == ys[0], y0 == ys[-1], y)[:, None] * _ramp(w, ox, x0 == xs[0], x0 == xs[-1], y)
            out[..., y0:y0 + h, x0:x0 + w] += y * weight
            norm[..., y0:y0 + h, x0:x0 + w] += weight
    return out / norm


# --- CUDA graphs ---------------------------------------------------------------------------------

def _require_cuda(*tensors: torch.Tensor) -> None:
    if not all(t.is_cuda for t in tensors):
        devices = " / ".join(str(t.device) for t in tensors)
        raise ValueError(f"cuda_graph=True needs CUDA images, got {devices}; move the model and images "
                         "to a GPU or pass cuda_graph=False")


def _dtype_of(model: nn.Module, default: torch.dtype = torch.float32) -> torch.dtype:
    p = next(model.parameters(), None)
    return default if p is None else p.dtype


# --- stereo / flow (MatchStereo family) ---------------------------------------------------------

STEREO_RANGE = (0.0, 255.0)
STEREO_DTYPES = (torch.uint8,) + FLOAT_DTYPES + (torch.float64,)  # cast to the network's dtype
STEREO_OUTPUTS = ("field", "consistency", "disparity", "disparity_right", "flow", "flow_backward")


def _stereo(model: nn.Module, left: torch.Tensor, right: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Pad both views (top/right, replicate: the official layout), run, crop, read the outputs."""
    dtype = _dtype_of(model)
    pads = dict(min_size=getattr(model, "min_size", 1), mode="replicate", anchor="bottom_left")
    multiple = getattr(model, "size_multiple", 1)
    left, padding = pad_to_multiple(left.to(dtype), multiple, **pads)
    right, _ = pad_to_multiple(right.to(dtype), multiple, **pads)
    out = model(left, right)
    if not any(padding):
        return {k: out[k] for k in STEREO_OUTPUTS if k in out}
    # the consistency check must see the cropped field (a padded border would change it)
    return field_outputs(padding.crop(out["field"]), model.task, model.consistency_threshold)


@torch.no_grad()
def predict_stereo(model: nn.Module, left: torch.Tensor, right: torch.Tensor, *,
                   cuda_graph: bool = False) -> Dict[str, torch.Tensor]:
    """A MatchStereo-family network on image pairs of any size.

    Args:
        left, right: (B, 3, H, W) RGB in [0, 255] (uint8 or float; cast to the network's dtype).
        cuda_graph: (CUDA) capture pad + forward + crop as a CUDA graph on the first call per input
            shape/dtype and replay it afterwards (removes the kernel-launch overhead that bounds
            MatchStereo at KITTI size); the value check runs before each replay.

    Returns ``field`` (2B, 2, H, W), ``consistency`` (B, 1, H, W) bool and, for stereo,
    ``disparity`` / ``disparity_right`` (B, 1, H, W) px, for flow ``flow`` / ``flow_backward``
    (B, 2, H, W): the network's outputs for the padded pair, cropped back to (H, W).
    """
    for name, img in (("left image", left), ("right image", right)):
        check_image(img, channels=3, value_range=STEREO_RANGE, dtypes=STEREO_DTYPES, name=name,
                    hint="pass uint8-range RGB, e.g. img_float_0_1 * 255")
    if left.shape != right.shape:
        raise ValueError(f"left {tuple(left.shape)} and right {tuple(right.shape)} images differ in shape")
    if cuda_graph:
        _require_cuda(left, right)
        return graph_runner(model, "predict_stereo", _stereo)(left, right)
    return _stereo(model, left, right)


def predict_disparity(model: nn.Module, left: torch.Tensor, right: torch.Tensor, *,
                      cuda_graph: bool = False) -> torch.Tensor:
    """Left-view disparity (B, 1, H, W) in pixels of RGB pairs (B, 3, H, W) in [0, 255], any size
    (see :func:`predict_stereo`)."""
    if getattr(model, "task", "stereo") != "stereo":
        raise RuntimeError("predict_disparity needs a stereo model; this one estimates flow (use predict_flow)")
    return predict_stereo(model, left, right, cuda_graph=cuda_graph)["disparity"]


def predict_flow(model: nn.Module, image1: torch.Tensor, image2: torch.Tensor, *,
                 cuda_graph: bool = False) -> torch.Tensor:
    """Forward field (B, 2, H, W) in pixels from ``image1`` to ``image2`` (B, 3, H, W) in [0, 255]
    (optical flow; for a stereo model the 2-vector (-disparity, 0)); see :func:`predict_stereo`."""
    field = predict_stereo(model, image1, image2, cuda_graph=cuda_graph)["field"]
    return field[: image1.shape[0]]


# --- image-to-image restoration ------------------------------------------------------------------

def _restore(model: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    return run_padded(model, x, mode=mode)


@torch.no_grad()
def restore_image(model: nn.Module, x: torch.Tensor, *, tile: Optional[int] = None, overlap: int = 32,
                  value_range: Optional[Tuple[float, float]] = None,
                  network_range: Optional[Tuple[float, float]] = None, pad_mode: str = "reflect",
                  cuda_graph: bool = False) -> torch.Tensor:
    """An image-to-image network on (B, C, H, W) images of any size -> (B, C_out, H, W).

    The image (or each tile) is padded to the network's ``size_multiple``/``min_size``
    (``pad_mode``, at the bottom and right) and the output cropped back.

    Args:
        tile, overlap: run on tile x tile crops overlapping by ``overlap`` pixels, cross-faded
            (:func:`tiled`): memory of one tile whatever the image size. ``tile`` must be a
            multiple of the network's ``size_multiple``. None: the whole image at once.
        value_range: check that the input lies in (lo, hi) (one host sync); with
            ``network_range``, values are mapped from ``value_range`` to the range the network
            was trained on and the output mapped back (e.g. (0, 1) images for a (-1, 1) network).
        cuda_graph: (CUDA) replay each padded tile shape from a CUDA graph (tiles of one size
            share one capture).
    The input dtype must be the network's (cast with ``x.to(dtype)`` or the model).
    """
    dtype = _dtype_of(model, x.dtype if isinstance(x, torch.Tensor) else torch.float32)
    channels = getattr(model, "in_chans", None)
    check_image(x, channels=channels, value_range=value_range, dtypes=(dtype,), name="image")
    if network_range is not None and value_range is None:
        raise ValueError("network_range needs value_range: the range of the images you pass, e.g. (0, 1)")
    multiple = getattr(model, "size_multiple", 1)
    if tile is not None and tile % multiple:
        raise ValueError(f"tile must be a multiple of {multiple} (the network's size_multiple), got {tile}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    if network_range is not None:
        x = rescale(x, value_range, network_range)
    if cuda_graph:
        _require_cuda(x)
        runner = graph_runner(model, f"restore_image/{pad_mode}", partial(_restore, mode=pad_mode))
        fn = lambda t: runner(t.contiguous())  # noqa: E731  (crops are views: one layout per shape)
    else:
        fn = partial(run_padded, model, mode=pad_mode)
    y = fn(x) if tile is None else tiled(fn, x, tile, overlap)
    return rescale(y, network_range, value_range) if network_range is not None else y


# --- LiDAR 3-D detection -----------------------------------------------------------------------

@torch.no_grad()
def predict_boxes_3d(model: nn.Module, points: torch.Tensor, *, batch_size: Optional[int] = None,
                     cuda_graph: bool = False) -> List[Dict[str, torch.Tensor]]:
    """Detections of a LiDAR detector (``scatterformer_*``) per frame.

    Args:
        points: (N, 1 + C) float, ``[batch index, x, y, z, features...]`` in metres (keep float32
            for a half-precision model: coordinates need the mantissa; the network casts features).
        batch_size: frames in the batch (default: largest batch index + 1), for trailing frames
            without points.

    Returns one dict per frame: ``boxes`` (n, 7) ``[x, y, z, dx, dy, dz, heading]``, ``scores``
    (n,), ``labels`` (n,) int64 indexing ``model.class_names``; decoding, score rectification and
    NMS as configured on the network (``model(points, mode='predict')``). ``cuda_graph`` (CUDA) replays
    the network's fixed-shape dense part (BEV backbone and head) from a CUDA graph; the voxel part,
    whose sizes depend on the points, runs eagerly.
    """
    if not points.is_floating_point():
        raise ValueError(f"points must be a floating-point (N, 1 + C) tensor, got {points.dtype}")
    return model(points, batch_size, mode="predict", cuda_graph=cuda_graph)


# --- compatibility -------------------------------------------------------------------------------
# MatchStereo had predict_disparity / predict_flow methods before its inference code moved here. They
# stay for existing callers as shims over the functions above, attached from this side (a network
# never imports this module; ``import visionattn`` imports it, so the methods are always there).

def _shim(fn: Callable) -> Callable:
    def method(self, image1: torch.Tensor, image2: torch.Tensor, cuda_graph: bool = False) -> torch.Tensor:
        return fn(self, image1, image2, cuda_graph=cuda_graph)

    method.__name__ = method.__qualname__ = fn.__name__
    method.__doc__ = (f"Shim kept for existing callers: ``visionattn.inference.{fn.__name__}(model, image1, "
                      f"image2, cuda_graph=...)``.")
    return method


MatchStereo.predict_disparity = _shim(predict_disparity)
MatchStereo.predict_flow = _shim(predict_flow)
