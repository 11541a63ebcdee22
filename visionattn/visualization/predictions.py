"""Pictures of predictions, one function per image task, on (H, W, 3) uint8 RGB arrays.

Used by ``tools/test.py --show-dir`` (:class:`visionattn.engine.hooks.ShowPredictionsHook`) and
``tools/visualize_attention.py``; LiDAR frames are drawn by :mod:`.bev`. Only numpy, PIL and
matplotlib's colour maps: no OpenMMLab import.
"""
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

Array = Union[np.ndarray, torch.Tensor]


def _numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def to_rgb_uint8(image: Array) -> np.ndarray:
    """(3, H, W) or (H, W, 3) or (H, W), uint8 or float -> (H, W, 3) uint8.

    Floats in [0, 1] are scaled by 255, floats in [0, 255] rounded; other floats (normalised network
    inputs) are stretched from their min to their max, which is enough to recognise the picture.
    """
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        image = image.cpu().numpy()
    img = np.asarray(image) if isinstance(image, np.ndarray) and image.dtype == np.uint8 else _numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image of shape (3, H, W), (H, W, 3) or (H, W), got {tuple(img.shape)}")
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.dtype != np.uint8:
        lo, hi = float(img.min()), float(img.max())
        if 0.0 <= lo and 1.0 < hi <= 255.0:  # a float image in [0, 255]
            img = img / 255.0
        elif lo < 0.0 or hi > 1.0:
            img = (img - lo) / max(hi - lo, 1e-12)
        img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def palette(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) uint8 distinct-looking colours (fixed for a seed)."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 256, size=(max(n, 1), 3), dtype=np.uint8)


def draw_classification(image: Array, scores: Array, class_names: Optional[Sequence[str]] = None,
                        topk: int = 5) -> np.ndarray:
    """The image with its top-``topk`` classes and probabilities written on a band under it.

    ``scores``: (num_classes,) probabilities.
    """
    img = to_rgb_uint8(image)
    s = _numpy(scores).reshape(-1)
    order = np.argsort(-s)[:topk]
    lines = [f"{(class_names[c] if class_names is not None and c < len(class_names) else str(c))}: {s[c]:.3f}"
             for c in order]
    scale = max(1, 256 // max(img.shape[0], 1))  # small images: enlarge so that the text is readable
    pic = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
    width = max(pic.width, 200)
    canvas = Image.new("RGB", (width, pic.height + 12 * len(lines) + 6), (0, 0, 0))
    canvas.paste(pic, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, pic.height + 3 + 12 * i), line, fill=(255, 255, 255))
    return np.asarray(canvas)


def draw_detection(image: Array, boxes: Array, labels: Array, scores: Optional[Array] = None,
                   masks: Optional[Array] = None, class_names: Optional[Sequence[str]] = None,
                   score_thr: float = 0.3) -> np.ndarray:
    """Boxes (N, 4) x1y1x2y2 in pixels, labels (N,), optional scores (N,) and masks (N, H, W) on the image.

    Detections scoring below ``score_thr`` are left out.
    """
    img = to_rgb_uint8(image).astype(np.float32)
    boxes, labels = _numpy(boxes).reshape(-1, 4), _numpy(labels).reshape(-1).astype(int)
    scores = np.ones(len(boxes)) if scores is None else _numpy(scores).reshape(-1)
    keep = scores >= score_thr
    colours = palette(int(labels.max()) + 1 if len(labels) else 1)
    if masks is not None and len(boxes):
        m = _numpy(masks).astype(bool)
        for i in np.nonzero(keep)[0]:
            img[m[i]] = 0.5 * img[m[i]] + 0.5 * colours[labels[i]]
    pic = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for i in np.nonzero(keep)[0]:
        c = tuple(int(v) for v in colours[labels[i]])
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        draw.rectangle([x1, y1, x2, y2], outline=c, width=2)
        name = class_names[labels[i]] if class_names is not None and labels[i] < len(class_names) else str(labels[i])
        draw.text((x1 + 2, y1 + 1), f"{name} {scores[i]:.2f}", fill=c)
    return np.asarray(pic)


def draw_segmentation(image: Array, label_map: Array, num_classes: Optional[int] = None, alpha: float = 0.5,
                      ignore_index: int = 255) -> np.ndarray:
    """The image blended with one colour per class of ``label_map`` (H, W); ``ignore_index`` stays clear."""
    img = to_rgb_uint8(image).astype(np.float32)
    seg = _numpy(label_map).reshape(img.shape[:2]).astype(np.int64)
    n = num_classes or int(seg[seg != ignore_index].max(initial=0)) + 1
    colours = palette(n).astype(np.float32)
    valid = (seg >= 0) & (seg < n) & (seg != ignore_index)
    img[valid] = (1 - alpha) * img[valid] + alpha * colours[seg[valid]]
    return img.astype(np.uint8)


def colourise(values: Array, cmap: str = "magma", vmin: Optional[float] = None,
              vmax: Optional[float] = None) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 through a matplotlib colour map (non-finite values black)."""
    from matplotlib import colormaps

    v = _numpy(values).astype(np.float64)
    finite = np.isfinite(v)
    lo = float(v[finite].min()) if vmin is None and finite.any() else (vmin or 0.0)
    hi = float(v[finite].max()) if vmax is None and finite.any() else (vmax if vmax is not None else 1.0)
    norm = np.clip((np.where(finite, v, lo) - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = (colormaps[cmap](norm)[..., :3] * 255).round().astype(np.uint8)
    rgb[~finite] = 0
    return rgb


def side_by_side(*images: Array, gap: int = 4) -> np.ndarray:
    """Images (any of the accepted layouts) next to each other, top-aligned, on black."""
    pics = [to_rgb_uint8(i) for i in images]
    h = max(p.shape[0] for p in pics)
    w = sum(p.shape[1] for p in pics) + gap * (len(pics) - 1)
    out = np.zeros((h, w, 3), np.uint8)
    x = 0
    for p in pics:
        out[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    return out


def draw_disparity(left: Array, disparity: Array) -> np.ndarray:
    """The left image next to the disparity (H, W) in a colour map (near: bright)."""
    return side_by_side(left, colourise(disparity))


def draw_restoration(degraded: Array, restored: Array, target: Optional[Array] = None) -> np.ndarray:
    """Input | restored (| target when given), side by side."""
    return side_by_side(degraded, restored, *([] if target is None else [target]))


def save_image(image: np.ndarray, path: Union[str, Path]) -> Path:
    """Write (H, W, 3) uint8 as PNG (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_rgb_uint8(image)).save(path)
    return path
