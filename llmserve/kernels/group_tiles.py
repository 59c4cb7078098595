"""Pieces the group-quantized kernels share (int4.py, int4_words.py, int8_group.py): x loaded with the MLP's gate
applied on the way, and a GEMV's or a matmul program's end."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_x(x_ptr, idx, mask, K, GATED: tl.constexpr):
    """x (or silu(gate) * up, rounded like the eager ops) at `idx`, in float32."""
    x = tl.load(x_ptr + idx, mask=mask, other=0.0)
    if GATED:
        u = tl.load(x_ptr + K + idx, mask=mask, other=0.0)
        g = x.to(tl.float32)
        x = (g / (1.0 + tl.exp(-g))).to(u.dtype)
        x = (x.to(tl.float32) * u.to(tl.float32)).to(u.dtype)
    return x.to(tl.float32)


@triton.jit
def store_rows(acc, b_ptr, out_ptr, offs_n, n_mask, HAS_BIAS: tl.constexpr):
    """A GEMV program's end: its [BLOCK_N, groups] sums added up per output, plus the bias."""
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y = y + tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def store_tile(acc, b_ptr, out_ptr, offs_m, offs_n, m_mask, n_mask, M, stride_om, pid_k, HAS_BIAS: tl.constexpr):
    """A matmul program's end: acc [BLOCK_N, BLOCK_M] (W-major) into out's K-split slice, the bias in slice 0."""
    if HAS_BIAS and pid_k == 0:
        acc = acc + tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
    out_ptrs = out_ptr + pid_k.to(tl.int64) * M * stride_om + offs_m[None, :].to(tl.int64) * stride_om + offs_n[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_mask[None, :] & n_mask[:, None])
