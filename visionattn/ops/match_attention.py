"""MatchAttention: windowed attention around a continuous, per-query sampling centre.

Paper: *MatchAttention: Matching the Relative Positions for High-Resolution Cross-View Matching*
(Yan et al., arXiv 2510.14260). For query ``i`` and head ``h`` the centre ``c = (x, y)`` is a real
pixel position (clamped so the window stays inside the ``H x W`` map). With ``m = floor(c)`` and
``f = c - m``:

* window: the ``(2r+2)^2 = M`` key positions ``m + (dx, dy)``, ``dx, dy in [-r, r+1]``, stored
  row-major (``dy`` outer, ``dx`` inner);
* similarity: ``a_ij = -||q_i - k_j||_1 * d**-0.5`` (negative L1 distance, ``d`` = head dim);
* BilinearSoftmax: a separate softmax over each of the four ``(2r+1)^2`` sub-windows centred at
  ``m``, ``m+(1,0)``, ``m+(0,1)``, ``m+(1,1)``, blended with the bilinear weights
  ``((1-fx)(1-fy), fx(1-fy), (1-fx)fy, fx fy)``; the effective attention ``A_i`` sums to 1 and is
  a bilinear interpolation of four integer-centred window attentions, so it is differentiable in
  the centre (through the bilinear weights only);
* output ``o_i = sum_j A_ij v_j``.

Implementations: ``"triton"`` (CUDA, forward and backward, fp32/fp16/bf16; CPU under
``TRITON_INTERPRET=1``; :mod:`._match_attention_triton`) and ``"reference"`` (readable PyTorch,
any device). ``impl="auto"`` takes the first one that supports the inputs.
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from . import _match_attention_triton  # noqa: F401 (registers the custom ops)
from ._checks import check_int, check_number, check_tensors
from ._triton import can_run, interpreting, launch_directly, needs_grad, triton_available  # noqa: F401 (re-exported)
from .dispatch import pick

IMPLS = ("triton", "reference")


def clamp_centers(centers: torch.Tensor, size: Tuple[int, int], radius: int) -> torch.Tensor:
    """Clamp centres ``(..., 2)`` (x, y) to ``[r, W-2-r+1-1e-3] x [r, H-2-r+1-1e-3]``.

    The upper bound ``W-1-r-1e-3`` keeps ``floor(x) + r + 1 <= W-1``: the whole ``(2r+2)``-wide
    window lies inside the map. Differentiable (zero gradient where clamped).
    """
    H, W = size
    # float bounds of one type (an int min and a float max do not convert to ONNX)
    x = centers[..., 0].clamp(min=float(radius), max=W - 1 - radius - 1e-3)
    y = centers[..., 1].clamp(min=float(radius), max=H - 1 - radius - 1e-3)
    return torch.stack((x, y), dim=-1)


def window_offsets(radius: int, device=None) -> torch.Tensor:
    """Integer offsets ``(M, 2)`` (dx, dy) of the ``(2r+2)^2`` window, row-major (dy outer)."""
    side = torch.arange(-radius, radius + 2, device=device)
    dy, dx = torch.meshgrid(side, side, indexing="ij")
    return torch.stack((dx, dy), dim=-1).reshape(-1, 2)


def bilinear_weights(centers: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` centres -> ``(..., 4)`` weights of the sub-windows at m, m+(1,0), m+(0,1), m+(1,1)."""
    frac = centers - centers.detach().floor()  # gradient 1 w.r.t. the centre, floor is constant
    fx, fy = frac[..., 0], frac[..., 1]
    return torch.stack(((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy), dim=-1)


def subwindow_masks(radius: int, device=None) -> torch.Tensor:
    """``(4, M)`` bool: which window entries belong to each of the four ``(2r+1)^2`` sub-windows."""
    off = window_offsets(radius, device) + radius  # (M, 2) in [0, 2r+1]
    masks = []
    for ox, oy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        inside_x = (off[:, 0] >= ox) & (off[:, 0] <= ox + 2 * radius)
        inside_y = (off[:, 1] >= oy) & (off[:, 1] <= oy + 2 * radius)
        masks.append(inside_x & inside_y)
    return torch.stack(masks)


def _reference(q, k, v, centers, size, radius, scale):
    """Readable PyTorch MatchAttention on clamped centres. Returns (out (B,N,C), attn (B,N,h,M))."""
    B, N, C = q.shape
    h = centers.shape[2]
    d = C // h
    H, W = size
    qh = q.view(B, N, h, d)
    kh = k.view(B, N, h, d)
    vh = v.view(B, N, h, d)

    # Window key positions: (B, N, h, M) flat indices into the H*W map.
    m = centers.detach().floor().long()  # (B, N, h, 2)
    pos = m.unsqueeze(3) + window_offsets(radius, q.device)  # (B, N, h, M, 2)
    flat = pos[..., 1] * W + pos[..., 0]  # (B, N, h, M)
    M = flat.shape[-1]

    # Gather keys/values per head: row (b, token, head) of the (B*N*h, d) view -> (B, N, h, M, d).
    head = torch.arange(h, device=q.device).view(1, 1, h, 1)
    batch = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    rows = (batch * N + flat) * h + head  # (B, N, h, M)
    k_win = kh.reshape(B * N * h, d)[rows]
    v_win = vh.reshape(B * N * h, d)[rows]

    logits = -(qh.unsqueeze(3) - k_win).abs().sum(-1) * scale  # (B, N, h, M)

    # BilinearSoftmax: softmax inside each sub-window, blended by the bilinear weights.
    masks = subwindow_masks(radius, q.device)  # (4, M)
    weights = bilinear_weights(centers).to(q.dtype)  # (B, N, h, 4), from float32 centres
    attn = logits.new_zeros(logits.shape)
    for t in range(4):
        sub = logits.masked_fill(~masks[t], float("-inf")).softmax(-1)  # zeros outside sub-window t
        attn = attn + weights[..., t : t + 1] * sub

    out = (attn.unsqueeze(-1) * v_win).sum(3)  # (B, N, h, d)
    return out.reshape(B, N, C), attn


def _check(q, k, v, centers, size, radius):
    op = "match_attention"
    check_tensors(op, dict(q=q, k=k, v=v))
    check_tensors(op, dict(q=q, centers=centers), same_dtype=False)
    check_int(op, "radius", radius, 0)
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"match_attention: q, k, v must share one (B, N, C) shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, N, C = q.shape
    if centers.dim() != 4 or centers.shape[:2] != (B, N) or centers.shape[3] != 2:
        raise ValueError(f"match_attention: centers must be (B, N, heads, 2) = ({B}, {N}, h, 2), "
                         f"got {tuple(centers.shape)}")
    h = centers.shape[2]
    if h < 1:
        raise ValueError(f"match_attention: centers {tuple(centers.shape)} hold no head (heads = centers.shape[2] "
                         f"must be >= 1)")
    if C % h:
        raise ValueError(f"match_attention: channels {C} are not divisible by {h} heads")
    H, W = size
    if H < 1 or W < 1:
        raise ValueError(f"match_attention: size must be (H, W) >= 1, got {tuple(size)}")
    if H * W != N:
        raise ValueError(f"match_attention: size {tuple(size)} does not hold N={N} tokens")
    side = 2 * radius + 2
    if H < side or W < side:
        raise ValueError(f"match_attention: a {H}x{W} map is smaller than the {side}x{side} window of "
                         f"radius {radius}; use a smaller radius or a larger input")


def _triton_supports(q, k, v, centers) -> bool:
    """Whether the Triton kernels can run these inputs (CUDA, or the CPU interpreter for tests)."""
    return can_run(q, k, v)


def match_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, centers: torch.Tensor,
                    size: Sequence[int], radius: int, scale: Optional[float] = None,
                    return_attn: bool = False, impl: str = "auto", kv_batch_shift: int = 0,
                    gate: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None
                    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """MatchAttention with BilinearSoftmax.

    Args:
        q, k, v: ``(B, N, C)`` with ``N = H*W`` tokens (row-major) and ``C = heads * d``.
        centers: ``(B, N, heads, 2)`` sampling centres (x, y) in pixels of the key map; clamped
            here so the ``(2r+2)^2`` window stays inside, and used in float32 (at least) whatever their dtype.
        size: ``(H, W)`` of the key map.
        radius: window radius ``r`` (``M = (2r+2)^2`` keys per query and head).
        scale: logit scale, default ``d**-0.5``.
        return_attn: also return the effective attention ``(B, N, heads, M)``.
        impl: ``"auto"``, ``"triton"`` or ``"reference"``.
        kv_batch_shift: queries of batch ``b`` attend to the keys/values of batch
            ``(b + kv_batch_shift) % B``; with two views stacked on the batch axis, ``B // 2`` is
            cross-view attention without swapping k/v in memory.
        gate: ``(B, N, C)`` or None: the output is ``SiLU(gate) * o`` (MatchStereo's gated cross
            attention); the Triton kernel applies it before its store when no gradient is needed.
        out: a contiguous ``(B, N, >= C + heads * M)`` tensor of q's dtype, or None. Without
            autograd only: the output is written into its first ``C`` channels and the attention
            weights (flattened over heads) into the next ``heads * M``, and views of them are
            returned: the concatenation a projection of both reads, without a concatenation pass.

    Returns:
        ``(B, N, C)`` output, and the attention weights when ``return_attn``. Gradients reach
        q, k, v and ``centers`` (through the bilinear weights and the clamp).
    """
    if not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(f"match_attention: size must be (H, W), got {size!r}")
    size = (check_int("match_attention", "size[0]", size[0]), check_int("match_attention", "size[1]", size[1]))
    _check(q, k, v, centers, size, radius)
    radius = int(radius)
    kv_batch_shift = check_int("match_attention", "kv_batch_shift", kv_batch_shift, None)
    if scale is not None:
        scale = check_number("match_attention", "scale", scale, positive=True)
    B, _, C = q.shape
    kv_batch_shift = int(kv_batch_shift) % B
    h = centers.shape[2]
    if scale is None:
        scale = (C // h) ** -0.5
    # Centres stay float32 whatever the model dtype: in fp16/bf16 a position like 309.999 rounds
    # up to 310 (bf16 steps are 2 px at 300), which would move the window off the map.
    centers = centers.to(torch.promote_types(centers.dtype, torch.float32))
    _check_gate_and_out(q, k, v, centers, radius, gate, out)
    supported = {"triton": _triton_supports(q, k, v, centers), "reference": True}
    chosen = pick("match_attention", impl, supported)
    if chosen == "triton" and launch_directly(q, k, v, centers, gate):
        # eager inference: the kernel gates and writes into ``out`` itself
        o, attn = _match_attention_triton._forward(q, k, v, centers.float(), size[0], size[1], radius,
                                                   float(scale), kv_batch_shift, gate=gate, out=out)
        return (o, attn) if return_attn else o
    if chosen == "triton":  # clamps the centres itself; q/k/v/centres may be strided views
        o, attn = torch.ops.visionattn.match_attention_triton(
            q, k, v, centers.float(), size[0], size[1], radius, float(scale), kv_batch_shift)
    else:
        if kv_batch_shift:
            k, v = k.roll(-kv_batch_shift, 0), v.roll(-kv_batch_shift, 0)
        o, attn = _reference(q, k, v, clamp_centers(centers, size, radius), size, radius, scale)
    if gate is not None:
        o = F.silu(gate) * o
    if out is not None:
        C, heads_m = q.shape[2], attn.shape[2] * attn.shape[3]
        out[..., :C] = o
        out[..., C:C + heads_m] = attn.flatten(2)
        o, attn = out[..., :C], out[..., C:C + heads_m].unflatten(-1, attn.shape[2:])
    return (o, attn) if return_attn else o


def _check_gate_and_out(q, k, v, centers, radius, gate, out) -> None:
    op = "match_attention"
    if gate is not None:
        check_tensors(op, dict(q=q, gate=gate))
        if gate.shape != q.shape:
            raise ValueError(f"match_attention: gate must have q's shape {tuple(q.shape)}, got {tuple(gate.shape)}")
    if out is None:
        return
    check_tensors(op, dict(q=q, out=out))
    B, N, C = q.shape
    width = C + centers.shape[2] * (2 * radius + 2) ** 2
    if out.dim() != 3 or out.shape[:2] != (B, N) or out.shape[2] < width or not out.is_contiguous():
        raise ValueError(f"match_attention: out must be a contiguous ({B}, {N}, >= {width}) tensor (output and "
                         f"attention weights side by side), got {tuple(out.shape)} with strides {out.stride()}")
    if needs_grad(q, k, v, centers, gate):
        raise ValueError("match_attention(out=...) writes into a buffer, which autograd cannot differentiate; "
                         "call it under torch.no_grad() or leave out=None")


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 2, height: int = 24, width: int = 78,
                   heads: int = 4, head_dim: int = 32, radius: int = 1, **_) -> Dict:
    """Typical call: the 1/16 level of MatchStereo-T on a 384x1248 pair (both views stacked)."""
    g = torch.Generator().manual_seed(0)
    N, C = height * width, heads * head_dim
    q, k, v = (torch.randn(batch, N, C, generator=g).to(device, dtype) for _ in range(3))
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    grid = torch.stack((xs, ys), -1).reshape(1, N, 1, 2).float()
    centers = grid + 4 * torch.randn(batch, N, heads, 2, generator=g)
    return dict(q=q, k=k, v=v, centers=centers.to(device), size=(height, width), radius=radius,
                return_attn=True)
