"""Pieces the group-quantized kernels share (int4.py, int4_words.py, int8_group.py, int4_wgmma.py): x loaded with the
MLP's gate applied on the way, a GEMV's or a matmul program's end, and split-K's slices and their sum."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def k_slices(x: torch.Tensor, N: int, K: int, split: int, step: int) -> tuple[int, torch.Tensor]:
    """K in at most `split` slices of whole `step`s (the last may be short, none empty): (inputs a slice, the output,
    [slices, M, N]: x's dtype for one slice, float32 partials for more, summed in a fixed order by `summed`, so no
    atomics and the same tokens every run)."""
    k_split = triton.cdiv(triton.cdiv(K, split), step) * step
    slices = triton.cdiv(K, k_split)
    dtype = x.dtype if slices == 1 else torch.float32
    return k_split, torch.empty(slices, x.shape[0], N, dtype=dtype, device=x.device)


def summed(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`k_slices`' output as [M, N] in `dtype`."""
    return out[0] if out.shape[0] == 1 else out.sum(0).to(dtype)


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
