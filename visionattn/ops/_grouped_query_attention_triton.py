"""Triton kernel of grouped-query attention: K and V expanded to one KV head per query head.

With per-image group sizes (KDGQA) query head h of image b reads the KV head whose group holds h. SDPA needs
K/V with H heads, and PyTorch's advanced indexing ``k[batch, idx]`` that builds them runs at about
a sixth of HBM bandwidth on an H200 (18 % of a ViT-B forward). This kernel reads K and V once
through their strides (the (B, G, N, d) views into the fused qkv projection are not copied first)
and, computing each query head's KV head from the group sizes itself, writes both expanded tensors in (B, N, H, d) layout: rows of H*d contiguous values, which
SDPA takes as (B, H, N, d) through a transpose, as it takes timm's qkv views.

Registered as ``torch.ops.visionattn.expand_kv_heads`` (fake and autograd included): the backward
sums the gradients of the query heads that share a KV head, as a batched matrix product with the
(B, H, G) one-hot assignment (exact for fp32 sums; low-precision gradients accumulate in fp32).
"""
from typing import Tuple

import torch

from ._triton import tl, triton

if triton is not None:

    @triton.jit
    def _expand_kv_kernel(k_ptr, v_ptr, sizes_ptr, ko_ptr, vo_ptr, N, ssb,
                          skb, skg, skn, svb, svg, svn, H: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
                          D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_HD: tl.constexpr):
        """One program per (BLOCK_N tokens, image): out[b, n, h, :] = src[b, g(h), n, :], where KV head
        g(h) = the number of groups that end at or before query head h (the groups' sizes, in order)."""
        b = tl.program_id(1)
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        j = tl.arange(0, BLOCK_HD)  # column of the (H * D) output row
        cols = j < H * D
        head = j // D
        e = j % D
        offs_g = tl.arange(0, GP)
        sizes = tl.load(sizes_ptr + b * ssb + offs_g, mask=offs_g < G, other=0)
        ends = tl.cumsum(sizes, 0)  # exclusive end of each group
        done = (ends[None, :] <= head[:, None]) & (offs_g < G)[None, :]
        g = tl.minimum(tl.sum(done.to(tl.int32), axis=1), G - 1).to(tl.int64)  # KV head of each column
        mask = (n < N)[:, None] & cols[None, :]
        n64 = n.to(tl.int64)[:, None]
        b64 = b.to(tl.int64)
        out = (b64 * N + n64) * (H * D) + j[None, :]
        k = tl.load(k_ptr + b64 * skb + g[None, :] * skg + n64 * skn + e[None, :], mask=mask)
        tl.store(ko_ptr + out, k, mask=mask)
        v = tl.load(v_ptr + b64 * svb + g[None, :] * svg + n64 * svn + e[None, :], mask=mask)
        tl.store(vo_ptr + out, v, mask=mask)

    def expand_kv_heads_eager(k: torch.Tensor, v: torch.Tensor, sizes: torch.Tensor, num_heads: int
                              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The kernel launch itself (:func:`expand_kv_heads` without the op dispatcher, for calls that
        need neither autograd nor tracing: its host time is what a KDGQA forward waits on)."""
        B, G, N, D = k.shape
        H = num_heads
        ko = k.new_empty(B, N, H, D)
        vo = v.new_empty(B, N, H, D)
        if ko.numel() == 0:
            return ko, vo
        sizes = sizes.contiguous()
        block_hd = triton.next_power_of_2(H * D)
        block_n = max(1, min(triton.next_power_of_2(N), 8192 // block_hd))  # ~8k values per tensor and program
        _expand_kv_kernel[(triton.cdiv(N, block_n), B)](
            k, v, sizes, ko, vo, N, G if sizes.dim() == 2 else 0, k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), H=H, G=G, GP=max(2, triton.next_power_of_2(G)), D=D,
            BLOCK_N=block_n, BLOCK_HD=block_hd, num_warps=4)
        return ko, vo

    @torch.library.custom_op("visionattn::expand_kv_heads", mutates_args=())
    def expand_kv_heads(k: torch.Tensor, v: torch.Tensor, sizes: torch.Tensor, num_heads: int
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, G, N, d) with unit stride in d; sizes: integer (B, G) or (G,) query heads per KV
        head (each row summing to ``num_heads``). Returns K and V expanded to (B, N, H, d), contiguous."""
        return expand_kv_heads_eager(k, v, sizes, num_heads)

    @expand_kv_heads.register_fake
    def _(k, v, sizes, num_heads):
        B, _, N, D = k.shape
        return k.new_empty(B, N, num_heads, D), v.new_empty(B, N, num_heads, D)

    def _setup_context(ctx, inputs, output):
        k, _, sizes, num_heads = inputs
        ctx.save_for_backward(sizes)
        ctx.num_kv_heads, ctx.num_heads, ctx.batch = k.shape[1], num_heads, k.shape[0]

    def _sum_shared(grad: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """grad (B, N, H, d) -> (B, G, N, d): the gradients of the query heads of each KV head summed."""
        B, N, H, D = grad.shape
        rows = grad.permute(0, 2, 1, 3).reshape(B, H, N * D)
        out = torch.bmm(onehot.transpose(1, 2), rows.to(onehot.dtype))  # (B, G, N * D)
        return out.view(B, -1, N, D).to(grad.dtype)

    def _backward(ctx, gk, gv):
        from .grouped_query_attention import kv_head_index

        (sizes,) = ctx.saved_tensors
        idx = kv_head_index(sizes, ctx.num_heads).expand(ctx.batch, ctx.num_heads)
        # fp32 one-hot: 0/1 weights, so each sum is exact up to one rounding into the gradient dtype
        onehot = torch.nn.functional.one_hot(idx, ctx.num_kv_heads).to(torch.float32)
        if gk.dtype == torch.float64:
            onehot = onehot.double()
        return _sum_shared(gk, onehot), _sum_shared(gv, onehot), None, None

    expand_kv_heads.register_autograd(_backward, setup_context=_setup_context)
