"""Key-driven query allocation (KDGQA): how many query heads each key/value head gets, per image.

``sizes = allocate_queries(min_max_normalise(key_head_norms(k)), num_heads, min_queries)``:
the Frobenius norm of each key head of an image, min-max normalised over its G heads (all ones
when tied), then ``num_heads`` query heads split in proportion to those scores (every KV head
gets ``min_queries`` first, the rest by largest remainder, lower index first on ties).

Why a kernel: written with PyTorch ops the allocation is about thirty launches of tiny kernels on
(B, G) tensors per attention layer, plus the norm's pass over K; the Triton kernel does the norm
and the whole allocation in one launch (one program per image, reading K through its strides, so
the (B, G, N, d) view into the fused qkv projection is not copied).

Implementations: ``"triton"`` (CUDA; CPU under ``TRITON_INTERPRET=1``) and ``"reference"``. The
kernel sums the squares in its own order, so a norm may differ from ``torch.linalg.vector_norm``
in the last bit; the allocation then differs only where two remainders tie to within that bit.
"""
from typing import Dict

import torch

from ._triton import can_run, tl, triton
from .dispatch import pick

IMPLS = ("triton", "reference")


# --- reference ----------------------------------------------------------------------------------

def key_head_norms(k: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each key head. k: (B, G, N, d) -> (B, G) float32 (summed in float64 for a
    float64 k: vector_norm refuses to narrow its input's dtype)."""
    return torch.linalg.vector_norm(k.detach(), dim=(2, 3), dtype=torch.promote_types(k.dtype, torch.float32)).float()


def min_max_normalise(norms: torch.Tensor) -> torch.Tensor:
    """(..., G) -> (..., G) in [0, 1]; all ones where the norms are tied (incl. G = 1)."""
    low, high = norms.amin(-1, keepdim=True), norms.amax(-1, keepdim=True)
    spread = high - low
    tied = spread <= 0
    return torch.where(tied, torch.ones_like(norms), (norms - low) / torch.where(tied, torch.ones_like(spread), spread))


def allocate_queries(scores: torch.Tensor, num_heads: int, min_queries: int = 1) -> torch.Tensor:
    """Split ``num_heads`` query heads over G KV heads in proportion to ``scores`` (largest remainder).

    Every KV head first gets ``min_queries``; the other heads are shared in proportion to the
    scores, the leftover ones going to the largest fractional parts (lower index first on ties).
    Scores that sum to zero or are not finite give the most uniform split. Tensor ops only.

    Args:
        scores: (..., G) non-negative weights.
    Returns:
        long (..., G), each row summing to ``num_heads``.
    """
    G = scores.shape[-1]
    if min_queries * G > num_heads:
        raise ValueError(f"min_queries={min_queries} per KV head needs {min_queries * G} query heads; "
                         f"only {num_heads} exist (lower min_queries or use fewer KV heads)")
    free = num_heads - min_queries * G
    scores = scores.detach().float()
    total = scores.sum(-1, keepdim=True)
    valid = torch.isfinite(total) & (total > 0)
    share = torch.where(valid, scores / torch.where(valid, total, torch.ones_like(total)),
                        torch.full_like(scores, 1.0 / G))
    quota = share * free
    base = quota.floor()
    leftover = free - base.sum(-1, keepdim=True)
    order = torch.argsort(quota - base, dim=-1, descending=True, stable=True)
    rank = torch.argsort(order, dim=-1)  # position of each KV head in that order
    return (base + (rank < leftover).float()).long() + min_queries


# --- Triton -------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _key_norm_allocation_kernel(k_ptr, out_ptr, N, sb, sg, sn, sd, H: tl.constexpr, MINQ: tl.constexpr,
                                    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                                    BLOCK_N: tl.constexpr):
        b = tl.program_id(0)
        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, DP)
        mask_g = offs_g < G
        norms = tl.zeros((GP,), dtype=tl.float32)
        base_ptr = k_ptr + b.to(tl.int64) * sb
        for g in tl.static_range(G):
            acc = tl.zeros((BLOCK_N, DP), dtype=tl.float32)
            for n0 in range(0, N, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                mask = (offs_n < N)[:, None] & (offs_d < D)[None, :]
                x = tl.load(base_ptr + g * sg + offs_n.to(tl.int64)[:, None] * sn + offs_d[None, :] * sd,
                            mask=mask, other=0.0).to(tl.float32)
                acc += x * x
            norms = tl.where(offs_g == g, tl.sqrt_rn(tl.sum(acc)), norms)
        # min-max normalisation (ones when tied)
        low = tl.min(tl.where(mask_g, norms, float("inf")), axis=0)
        high = tl.max(tl.where(mask_g, norms, -float("inf")), axis=0)
        spread = high - low
        tied = spread <= 0
        scores = tl.where(tied, 1.0, tl.math.div_rn(norms - low, tl.where(tied, 1.0, spread)))
        scores = tl.where(mask_g, scores, 0.0)
        # largest-remainder allocation of the free heads
        free = H - MINQ * G
        total = tl.sum(scores, axis=0)
        valid = (total == total) & (total < float("inf")) & (total > 0)
        share = tl.where(valid, tl.math.div_rn(scores, tl.where(valid, total, 1.0)), 1.0 / G)
        quota = share * free
        base = tl.floor(quota)
        base = tl.where(mask_g, base, 0.0)
        leftover = free - tl.sum(base, axis=0)
        frac = quota - base
        fi = frac[:, None]
        fj = frac[None, :]
        before = (fj > fi) | ((fj == fi) & (offs_g[None, :] < offs_g[:, None]))
        rank = tl.sum((before & mask_g[None, :]).to(tl.int32), axis=1)
        sizes = base.to(tl.int64) + (rank.to(tl.float32) < leftover).to(tl.int64) + MINQ
        tl.store(out_ptr + b * G + offs_g, sizes, mask=mask_g)

    @torch.library.custom_op("visionattn::key_norm_allocation_triton", mutates_args=())
    def key_norm_allocation_triton(k: torch.Tensor, num_heads: int, min_queries: int) -> torch.Tensor:
        """k (B, G, N, d), any strides -> long (B, G) query heads per KV head."""
        B, G, N, d = k.shape
        out = torch.empty((B, G), device=k.device, dtype=torch.long)
        if B == 0:
            return out
        DP = triton.next_power_of_2(d)
        block_n = max(1, min(triton.next_power_of_2(N), 4096 // DP))
        _key_norm_allocation_kernel[(B,)](k, out, N, *k.stride(), H=num_heads, MINQ=min_queries, G=G,
                                          GP=max(2, triton.next_power_of_2(G)), D=d, DP=DP, BLOCK_N=block_n,
                                          num_warps=4)
        return out

    @key_norm_allocation_triton.register_fake
    def _(k, num_heads, min_queries):
        return k.new_empty((k.shape[0], k.shape[1]), dtype=torch.long)


def key_norm_allocation(k: torch.Tensor, num_heads: int, min_queries: int = 1, impl: str = "auto") -> torch.Tensor:
    """Query heads per KV head for keys ``k (B, G, N, d)``: long (B, G), each row summing to ``num_heads``."""
    if k.dim() != 4:
        raise ValueError(f"key_norm_allocation: k must be (B, G, N, d), got shape {tuple(k.shape)}")
    G = k.shape[1]
    if min_queries * G > num_heads:
        raise ValueError(f"min_queries={min_queries} per KV head needs {min_queries * G} query heads; "
                         f"only {num_heads} exist (lower min_queries or use fewer KV heads)")
    supported = {"triton": can_run(k) and G <= 64 and k.shape[-1] <= 1024, "reference": True}
    if pick("key_norm_allocation", impl, supported) == "triton":
        return torch.ops.visionattn.key_norm_allocation_triton(k.detach(), int(num_heads), int(min_queries))
    return allocate_queries(min_max_normalise(key_head_norms(k)), num_heads, min_queries)


def example_inputs(device="cpu", dtype=torch.float32, batch: int = 128, kv_heads: int = 6, heads: int = 12,
                   tokens: int = 197, head_dim: int = 64, **_) -> Dict:
    """Typical call: KDGQA ViT-B/16 at 224 (6 KV heads, 12 query heads), k a strided view of the
    fused qkv projection as the layer makes it."""
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(batch, tokens, (heads + 2 * kv_heads) * head_dim, generator=g)
    qkv[..., heads * head_dim:(heads + kv_heads) * head_dim] *= torch.rand(kv_heads, generator=g).repeat_interleave(head_dim) + 0.5
    qkv = qkv.to(device, dtype)
    k = qkv[..., heads * head_dim:(heads + kv_heads) * head_dim].view(batch, tokens, kv_heads, head_dim).transpose(1, 2)
    return dict(k=k, num_heads=heads)
