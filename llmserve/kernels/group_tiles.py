"""Pieces the group-quantized kernels share (int4.py, int4_words.py, int8_group.py, int4_wgmma.py): x loaded with the
MLP's gate applied on the way, a GEMV's or a matmul program's end, and split-K's slices and their sum (summed after
the matmul's launch, or by a one-row GEMV's last program of each row block)."""

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


# The one-row GEMVs (int4_words.py, int4_pairs.py) split K until about this many programs where the caller holds
# counters for it (Int4Linear does): more warps an SM where the row blocks are few. 0 (none): slower on an H100 (s40)
SPLIT_PROGRAMS = 0


def gemv_split(K: int, block_k: int, grid: int, programs: int | None) -> tuple[int, int]:
    """A one-row GEMV's K split: (slices, inputs a slice, whole BLOCK_Ks) so that `grid` row blocks make about
    `programs` programs (None: SPLIT_PROGRAMS; 0: one slice), each slice at least two tiles."""
    programs = SPLIT_PROGRAMS if programs is None else programs
    tiles = triton.cdiv(K, block_k)
    split = max(1, min(programs // max(grid, 1), tiles // 2)) if programs else 1
    per = triton.cdiv(tiles, split)
    return triton.cdiv(tiles, per), per * block_k


def split_launch(x: torch.Tensor, N: int, K: int, block_k: int, grid: int, programs: int | None,
                 counters: torch.Tensor | None) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """A one-row GEMV launch's K split: (slices, inputs a slice, the float32 partials [slices, N], the row blocks'
    arrival counters). Without `counters` (zeros that each launch leaves zero) one slice, and x stands in for the
    two buffers, never read."""
    split, k_slice = gemv_split(K, block_k, grid, 0 if counters is None else programs)
    if split == 1:
        return split, k_slice, x, x
    assert counters.dtype == torch.int32 and counters.numel() >= grid, "split-K counters"
    return split, k_slice, torch.empty(split, N, dtype=torch.float32, device=x.device), counters


@triton.jit
def k_range(pid_k, K, k_slice, SPLIT: tl.constexpr):
    """The inputs [start, end) of slice pid_k (one slice: 0 and K, the loop the compiler saw before splits)."""
    lo = 0
    hi = K
    if SPLIT > 1:
        lo = pid_k * k_slice
        hi = tl.minimum(K, lo + k_slice)
    return lo, hi


@triton.jit
def slices_summed(y, ws_ptr, cnt_ptr, pid_n, pid_k, offs_n, n_mask, N, SPLIT: tl.constexpr):
    """A K-split GEMV's outputs: this slice's y to the partials, then whether the program is its row block's last to
    arrive, and (in that one) the slices' sum in a fixed order: the same bits whichever arrives last. The barrier
    and the counter's acquire-release make the other slices' stores visible; the last one sets the counter back."""
    tl.store(ws_ptr + pid_k * N + offs_n, y, mask=n_mask)
    tl.debug_barrier()
    last = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel") == SPLIT - 1
    tl.debug_barrier()
    total = tl.zeros_like(y)
    for s in tl.static_range(SPLIT):
        total += tl.load(ws_ptr + s * N + offs_n, mask=n_mask & last, other=0.0, cache_modifier=".cg")
    tl.store(cnt_ptr + pid_n, 0, mask=last)
    return last, total


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
