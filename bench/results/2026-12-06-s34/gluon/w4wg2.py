"""Prototype v2 of the Gluon W4A16 matmul (w4wg.py's structure): W's bytes and x both by TMA into a ring of STAGES
groups, each thread reading 16 contiguous bytes of a row from shared memory (one LDS.128) and dequantizing them by
inline PTX four at a time. A thread's bytes are not the k-slots its wgmma fragment holds, so the fragment is
relabelled (reshape + permute of the k index: no data moves) and x's columns are permuted to match, within each
64-column half group: x_perm[16t + 8o + 2c + p] = x[16c + 4t + 2o + p] (`permute_x`)."""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from llmserve.kernels.int4_wgmma import dequant as _dequant_asm


@gluon.constexpr_function
def byte_layout(block_n, num_warps):
    """[BLOCK_N, 64] bytes: a thread holds 16 contiguous bytes of rows r and r + 8 (quad lane c: bytes 16c..16c+15)."""
    warps = [[16 << i, 0] for i in range((num_warps - 1).bit_length())]
    assert block_n == 16 * num_warps
    return gl.DistributedLinearLayout(reg_bases=[[0, 1], [0, 2], [0, 4], [0, 8], [8, 0]],
                                      lane_bases=[[0, 16], [0, 32], [1, 0], [2, 0], [4, 0]],
                                      warp_bases=warps, block_bases=[], shape=[block_n, 64])


@gluon.jit
def _relabel(v, a_l: gl.constexpr):
    """[BN, 64] indexed by byte i = 16c + 4t + 2o + p -> indexed by fragment slot 16t + 8o + 2c + p, in a_l."""
    BN: gl.constexpr = v.shape[0]
    v = gl.reshape(v, [BN, 4, 4, 2, 2])
    v = gl.permute(v, [0, 2, 3, 1, 4])
    v = gl.reshape(v, [BN, 64])
    return gl.convert_layout(v, a_l, assert_trivial=True)


@gluon.jit
def _group2(acc, g, g0, n_groups, s_rows, m_rows, x_smem, w_smem, bars, ASYM: gl.constexpr, GROUP: gl.constexpr,
            STAGES: gl.constexpr, byte_l: gl.constexpr, a_l: gl.constexpr, RELABEL: gl.constexpr):
    HALF: gl.constexpr = GROUP // 2
    gl.static_assert(HALF == 64)
    s = gl.load(s_rows + g0 + g)[:, None]
    m = s
    if ASYM:
        m = gl.load(m_rows + g0 + g)[:, None]
    slot = g % STAGES
    mbarrier.wait(bars.index(slot), (g // STAGES) & 1)
    q = w_smem.index(slot).load(byte_l)
    lo, hi = _dequant_asm(q, s, m, ASYM)
    if RELABEL:
        w_lo = _relabel(lo, a_l)
        w_hi = _relabel(hi, a_l)
    else:  # bytes read in the fragment's own layout (2 a load): x in its own order
        w_lo = lo
        w_hi = hi
    xs = x_smem.index(slot)
    acc = warpgroup_mma(w_lo, xs.slice(0, HALF, dim=1).permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma(w_hi, xs.slice(HALF, HALF, dim=1).permute((1, 0)), acc, is_async=True)
    return acc, w_lo, w_hi


@gluon.jit
def _fetch(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, g0, g, n_groups, GROUP: gl.constexpr,
           STAGES: gl.constexpr):
    """Group g's x and W tiles into their slot of the ring (the caller knows the slot's last readers finished)."""
    slot = g % STAGES
    bar = bars.index(slot)
    ok = g < n_groups
    mbarrier.expect(bar, x_desc.block_type.nbytes + w_desc.block_type.nbytes, pred=ok)
    tma.async_copy_global_to_shared(x_desc, [off_m, (g0 + g) * GROUP], bar, x_smem.index(slot), pred=ok)
    tma.async_copy_global_to_shared(w_desc, [off_n, (g0 + g) * (GROUP // 2)], bar, w_smem.index(slot), pred=ok)


@gluon.jit
def _w4wg2_kernel(x_desc, w_desc, s_ptr, m_ptr, out_ptr, M, N, K, K_SPLIT, stride_sn, stride_om,
                  ASYM: gl.constexpr, GROUP: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr,
                  STAGES: gl.constexpr, RELABEL: gl.constexpr, num_warps: gl.constexpr):
    pid_m = gl.program_id(0)
    pid_n = gl.program_id(1)
    pid_k = gl.program_id(2)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    byte_l: gl.constexpr = byte_layout(BLOCK_N, num_warps) if RELABEL else a_l
    off_n = pid_n * BLOCK_N
    off_m = pid_m * BLOCK_M
    offs_s = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, byte_l))
    s_rows = s_ptr + offs_s.to(gl.int64) * stride_sn
    m_rows = m_ptr + offs_s.to(gl.int64) * stride_sn

    x_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, GROUP], x_desc.layout)
    w_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, GROUP // 2], w_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    g0 = pid_k * (K_SPLIT // GROUP)
    n_groups = gl.minimum(K, (pid_k + 1) * K_SPLIT) // GROUP - g0
    gl.assume(n_groups >= 2)  # no path around the loop: one that set acc's registers trips ptxas's wgmma pipelining
    for i in gl.static_range(STAGES - 1):
        _fetch(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, g0, i, n_groups, GROUP, STAGES)

    acc = gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma)
    a_lo = gl.zeros((BLOCK_N, GROUP // 2), dtype=gl.bfloat16, layout=a_l)
    a_hi = gl.zeros((BLOCK_N, GROUP // 2), dtype=gl.bfloat16, layout=a_l)
    for g in range(0, n_groups, 2):  # two groups' operands alternating (w4wg.py)
        acc, b_lo, b_hi = _group2(acc, g, g0, n_groups, s_rows, m_rows, x_smem, w_smem, bars, ASYM, GROUP, STAGES,
                                  byte_l, a_l, RELABEL)
        acc = warpgroup_mma_wait(num_outstanding=2, deps=(acc, a_lo, a_hi))[0]
        _fetch(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, g0, g + STAGES - 1, n_groups, GROUP, STAGES)
        acc, a_lo, a_hi = _group2(acc, g + 1, g0, n_groups, s_rows, m_rows, x_smem, w_smem, bars, ASYM, GROUP,
                                  STAGES, byte_l, a_l, RELABEL)
        acc = warpgroup_mma_wait(num_outstanding=2, deps=(acc, b_lo, b_hi))[0]
        _fetch(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, g0, g + STAGES, n_groups, GROUP, STAGES)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))

    out_l: gl.constexpr = gl.BlockedLayout([4, 1], [32, 1], [1, num_warps], [0, 1])
    res = gl.convert_layout(acc, out_l)
    on = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, out_l))
    om = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, out_l))
    ptrs = out_ptr + pid_k.to(gl.int64) * M * stride_om + om[None, :].to(gl.int64) * stride_om + on[:, None]
    gl.store(ptrs, res.to(out_ptr.dtype.element_ty), mask=(om[None, :] < M) & (on[:, None] < N))


def x_permutation(device) -> torch.Tensor:
    """perm[slot] = byte index: x_perm[:, slot] = x[:, perm[slot]] within each 64 columns."""
    t, o, c, p = torch.meshgrid(torch.arange(4), torch.arange(2), torch.arange(4), torch.arange(2), indexing="ij")
    return (16 * c + 4 * t + 2 * o + p).reshape(64).to(device)


def permute_x(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    M, K = x.shape
    return x.view(M, K // 64, 64)[:, :, perm].reshape(M, K)


_PERM: dict = {}


def w4wg2(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None = None,
          block_m: int | None = None, block_n: int = 64, stages: int = 4, split: int = 1, warps: int = 4,
          x_permuted: bool = False, relabel: bool = True) -> torch.Tensor:
    """x [M, K] bf16 @ dequant(w)^T: [M, N] (g128 only). x_permuted: x already in the kernel's column order.
    relabel=False: W's bytes read from shared memory in the fragment's layout, x as it is."""
    M, K = x.shape
    N = w.shape[0]
    group = K // scale.shape[1]
    assert group == 128 and (K // group) % 2 == 0
    if relabel and not x_permuted:
        perm = _PERM.setdefault(x.device, x_permutation(x.device))
        x = permute_x(x, perm)
    bm = block_m or max(8, min(256, triton.next_power_of_2(M)))
    x_desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [bm, group],
                              gl.NVMMASharedLayout.get_default_for([bm, group], gl.bfloat16))
    w_desc = TensorDescriptor(w, list(w.shape), list(w.stride()), [block_n, group // 2],
                              gl.NVMMASharedLayout.get_default_for([block_n, group // 2], gl.uint8))
    k_split = triton.cdiv(triton.cdiv(K, split), 2 * group) * 2 * group
    split = triton.cdiv(K, k_split)
    out = torch.empty(split, M, N, dtype=x.dtype if split == 1 else torch.float32, device=x.device)
    grid = (triton.cdiv(M, bm), triton.cdiv(N, block_n), split)
    _w4wg2_kernel[grid](x_desc, w_desc, scale, minimum if minimum is not None else scale, out, M, N, K, k_split,
                        scale.stride(0), out.stride(1), ASYM=minimum is not None, GROUP=group, BLOCK_N=block_n,
                        BLOCK_M=bm, STAGES=stages, RELABEL=relabel, num_warps=warps)
    return out[0] if split == 1 else out.sum(0).to(x.dtype)
