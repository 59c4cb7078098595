"""`y = x @ W^T` for 8-bit codes in groups along K (W8A16: GGUF's Q8_0, Q6_K, Q5_K repacked, see
llmserve/model/int8_group.py), in Triton; the torch twin is Int8GroupLinear's reference path (dequantize, then
F.linear), which the tests compare against.

Weights: int8 [N, K], one code an element in order; scales (and minimums) [N, K / g] in 16 or 32 bits, g = 16, 32,
64 or 128; "sym" w = s * q, "asym" w = s * q + m. A tile of BLOCK_K inputs (whole groups) is loaded as
[BLOCK_N, groups, g], so each group's scale is one load broadcast over it.
- `w8gmm` with one row: CUDA-core FMAs, a group's products summed before its scale is applied (as the int4 GEMV);
  `gated=True` computes the MLP's silu(gate) * up while loading x.
- more rows: tensor cores on the tile dequantized to the activation dtype, K split for few rows; the launchers,
  launch shapes and split-K are llmserve/kernels/int4.py's (not yet swept for 8-bit codes). From int4.DEQUANT_ROWS
  rows W is dequantized whole (`_w8g_dequant_kernel`, the twin's weight bit for bit) and cuBLAS runs, as for int4.
`pdl=True`: programmatic dependent launch (see llmserve.kernels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve.kernels.group_tiles import load_x, store_rows, store_tile
from llmserve.kernels.int4 import DEQUANT_ROWS, check_codes, dequant_linear, launch_gemv, launch_mm
from llmserve.kernels.pdl import pdl_prologue

GROUP_SIZES = (16, 32, 64, 128)


@triton.jit
def _groups(k0, K, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """One K tile as [groups, GROUP]: (input index, group index per group, mask of the groups inside K)."""
    j = tl.arange(0, BLOCK_K // GROUP)
    idx = k0 + j[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    return idx, k0 // GROUP + j, (k0 + j * GROUP) < K


@triton.jit
def _w8g_gemv_kernel(x_ptr, w_ptr, s_ptr, m_ptr, b_ptr, out_ptr, N, K, stride_wn, stride_sn,
                     ASYM: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, GROUP: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    rows_w = offs_n[:, None, None].to(tl.int64) * stride_wn
    rows_s = offs_n[:, None].to(tl.int64) * stride_sn
    acc = tl.zeros((BLOCK_N, BLOCK_K // GROUP), dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        idx, grp, k_mask = _groups(k0, K, GROUP, BLOCK_K)
        q = tl.load(w_ptr + rows_w + idx[None, :, :], mask=n_mask[:, None, None] & k_mask[None, :, None],
                    other=0).to(tl.float32)
        s_mask = n_mask[:, None] & k_mask[None, :]
        s = tl.load(s_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)
        x = load_x(x_ptr, idx, k_mask[:, None], K, GATED)
        acc += s * tl.sum(q * x[None, :, :], axis=2)
        if ASYM:
            m = tl.load(m_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)
            acc += m * tl.sum(x, axis=1)[None, :]
    store_rows(acc, b_ptr, out_ptr, offs_n, n_mask, HAS_BIAS)


@triton.jit
def _w8g_mm_kernel(x_ptr, w_ptr, s_ptr, m_ptr, b_ptr, out_ptr, M, N, K, K_SPLIT, stride_xm, stride_wn, stride_sn,
                   stride_om, ASYM: tl.constexpr, HAS_BIAS: tl.constexpr, GROUP: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    pid_k = tl.program_id(2)  # split-K: this program's K_SPLIT inputs, a float32 partial in its own out slice
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    rows_w = offs_n[:, None, None].to(tl.int64) * stride_wn
    rows_s = offs_n[:, None].to(tl.int64) * stride_sn
    rows_x = offs_m[:, None].to(tl.int64) * stride_xm
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    k_end = tl.minimum(K, (pid_k + 1) * K_SPLIT)
    for k0 in range(pid_k * K_SPLIT, k_end, BLOCK_K):
        idx, grp, k_mask = _groups(k0, k_end, GROUP, BLOCK_K)
        q = tl.load(w_ptr + rows_w + idx[None, :, :], mask=n_mask[:, None, None] & k_mask[None, :, None],
                    other=0).to(tl.float32)
        s_mask = n_mask[:, None] & k_mask[None, :]
        w = q * tl.load(s_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)[:, :, None]
        if ASYM:
            w += tl.load(m_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)[:, :, None]
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rows_x + offs_k[None, :], mask=m_mask[:, None] & (offs_k < k_end)[None, :], other=0.0)
        acc = tl.dot(tl.reshape(w, (BLOCK_N, BLOCK_K)).to(x.dtype), tl.trans(x), acc)
    store_tile(acc, b_ptr, out_ptr, offs_m, offs_n, m_mask, n_mask, M, stride_om, pid_k, HAS_BIAS)


@triton.jit
def _w8g_dequant_kernel(w_ptr, s_ptr, m_ptr, out_ptr, N, K, stride_wn, stride_sn, stride_on, ASYM: tl.constexpr,
                        GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """W [N, K] in out's dtype: float32 s * q (+ m, added apart, as the twin does), then rounded once."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    idx, grp, k_mask = _groups(tl.program_id(1) * BLOCK_K, K, GROUP, BLOCK_K)
    mask = n_mask[:, None, None] & k_mask[None, :, None]
    q = tl.load(w_ptr + offs_n[:, None, None].to(tl.int64) * stride_wn + idx[None, :, :], mask=mask,
                other=0).to(tl.float32)
    groups = offs_n[:, None].to(tl.int64) * stride_sn + grp[None, :]
    s_mask = n_mask[:, None] & k_mask[None, :]
    w = tl.load(s_ptr + groups, mask=s_mask, other=0.0).to(tl.float32)[:, :, None] * q
    if ASYM:
        w = w + tl.load(m_ptr + groups, mask=s_mask, other=0.0).to(tl.float32)[:, :, None]
    tl.store(out_ptr + offs_n[:, None, None].to(tl.int64) * stride_on + idx[None, :, :],
             w.to(out_ptr.dtype.element_ty), mask=mask)


def w8gmm(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None = None,
          bias: torch.Tensor | None = None, gated: bool = False, config: tuple[int, ...] | None = None,
          pdl: bool = False) -> torch.Tensor:
    """x: [M, K] (or [M, 2K] gated), w: int8 [N, K], scale (and minimum): [N, K / g]. Returns [M, N]. `config`:
    (BLOCK_N, BLOCK_K, warps, stages) for the one-row GEMV, (BLOCK_M, ..., split-K) for more rows."""
    sizes = check_codes(w, scale, minimum, torch.int8, 1, GROUP_SIZES)
    if x.shape[0] == 1 and (config is None or len(config) == 4):
        return launch_gemv(_w8g_gemv_kernel, x, w, scale, minimum, bias, gated, config, pdl, sizes)
    if config is None and x.shape[0] >= DEQUANT_ROWS:
        return dequant_linear(_w8g_dequant_kernel, x, w, scale, minimum, bias, gated, pdl, sizes)
    return launch_mm(_w8g_mm_kernel, x, w, scale, minimum, bias, gated, config, pdl, sizes)
