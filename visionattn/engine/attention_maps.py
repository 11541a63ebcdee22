"""What the attentions look at, read from a forward pass: BiFormer's region routing and MatchStereo's
sampling windows. ``tools/visualize_attention.py`` draws them.

- :func:`biformer_routing`: for one Bi-Level Routing Attention layer, the ``topk`` key regions
  each query region routes to (the op's own :func:`~visionattn.ops.bilevel_routing_attention.route`
  on the layer's q and k), with the region grid in image pixels.
- :func:`matchstereo_windows`: for chosen left-image pixels, the window of right-image positions
  the last cross MatchAttention samples (centre = pixel + field, clamped as the op clamps it) and
  the attention weights over it.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..ops.bilevel_routing_attention import route
from ..ops.match_attention import clamp_centers, match_attention, window_offsets
from ..visualization import predictions as drawing


# --- BiFormer ---------------------------------------------------------------------------------

def _bra_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ == "BiLevelRoutingAttention"]


@torch.no_grad()
def biformer_routing(model: nn.Module, image: torch.Tensor, stage: int = 2, block: int = 0) -> Dict:
    """Routing of the BRA layer of ``model.stages[stage].blocks[block]`` for a (1, 3, H, W) normalised image.

    Returns ``indices`` (R, topk) int (key regions of each query region, R = n_win**2, raster
    order), ``n_win``, ``region`` (h, w) region size in image pixels and ``layer`` (its name).
    """
    layers = dict(_bra_layers(model))
    name = f"stages.{stage}.blocks.{block}.attn"
    if name not in layers:
        raise ValueError(f"no Bi-Level Routing Attention at stage {stage} block {block}; the layers with one: "
                         f"{sorted(layers)}")
    layer = layers[name]
    seen = {}

    def capture(module, args):
        seen["x"] = args[0]

    handle = layer.register_forward_pre_hook(capture)
    try:
        model.eval()(image)
    finally:
        handle.remove()
    x = seen["x"]  # (1, h, w, C) the layer's input
    pad_b, pad_r = -x.shape[1] % layer.n_win, -x.shape[2] % layer.n_win
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    q, k, _ = layer.qkv(x).chunk(3, dim=-1)
    topk = min(layer.topk, layer.n_win ** 2)
    indices = route(q, k, layer.n_win, topk, layer.scale)[0]  # (R, topk)
    stride_y, stride_x = image.shape[-2] / seen["x"].shape[1], image.shape[-1] / seen["x"].shape[2]
    region = (x.shape[1] // layer.n_win * stride_y, x.shape[2] // layer.n_win * stride_x)
    return dict(indices=indices.cpu(), n_win=layer.n_win, region=region, layer=name)


def draw_routing(image: np.ndarray, indices: Sequence[int], query: Tuple[int, int], n_win: int,
                 region: Tuple[float, float]) -> np.ndarray:
    """The image with the query region outlined in red and its routed regions tinted yellow, each
    labelled with its rank (0 = highest affinity). ``query`` is (row, col) on the region grid."""
    img = drawing.to_rgb_uint8(image).astype(np.float32)
    rh, rw = region
    boxes = {}
    for rank, r in enumerate(int(i) for i in indices):
        row, col = divmod(r, n_win)
        y0, x0 = int(round(row * rh)), int(round(col * rw))
        y1, x1 = int(round((row + 1) * rh)), int(round((col + 1) * rw))
        img[y0:y1, x0:x1] = 0.45 * img[y0:y1, x0:x1] + 0.55 * np.array([255.0, 220.0, 0.0])
        boxes[rank] = (x0, y0)
    pic = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for i in range(n_win + 1):  # the region grid
        draw.line([(0, i * rh), (pic.width, i * rh)], fill=(90, 90, 90))
        draw.line([(i * rw, 0), (i * rw, pic.height)], fill=(90, 90, 90))
    for rank, (x0, y0) in boxes.items():
        draw.text((x0 + 2, y0 + 1), str(rank), fill=(0, 0, 0))
    qr, qc = query
    draw.rectangle([qc * rw, qr * rh, (qc + 1) * rw - 1, (qr + 1) * rh - 1], outline=(255, 0, 0), width=3)
    return np.asarray(pic)


# --- MatchStereo ------------------------------------------------------------------------------

@torch.no_grad()
def matchstereo_windows(model: nn.Module, left: torch.Tensor, right: torch.Tensor,
                        pixels: Sequence[Tuple[int, int]]) -> List[Dict]:
    """Sampling windows of the finest level's last cross MatchAttention for left pixels (x, y).

    ``left``/``right``: (1, 3, H, W) in [0, 255] meeting the network's size contract. Each result:
    ``pixel`` (x, y), ``center`` (x, y) in image pixels (the clamped sampling centre),
    ``window`` (x0, y0, x1, y1) in image pixels (the ``(2r+2)^2`` positions, each a
    ``stride x stride`` cell), ``weights`` ((2r+2), (2r+2)) attention averaged over heads, and
    ``stride``, ``radius``.
    """
    layer = model.match_attentions[-1].layers[-1].match_attention_cross
    seen = {}

    def capture(module, args):
        seen["x"], seen["centers"] = args

    handle = layer.register_forward_pre_hook(capture)
    try:
        model.eval()(left, right)
    finally:
        handle.remove()
    x, centers = seen["x"], seen["centers"]  # (2B, h, w, C), (2B, h*w, heads, 2)
    B, h, w, _ = x.shape
    stride = left.shape[-1] / w
    flat = x.reshape(B, h * w, -1)[..., :layer.q.in_features]  # the layer's input may carry zero padding
    q, k, v = (F.linear(flat, m.weight) for m in (layer.q, layer.k, layer.v))
    _, attn = match_attention(q, k, v, centers, (h, w), layer.radius, return_attn=True, impl="reference",
                              kv_batch_shift=B // 2)  # attn (2B, h*w, heads, M)
    r = layer.radius
    side = 2 * r + 2
    clamped = clamp_centers(centers, (h, w), r)
    offsets = window_offsets(r)
    results = []
    for px, py in pixels:
        if not (0 <= px < left.shape[-1] and 0 <= py < left.shape[-2]):
            raise ValueError(f"pixel ({px}, {py}) is outside the {left.shape[-1]}x{left.shape[-2]} left image")
        i = int(py / stride) * w + int(px / stride)
        c = clamped[0, i, 0]  # left view, all heads share the field centre
        m = c.floor()
        cells = m + offsets  # (M, 2) integer feature positions (x, y)
        x0, y0 = cells[:, 0].min().item(), cells[:, 1].min().item()
        x1, y1 = cells[:, 0].max().item() + 1, cells[:, 1].max().item() + 1
        # feature cell j covers image pixels [j*stride, (j+1)*stride); the centre is at cell centres
        results.append(dict(pixel=(px, py), center=((c[0].item() + 0.5) * stride, (c[1].item() + 0.5) * stride),
                            window=(x0 * stride, y0 * stride, x1 * stride, y1 * stride),
                            weights=attn[0, i].float().mean(0).reshape(side, side).cpu().numpy(),
                            stride=stride, radius=r))
    return results


def draw_windows(left: np.ndarray, right: np.ndarray, windows: List[Dict]) -> np.ndarray:
    """Left image with the chosen pixels | right image with each one's sampling window: the window's
    cells tinted by attention weight, its outline and the sampling centre in the pixel's colour."""
    lpic = Image.fromarray(drawing.to_rgb_uint8(left))
    rimg = drawing.to_rgb_uint8(right).astype(np.float32)
    colours = drawing.palette(len(windows), seed=1)
    for win in windows:  # attention weights as white tint inside each window
        x0, y0, _, _ = (int(round(v)) for v in win["window"])
        s = win["stride"]
        wts = win["weights"] / max(float(win["weights"].max()), 1e-12)
        for (j, i), a in np.ndenumerate(wts):
            ys, xs = int(round(y0 + j * s)), int(round(x0 + i * s))
            ye, xe = int(round(y0 + (j + 1) * s)), int(round(x0 + (i + 1) * s))
            rimg[ys:ye, xs:xe] = (1 - 0.6 * a) * rimg[ys:ye, xs:xe] + 0.6 * a * 255.0
    rpic = Image.fromarray(rimg.clip(0, 255).astype(np.uint8))
    ldraw, rdraw = ImageDraw.Draw(lpic), ImageDraw.Draw(rpic)
    for win, colour in zip(windows, colours):
        c = tuple(int(v) for v in colour)
        px, py = win["pixel"]
        ldraw.ellipse([px - 3, py - 3, px + 3, py + 3], outline=c, width=2)
        x0, y0, x1, y1 = win["window"]
        rdraw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=c, width=2)
        cx, cy = win["center"]
        rdraw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=c)
    return drawing.side_by_side(np.asarray(lpic), np.asarray(rpic))


def load_rgb(path: str, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, resized to ``size`` (W, H) when given."""
    from ..datasets.corrupt import open_rgb  # a missing or damaged file is an error naming it

    im = open_rgb(path)
    if size is not None:
        im = im.resize(size, Image.BICUBIC)
    return np.array(im)
