"""e4m3 x e4m3 -> 16-bit with a scale per row of x and per output column: the fp8 linear at 33-256 rows.

cuBLAS (`torch._scaled_mm`) tiles these shapes 128 x 128, which leaves most of an H200's 132 SMs idle when N is a
few thousand (o_proj at 128 rows: 32 tiles); 64-row tiles, and 64 columns at up to 128 rows, fill them. Where
cuBLAS is as fast or faster (wide N such as gate_up past 64 rows, more rows) `use_fp8_mm` says no and the caller
keeps cuBLAS. Measured per shape in bench/results/2026-12-04-h200-s18/ (docs/performance.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 64
BLOCK_K = 128


@triton.jit
def _tile_mm_kernel(a, w, sa, sb, out, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    FAST: tl.constexpr, SCALED: tl.constexpr = True):
    """One BM x BN tile of out = (a * sa[:, None]) @ (w * sb[:, None]).T; a [M, K], w [N, K], both row-major.
    SCALED=False: out = a @ w.T (16-bit operands, sa and sb unused; bench sweeps for 16-bit weights use it)."""
    pid_m = tl.program_id(0)  # rows fastest: the programs that read one weight tile run together
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_p = a + rm[:, None] * K + rk[None, :]
    w_p = w + rn[None, :] * K + rk[:, None]
    in_m = rm[:, None] < M
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, K, BK):
        x = tl.load(a_p, mask=in_m, other=0.0)
        y = tl.load(w_p)
        if FAST:  # the tensor cores' own accumulation over the whole K (cuBLAS's use_fast_accum)
            acc = tl.dot(x, y, acc)
        else:  # each BK slice summed apart, then added in fp32 (cuBLAS's default)
            acc = tl.dot(x, y, acc, max_num_imprecise_acc=BK)
        a_p += BK
        w_p += BK
    if SCALED:
        acc = acc * tl.load(sa + rm, mask=rm < M, other=0.0)[:, None] * tl.load(sb + rn)[None, :]
    tl.store(out + rm[:, None] * N + rn[None, :], acc.to(out.dtype.element_ty), mask=in_m)


def fp8_mm_config(M: int, N: int, K: int) -> tuple[int, int]:
    """(BLOCK_N, num_stages): 64 columns while a 128-column grid would leave SMs idle; deeper pipelines for long K."""
    bn = 64 if M <= 64 or (M <= 128 and N <= 4096) else 128
    return bn, 5 if K >= 8192 else 4


def use_fp8_mm(M: int, N: int, K: int, fast: bool) -> bool:
    """Whether this kernel beats cuBLAS on the shape (H200 sweeps): every N up to 64 rows; N up to 8,192 (the
    attention and down projections of 7-8B models, not gate_up) up to 128 rows, or 256 with fast accumulation."""
    if N % 128 or K % BLOCK_K:
        return False
    return M <= 64 or (N <= 8192 and (M <= 128 or (fast and M <= 256)))


def fp8_mm(xq: torch.Tensor, xs: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, out_dtype: torch.dtype,
           fast: bool) -> torch.Tensor:
    """xq [M, K] e4m3, xs [M, 1] float32, w [N, K] e4m3, ws [N] float32 -> [M, N] out_dtype."""
    M, K = xq.shape
    N = w.shape[0]
    assert K % BLOCK_K == 0 and N % 128 == 0
    bn, stages = fp8_mm_config(M, N, K)
    return tile_mm(xq, w, out_dtype, (BLOCK_M, bn, BLOCK_K, stages, 4), (xs.reshape(-1), ws), fast)


def tile_mm(a: torch.Tensor, w: torch.Tensor, out_dtype: torch.dtype, config: tuple[int, int, int, int, int],
            scales: tuple[torch.Tensor, torch.Tensor] | None = None, fast: bool = True) -> torch.Tensor:
    """a [M, K] @ w [N, K].T at a given (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps), times scales (per row
    of a, per row of w) when given: fp8_mm's launch, and the bench's tile sweeps (16-bit operands unscaled)."""
    bm, bn, bk, stages, warps = config
    M, K = a.shape
    N = w.shape[0]
    assert a.is_contiguous() and w.is_contiguous() and K % bk == 0 and N % bn == 0
    out = torch.empty(M, N, device=a.device, dtype=out_dtype)
    sa, sb = scales if scales is not None else (a, a)
    _tile_mm_kernel[(triton.cdiv(M, bm), N // bn)](a, w, sa, sb, out, M, N, K, BM=bm, BN=bn, BK=bk, FAST=fast,
                                                  SCALED=scales is not None, num_warps=warps, num_stages=stages)
    return out
