"""Prototype: int4 (group-halves layout, llmserve/kernels/int4.py) x bf16 on Hopper in Gluon, W the register
operand of asynchronous wgmma (swap AB: out^T[N, M] = W[N, K] @ x^T[K, M]), x by TMA into a ring of STAGES groups.
Each group: W's bytes (loaded a group ahead), dequantized to bf16 s * (q - 8) (the twin's weight) in registers,
two wgmmas (low halves with x's first half-group, high with its second), issued before the previous group's
are waited on, so dequantizing overlaps the tensor cores."""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

# v3's dequantization, as landed (llmserve/kernels/int4_wgmma.py; call G ran this file's own copy of it)
from llmserve.kernels.int4_wgmma import dequant as _dequant_asm


@gluon.jit
def _dequant(p, s, ASYM: gl.constexpr, m):
    """bf16 weights of the codes in int32 `p`'s low (or high, pre-shifted) nibbles, float32 scale rows `s`."""
    q = (p & 15).to(gl.float32)
    if ASYM:
        w = q * s + m
    else:
        w = (q - 8.0) * s
    return w.to(gl.bfloat16)


@gluon.jit
def _group(acc, p, g, g0, n_groups, w_rows, cols, s_rows, m_rows, x_desc, x_smem, bars, off_m,
           ASYM: gl.constexpr, GROUP: gl.constexpr, STAGES: gl.constexpr, byte_l: gl.constexpr, a_l: gl.constexpr,
           ASM: gl.constexpr):
    """Group g: its weights (bytes `p`) dequantized and its two wgmmas issued; the next group's bytes loaded."""
    HALF: gl.constexpr = GROUP // 2
    p_next = gl.load(w_rows + (g0 + g + 1) * HALF, mask=(g + 1 < n_groups) & (cols[None, :] >= 0), other=0)
    s = gl.load(s_rows + g0 + g)[:, None]
    m = s
    if ASYM:
        m = gl.load(m_rows + g0 + g)[:, None]
    if not ASM:
        s = s.to(gl.float32)
        m = m.to(gl.float32)
    if ASM:
        w_lo, w_hi = _dequant_asm(gl.convert_layout(p, a_l), s, m, ASYM)
    else:
        q = gl.convert_layout(p, byte_l).to(gl.int32)
        w_lo = gl.convert_layout(_dequant(q, s, ASYM, m), a_l)
        w_hi = gl.convert_layout(_dequant(q >> 4, s, ASYM, m), a_l)
    slot = g % STAGES
    mbarrier.wait(bars.index(slot), (g // STAGES) & 1)
    xs = x_smem.index(slot)
    acc = warpgroup_mma(w_lo, xs.slice(0, HALF, dim=1).permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma(w_hi, xs.slice(HALF, HALF, dim=1).permute((1, 0)), acc, is_async=True)
    return acc, w_lo, w_hi, p_next


@gluon.jit
def _fetch_x(x_desc, x_smem, bars, off_m, g0, g, n_groups, GROUP: gl.constexpr, STAGES: gl.constexpr):
    """x's group g into its slot of the ring (the caller knows the slot's last reader finished)."""
    slot = g % STAGES
    mbarrier.expect(bars.index(slot), x_desc.block_type.nbytes, pred=g < n_groups)
    tma.async_copy_global_to_shared(x_desc, [off_m, (g0 + g) * GROUP], bars.index(slot), x_smem.index(slot),
                                    pred=g < n_groups)


@gluon.jit
def _w4wg_kernel(x_desc, w_ptr, s_ptr, m_ptr, out_ptr, M, N, K, K_SPLIT, stride_wn, stride_sn, stride_om,
                 ASYM: gl.constexpr, GROUP: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr,
                 STAGES: gl.constexpr, CONVERT_BYTES: gl.constexpr, ASM: gl.constexpr, num_warps: gl.constexpr):
    HALF: gl.constexpr = GROUP // 2
    pid_m = gl.program_id(0)  # M fastest: a W tile's row blocks run side by side (W read from DRAM once)
    pid_n = gl.program_id(1)
    pid_k = gl.program_id(2)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    load_l: gl.constexpr = gl.BlockedLayout([1, 16], [HALF // 16, 512 // HALF], [num_warps, 1], [1, 0])
    byte_l: gl.constexpr = a_l if CONVERT_BYTES or ASM else load_l
    rows_l: gl.constexpr = gl.SliceLayout(1, byte_l)

    offs_n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, load_l))
    cols = gl.arange(0, HALF, layout=gl.SliceLayout(0, load_l))
    w_rows = w_ptr + offs_n[:, None].to(gl.int64) * stride_wn + cols[None, :]
    offs_s = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=rows_l)
    s_rows = s_ptr + offs_s.to(gl.int64) * stride_sn
    m_rows = m_ptr + offs_s.to(gl.int64) * stride_sn

    x_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, GROUP], x_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)

    g0 = pid_k * (K_SPLIT // GROUP)
    n_groups = gl.minimum(K, (pid_k + 1) * K_SPLIT) // GROUP - g0
    off_m = pid_m * BLOCK_M
    gl.assume(n_groups >= 2)  # no path around the loop: one that set acc's registers trips ptxas's wgmma pipelining
    for i in gl.static_range(STAGES - 1):  # prologue: the first STAGES - 1 groups of x in flight
        _fetch_x(x_desc, x_smem, bars, off_m, g0, i, n_groups, GROUP, STAGES)

    acc = gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma)
    p = gl.load(w_rows + g0 * HALF)
    a_lo = gl.zeros((BLOCK_N, HALF), dtype=gl.bfloat16, layout=a_l)
    a_hi = gl.zeros((BLOCK_N, HALF), dtype=gl.bfloat16, layout=a_l)
    # two groups an iteration, each with its own registers: a group's operands are not rewritten while its wgmmas
    # run (one register set in a loop is, and ptxas then serializes every wgmma)
    for g in range(0, n_groups, 2):
        acc, b_lo, b_hi, p = _group(acc, p, g, g0, n_groups, w_rows, cols, s_rows, m_rows, x_desc, x_smem, bars,
                                    off_m, ASYM, GROUP, STAGES, byte_l, a_l, ASM)
        acc = warpgroup_mma_wait(num_outstanding=2, deps=(acc, a_lo, a_hi))[0]
        _fetch_x(x_desc, x_smem, bars, off_m, g0, g + STAGES - 1, n_groups, GROUP, STAGES)
        acc, a_lo, a_hi, p = _group(acc, p, g + 1, g0, n_groups, w_rows, cols, s_rows, m_rows, x_desc, x_smem,
                                    bars, off_m, ASYM, GROUP, STAGES, byte_l, a_l, ASM)
        acc = warpgroup_mma_wait(num_outstanding=2, deps=(acc, b_lo, b_hi))[0]
        _fetch_x(x_desc, x_smem, bars, off_m, g0, g + STAGES, n_groups, GROUP, STAGES)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))

    out_l: gl.constexpr = gl.BlockedLayout([4, 1], [32, 1], [1, num_warps], [0, 1])
    res = gl.convert_layout(acc, out_l)
    on = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, out_l))
    om = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, out_l))
    ptrs = out_ptr + pid_k.to(gl.int64) * M * stride_om + om[None, :].to(gl.int64) * stride_om + on[:, None]
    gl.store(ptrs, res.to(out_ptr.dtype.element_ty), mask=(om[None, :] < M) & (on[:, None] < N))


def w4wg(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None = None,
         block_m: int | None = None, block_n: int = 64, stages: int = 3, split: int = 1, warps: int = 4,
         convert_bytes: bool = False, asm: bool = True) -> torch.Tensor:
    """x [M, K] bf16 @ dequant(w)^T: [M, N]."""
    M, K = x.shape
    N = w.shape[0]
    group = K // scale.shape[1]
    bm = block_m or max(8, min(256, triton.next_power_of_2(M)))
    layout = gl.NVMMASharedLayout.get_default_for([bm, group], gl.bfloat16)
    desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [bm, group], layout)
    assert (K // group) % 2 == 0, "the kernel takes groups two at a time"
    k_split = triton.cdiv(triton.cdiv(K, split), 2 * group) * 2 * group
    split = triton.cdiv(K, k_split)
    out = torch.empty(split, M, N, dtype=x.dtype if split == 1 else torch.float32, device=x.device)
    grid = (triton.cdiv(M, bm), triton.cdiv(N, block_n), split)
    _w4wg_kernel[grid](desc, w, scale, minimum if minimum is not None else scale, out, M, N, K, k_split,
                       w.stride(0), scale.stride(0), out.stride(1), ASYM=minimum is not None, GROUP=group,
                       BLOCK_N=block_n, BLOCK_M=bm, STAGES=stages, CONVERT_BYTES=convert_bytes, ASM=asm,
                       num_warps=warps)
    return out[0] if split == 1 else out.sum(0).to(x.dtype)
