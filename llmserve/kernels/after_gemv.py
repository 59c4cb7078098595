"""What the one-row GEMVs' epilogues do (llmserve/kernels/int4_pairs.py, gemv.py), done after a GEMV that does not:
torch ops and the fused kernels' launches, where the paired int4 GEMV cannot run (the CPU interpreter, fp16)."""

from __future__ import annotations

import torch

from llmserve.kernels import fused
from llmserve.kernels.gemv import RopeCache, RowNorm


def finished(y: torch.Tensor, gate_out: bool, rope: RopeCache | None, add_to: torch.Tensor | None,
             next_norm: torch.Tensor | None, pdl: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """y [1, N] as the paired GEMV returns it with `gate_out`, `rope` or `add_to` (at most one)."""
    if add_to is not None:
        return residual_added(y, add_to, next_norm)
    if gate_out:
        return gate_applied(y, y.shape[1] // 2, True, pdl)
    return rope_applied(y, rope, pdl) if rope is not None else y


def normed(y: torch.Tensor, bias: torch.Tensor | None, norm: RowNorm | None, K: int) -> torch.Tensor:
    """A product of the norm-weighted row (no bias) as the paired GEMV's epilogue finishes it: times 1 / rms,
    plus the bias."""
    out = y.float()
    if norm is not None:
        out = out * torch.rsqrt(norm.sumsq.sum() / K + norm.eps)
    return (out if bias is None else out + bias.float()).to(y.dtype)


def residual_added(y: torch.Tensor, residual: torch.Tensor, next_norm: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """residual += y in place (rounded as the RMSNorm kernel's add); (its sum of squares [1], the new row times
    `next_norm`), as the paired GEMV's `add_to` returns them."""
    residual.copy_((y.float() + residual.float()).to(residual.dtype))
    h = residual.float()
    weighted = None if next_norm is None else (h * next_norm.float()).to(residual.dtype)
    return (h * h).sum().reshape(1), weighted


def rope_applied(qkv: torch.Tensor, rope: RopeCache, pdl: bool) -> torch.Tensor:
    """qkv [1, N] with q and k rotated in place and k, v written to the cache: rope_and_cache over the token's own
    cos and sin rows (position 0 of a one-row table)."""
    pos = torch.zeros(1, dtype=torch.long, device=qkv.device)
    fused.rope_and_cache(qkv, pos, rope.cos, rope.sin, rope.slot_mapping, rope.kv_cache, rope.num_heads,
                         rope.num_kv_heads, rope.head_dim, pdl=pdl, k_in_place=True)
    return qkv


def gate_applied(x: torch.Tensor, K: int, gated: bool, pdl: bool) -> torch.Tensor:
    """x [M, K], or the MLP's [M, 2K] gate and up as silu(gate) * up by the fused kernel (the matmuls' input)."""
    assert x.shape[1] == (2 * K if gated else K), (x.shape, K, gated)
    return fused.silu_mul(x, pdl=pdl) if gated else x
