"""Scattered linear attention (SLA) of ScatterFormer (He et al., ECCV 2024), the op's math once.

Voxels are sorted by window, so window ``m`` owns the rows ``offsets[m]:offsets[m+1]`` (windows may
be empty). Per window and head, with the feature map phi = ReLU applied here to q and k:

    KV_w = sum_{i in w} phi(k_i)^T v_i   (d x d),      s_w = sum_{i in w} phi(k_i)   (d),
    o_n  = phi(q_n) KV_w / (phi(q_n) . s_w + 1e-6)     for each row n of window w.

No softmax, no scale, no positional term: every voxel attends to all voxels of its window at a
cost linear in the window size. The qkv/output projections and the window grouping (sort by window
id, ``offsets``) live in the ScatterFormer network; all layers of a stage share one grouping.

Implementations (``impl=``):

- ``"triton"``: kernels whose programs each take at most 128 rows of one window, whatever the window
  sizes (forward and backward, fp32/fp16/bf16 inputs with fp32 accumulation, deterministic,
  :mod:`._scattered_linear_attention_triton`). Saves the per-window state (KV, s) and the output for the
  backward, which recomputes the rest. CUDA (on CPU only under ``TRITON_INTERPRET=1``, for the tests).
- ``"reference"``: ``index_add`` of per-voxel outer products and ``einsum``, computed in fp32 (fp64
  for fp64 inputs); autograd differentiates it. It builds an (N, h, d, d) tensor: for reading and
  testing, not for speed.

Parity with the official kernels: the official layer applies the ReLU outside its kernels and
computes s with a scatter-sum; the result is the same function. Its ``offsets`` is the (M,) start
of each window plus a separate ``counts``; here it is the (M+1,) boundaries (``offsets[1:] -
offsets[:-1]`` are the counts).
"""
from typing import Tuple

import torch

from ._checks import check_tensors
from ._scattered_linear_attention_triton import scattered_linear_attention_triton_autograd
from ._triton import can_run
from .dispatch import pick

IMPLS: Tuple[str, ...] = ("triton", "reference")
EPS = 1e-6
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor) -> None:
    name = "scattered_linear_attention"
    check_tensors(name, dict(q=q, k=k, v=v))
    check_tensors(name, dict(q=q, offsets=offsets), floating=False, same_dtype=False)
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"{name}: q, k, v must be (N, heads, head_dim) tensors of one shape; "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in _FLOATS or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{name}: q, k, v must share one floating dtype (float16, bfloat16, float32, float64); "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}; cast them first")
    if offsets.dim() != 1 or offsets.shape[0] < 1 or offsets.dtype != torch.int64:
        raise ValueError(f"{name}: offsets must be a 1-D int64 tensor of M+1 window boundaries (offsets[0] = 0, "
                         f"offsets[-1] = N); got shape {tuple(offsets.shape)} and dtype {offsets.dtype} "
                         f"(use offsets.long(); for windows of sizes `counts`: "
                         f"torch.cat([counts.new_zeros(1), counts.cumsum(0)]))")
    if not (q.device == k.device == v.device == offsets.device):
        raise ValueError(f"{name}: q, k, v and offsets must be on one device; got {q.device}, {k.device}, "
                         f"{v.device}, {offsets.device}")
    if offsets.device.type == "cpu" and not torch.compiler.is_compiling():  # values: where no GPU sync is needed
        n = q.shape[0]
        if offsets[0].item() != 0 or offsets[-1].item() != n:
            raise ValueError(f"{name}: offsets must start at 0 and end at N={n} (rows sorted by window); "
                             f"got offsets[0]={offsets[0].item()}, offsets[-1]={offsets[-1].item()}")
        if offsets.shape[0] > 1 and bool((offsets[1:] < offsets[:-1]).any()):
            raise ValueError(f"{name}: offsets must be non-decreasing (window m owns rows "
                             f"offsets[m]:offsets[m+1]); sort the voxels by window first")


def window_index(offsets: torch.Tensor, n: int) -> torch.Tensor:
    """(N,) int64 window of each row, from the (M+1,) boundaries."""
    counts = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(counts.shape[0], device=offsets.device), counts, output_size=n)


def _reference(q, k, v, offsets):
    n, heads, d = q.shape
    n_windows = offsets.shape[0] - 1
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    win = window_index(offsets, n)  # (N,)
    phi_q, phi_k, v_ = torch.relu(q).to(acc), torch.relu(k).to(acc), v.to(acc)  # (N, h, d)
    # Per-window state: KV (M, h, d, d) and s (M, h, d).
    kv = phi_q.new_zeros(n_windows, heads, d, d).index_add(0, win, torch.einsum("nhd,nhe->nhde", phi_k, v_))
    s = phi_q.new_zeros(n_windows, heads, d).index_add(0, win, phi_k)
    num = torch.einsum("nhd,nhde->nhe", phi_q, kv[win])  # (N, h, d)
    den = torch.einsum("nhd,nhd->nh", phi_q, s[win]) + EPS  # (N, h)
    return (num / den[..., None]).to(q.dtype)


def _triton_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton kernels can run these inputs (CUDA, or the CPU interpreter for tests)."""
    return can_run(q, k, v) and q.shape[-1] <= 128


def _triton(q, k, v, offsets):
    return scattered_linear_attention_triton_autograd(q, k, v, offsets)


def scattered_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor,
                               impl: str = "auto") -> torch.Tensor:
    """Linear attention inside each window of voxels sorted by window.

    Args:
        q, k, v: (N, h, d) queries, keys, values (before the ReLU feature map, applied here to q and k),
            rows sorted by window. Views with a unit last stride (e.g. chunks of a fused qkv projection)
            are read in place by the triton path.
        offsets: (M+1,) int64 window boundaries, ``offsets[0] = 0``, ``offsets[-1] = N``; window m owns
            rows ``offsets[m]:offsets[m+1]`` (empty windows allowed). Checked on CPU only (checking CUDA
            values would wait for the GPU).
        impl: ``"auto"`` (triton on CUDA, reference elsewhere), ``"triton"`` or ``"reference"``.

    Returns:
        (N, h, d) in the inputs' dtype: ``relu(q_n) KV_w / (relu(q_n) . s_w + 1e-6)``.
    """
    _check(q, k, v, offsets)
    impl = pick("scattered_linear_attention", impl, {"triton": _triton_supports(q, k, v), "reference": True})
    fn = _triton if impl == "triton" else _reference
    return fn(q, k, v, offsets)


def window_sizes(n_voxels: int, seed: int = 0) -> torch.Tensor:
    """Voxel counts of the occupied windows of a synthetic LiDAR frame, summing to ``n_voxels``.

    Windows of 12 x 12 BEV cells spanning all heights on a 40 x 40 window grid around the sensor (a
    Waymo-like 480 x 480 grid; several frames when ``n_voxels`` needs more windows): the expected
    count falls off with the window's distance r (in windows) from the sensor as 800 / (1 + r/2)^2,
    30 % of the windows are empty, counts are Poisson-like with a log-normal spread, and 1 window in
    500 is a dense structure of 600 to 2,000 voxels: about 30k voxels in 1,100 windows a frame. The
    counts are then scaled to the requested total. Sizes run from 1 to a few hundred, plus a few large
    windows.
    """
    g = torch.Generator().manual_seed(seed)
    side = torch.arange(40, dtype=torch.float64) - 19.5
    r = (side[:, None] ** 2 + side[None, :] ** 2).sqrt().flatten()  # (1600,) window distances
    expected = 800.0 / (1.0 + r / 2) ** 2
    sizes = []
    total = 0.0
    while total < n_voxels:
        occupied = torch.rand(r.shape, generator=g, dtype=torch.float64) > 0.3
        spread = torch.exp(0.8 * torch.randn(r.shape, generator=g, dtype=torch.float64))
        frame = (expected * spread * occupied).round()
        large = torch.rand(r.shape, generator=g, dtype=torch.float64) < 0.002
        frame = torch.where(large, 600 + 1400 * torch.rand(r.shape, generator=g, dtype=torch.float64), frame)
        frame = frame[frame >= 1]
        sizes.append(frame[torch.randperm(frame.shape[0], generator=g)])
        total += float(frame.sum())
    sizes = torch.cat(sizes)
    sizes = (sizes * (n_voxels / sizes.sum())).floor().clamp(min=1).long()
    sizes = sizes[sizes.cumsum(0) <= n_voxels]  # the clamp may overshoot: drop the last windows
    deficit = n_voxels - int(sizes.sum())  # spread what flooring lost over the windows
    sizes += deficit // sizes.shape[0]
    sizes[: deficit % sizes.shape[0]] += 1
    return sizes


def example_inputs(device="cpu", dtype=torch.float32, n_voxels: int = 30000, num_heads: int = 4,
                   head_dim: int = 32, seed: int = 0) -> dict:
    """A ScatterFormer stage-1 layer on a Waymo frame: ~30k voxels, 4 heads of 32, 12 x 12 windows
    (:func:`window_sizes`); q, k, v ~ N(0, 1) like the output of the pre-norm projection."""
    sizes = window_sizes(n_voxels, seed)
    offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)]).to(device)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n_voxels, num_heads, head_dim, generator=g).to(device, dtype) for _ in range(3))
    return dict(q=q, k=k, v=v, offsets=offsets)
