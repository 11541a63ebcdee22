"""Tiny ImageNet-format sample set: ``imagenet/{train,val}/<class>/*.JPEG``.

Eight synthetic classes, each a distinct shape drawn in a distinct colour on a noisy background
with random position, size, rotation and tint, so that a small network learns them within a few
hundred iterations but cannot solve them from a single pixel. Deterministic: every image comes
from its own seeded generator.
"""
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import register_sample_writer

# class name -> RGB colour of its shape
CLASSES = {
    "circle_red": (220, 40, 40),
    "square_green": (40, 190, 60),
    "triangle_blue": (40, 80, 230),
    "cross_yellow": (230, 210, 40),
    "ring_magenta": (210, 50, 200),
    "stripes_cyan": (40, 200, 210),
    "bar_orange": (240, 130, 30),
    "star_white": (235, 235, 235),
}
SPLITS = {"train": 40, "val": 10}  # images per class
SIZE = 72  # pixels; the demo crops 64


def _polygon(cx, cy, r, n, angle, inner=None):
    """Vertices of a regular n-gon (or a 2n-point star when ``inner`` radius is given)."""
    pts = []
    steps = 2 * n if inner else n
    for i in range(steps):
        rad = inner if inner and i % 2 else r
        a = angle + 2 * math.pi * i / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_sample(shape: str, colour, rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """One image of ``shape`` in a jittered ``colour`` on a noisy, randomly tinted background."""
    bg = rng.integers(20, 110, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    img = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    fill = tuple(int(c) for c in np.clip(np.array(colour) + rng.integers(-25, 26, size=3), 0, 255))
    r = rng.uniform(0.22, 0.36) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    w = max(2, int(r / 3))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=w)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r, 4, angle), fill=fill)
    elif shape == "bar":  # a rotated rectangle: a square squeezed along one axis
        pts = _polygon(0, 0, r, 4, math.pi / 4)
        ca, sa = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + 0.55 * x * ca - y * sa, cy + 0.55 * x * sa + y * ca) for x, y in pts], fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, angle), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r, 5, angle, inner=r * 0.45), fill=fill)
    elif shape == "cross":
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fill, width=w)
    elif shape == "stripes":
        for k in (-1, 0, 1):
            off = k * r * 0.6
            dx, dy = r * math.cos(angle), r * math.sin(angle)
            nx, ny = -math.sin(angle) * off, math.cos(angle) * off
            draw.line([cx - dx + nx, cy - dy + ny, cx + dx + nx, cy + dy + ny], fill=fill, width=max(2, w // 2))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return img


@register_sample_writer("imagenet")
def write_imagenet_samples(root: Path) -> None:
    """Write ``root/{train,val}/<class>/<class>_<i>.JPEG`` (8 classes; 40 train and 10 val each)."""
    root = Path(root)
    for split_idx, (split, count) in enumerate(SPLITS.items()):
        for cls_idx, (name, colour) in enumerate(CLASSES.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([split_idx, cls_idx, i])
                img = draw_sample(name.split("_")[0], colour, rng)
                img.save(folder / f"{name}_{i:04d}.JPEG", format="JPEG", quality=90)
