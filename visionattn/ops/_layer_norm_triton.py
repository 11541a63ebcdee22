"""Triton kernel of LayerNorm over the last axis, registered as ``torch.ops.visionattn.layer_norm_triton``.

One program normalises ``BLOCK_M`` rows of ``D <= 8192`` channels in one pass (statistics in
float32), reading the rows through a stride so that a channel slice of a wider tensor needs no
copy. The backward is written with PyTorch ops and recomputes the statistics.
"""
from typing import Optional

import torch

from ._triton import tl, triton


def rows_are_a_view(x: torch.Tensor) -> bool:
    """Whether ``x (..., D)`` reads as ``(rows, D)`` with one row stride (e.g. a channel slice)."""
    try:
        x.view(-1, x.shape[-1])
        return True
    except RuntimeError:
        return False


if triton is not None:

    @triton.jit
    def _layer_norm_fwd(x_ptr, w_ptr, b_ptr, y_ptr, rows, stride_x, eps,
                        D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, HAS_BIAS: tl.constexpr):
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, DP)
        mask_d = offs_d < D
        mask = (offs_m < rows)[:, None] & mask_d[None, :]
        x = tl.load(x_ptr + offs_m.to(tl.int64)[:, None] * stride_x + offs_d[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
        y = xc * rstd[:, None] * tl.load(w_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * D + offs_d[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)

    @torch.library.custom_op("visionattn::layer_norm_triton", mutates_args=())
    def layer_norm_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          eps: float) -> torch.Tensor:
        """x (..., D) with unit stride on the last axis and one row stride -> contiguous (..., D)."""
        D = x.shape[-1]
        rows = x.numel() // D
        y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        if rows == 0:
            return y
        x2 = x.view(rows, D) if x.stride(-1) == 1 and rows_are_a_view(x) else x.reshape(rows, D).contiguous()
        DP = triton.next_power_of_2(D)
        block_m = max(1, min(64, 4096 // DP))
        _layer_norm_fwd[(triton.cdiv(rows, block_m),)](
            x2, weight, bias if bias is not None else weight, y, rows, x2.stride(0), eps,
            D=D, DP=DP, BLOCK_M=block_m, HAS_BIAS=bias is not None, num_warps=4 if DP <= 512 else 8)
        return y

    @layer_norm_triton.register_fake
    def _(x, weight, bias, eps):
        return torch.empty(x.shape, device=x.device, dtype=x.dtype)

    def _setup_context(ctx, inputs, output):
        x, weight, bias, eps = inputs
        ctx.save_for_backward(x, weight)
        ctx.eps, ctx.has_bias = eps, bias is not None

    def _backward(ctx, grad):
        """Standard LayerNorm backward with the statistics recomputed, in float32."""
        x, weight = ctx.saved_tensors
        xf, g = x.float(), grad.float()
        mean = xf.mean(-1, keepdim=True)
        rstd = torch.rsqrt((xf - mean).pow(2).mean(-1, keepdim=True) + ctx.eps)
        xhat = (xf - mean) * rstd
        gw = g * weight.float()
        gx = rstd * (gw - gw.mean(-1, keepdim=True) - xhat * (gw * xhat).mean(-1, keepdim=True))
        dims = tuple(range(x.dim() - 1))
        dweight = (g * xhat).sum(dims).to(weight.dtype)
        dbias = g.sum(dims).to(weight.dtype) if ctx.has_bias else None
        return gx.to(x.dtype), dweight, dbias, None

    layer_norm_triton.register_autograd(_backward, setup_context=_setup_context)
