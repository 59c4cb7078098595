"""Session 33's record: measured slower than both w4mm paths and removed from llmserve/kernels (../README.md, call C).
The int4 matmul for many rows (decode steps of many streams, prompt chunks), x the wide operand:
acc [BLOCK_M, BLOCK_N] = x [BLOCK_M, K] @ W^T, one group of W a step, its weights dequantized in registers to x's
dtype exactly as the torch twin rounds them (float32 s * (q - 8), or s * q + m, no fused multiply-add, then rounded
once) and handed to the tensor cores through shared memory. int4.py's `w4mm_dequant` computes the same product
from W dequantized whole to memory, which writes and reads two bytes a weight more than this reads."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve.kernels import launch_args
from llmserve.kernels.pdl import pdl_prologue


@triton.jit
def nibble_codes(p, ASYM: tl.constexpr):
    """llmserve.kernels.int4's byte codes as it had them (float32 codes by a bit trick; sym: minus 8)."""
    lo = ((p & 15) | 0x4B000000).to(tl.float32, bitcast=True)
    hi = ((p >> 4) | 0x4B000000).to(tl.float32, bitcast=True)
    offset: tl.constexpr = 8388608.0 if ASYM else 8388616.0
    return lo - offset, hi - offset


@triton.jit
def _w4mm_rows_kernel(x_ptr, w_ptr, s_ptr, m_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_sn,
                      stride_om, ASYM: tl.constexpr, HAS_BIAS: tl.constexpr, GROUP: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    pid = tl.program_id(0)
    m_tiles = tl.cdiv(M, BLOCK_M)
    pid_m = pid % m_tiles  # M fastest: the programs running at once share W tiles in L2
    pid_n = pid // m_tiles
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    HALF: tl.constexpr = GROUP // 2
    i = tl.arange(0, HALF)
    rows_w = offs_n[:, None].to(tl.int64) * stride_wn
    rows_s = offs_n.to(tl.int64) * stride_sn
    rows_x = offs_m[:, None].to(tl.int64) * stride_xm
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kg in range(0, K, GROUP):
        p = tl.load(w_ptr + rows_w + (kg // 2 + i)[None, :], mask=n_mask[:, None], other=0).to(tl.int32)
        s = tl.load(s_ptr + rows_s + kg // GROUP, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        q_lo, q_hi = nibble_codes(p, ASYM)
        w_lo, w_hi = s * q_lo, s * q_hi
        if ASYM:
            m = tl.load(m_ptr + rows_s + kg // GROUP, mask=n_mask, other=0.0).to(tl.float32)[:, None]
            w_lo, w_hi = w_lo + m, w_hi + m
        x_lo = tl.load(x_ptr + rows_x + (kg + i)[None, :], mask=m_mask[:, None], other=0.0)
        x_hi = tl.load(x_ptr + rows_x + (kg + HALF + i)[None, :], mask=m_mask[:, None], other=0.0)
        acc = tl.dot(x_lo, tl.trans(w_lo.to(x_lo.dtype)), acc)
        acc = tl.dot(x_hi, tl.trans(w_hi.to(x_hi.dtype)), acc)
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def rows_config(M: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, warps, stages)."""
    return (128, 128, 8, 3) if M > 64 else (64, 128, 4, 3)


def w4mm_rows(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
              bias: torch.Tensor | None, config: tuple[int, int, int, int] | None, pdl: bool,
              sizes: tuple[int, int, int]) -> torch.Tensor:
    """x: [M, K] (the gate already applied) -> [M, N]; `sizes` (N, K, group) as int4.check_codes gives them."""
    N, K, group = sizes
    M = x.shape[0]
    assert x.shape[1] == K and x.stride(1) == 1
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0:
        return out
    bm, bn, warps, stages = config or rows_config(M)
    _w4mm_rows_kernel[(triton.cdiv(M, bm) * triton.cdiv(N, bn),)](
        x, w, scale, minimum if minimum is not None else scale, bias if bias is not None else scale, out, M, N, K,
        x.stride(0), w.stride(0), scale.stride(0), out.stride(0), ASYM=minimum is not None,
        HAS_BIAS=bias is not None, GROUP=group, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages,
        enable_fp_fusion=False, **launch_args(pdl))
    return out
