"""Prototype: int4_wgmma.py's kernel warp-specialized. One producer warp issues the TMA copies into a ring of STAGES
groups (waiting on each slot's `empty` barrier); the consumer warpgroup(s) (the default partition) wait on `ready`,
dequantize and issue the wgmmas, and free a slot once its group's wgmmas are done. Against the landed kernel: no
CTA-wide bar.sync around each TMA issue in the consumers' loop. W's bytes read as 16-bit words, as int4_wgmma.py reads
them. Same arguments as int4_wgmma.w4wgmma."""
import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from llmserve.kernels.int4_wgmma import dequant, launch, store, words, words_layout


@gluon.jit
def _producer(x_desc, w_desc, x_smem, w_smem, ready, empty, off_m, off_n, g0, n_fetch, GROUP: gl.constexpr,
              STAGES: gl.constexpr):
    for g in range(n_fetch):
        slot = g % STAGES
        mbarrier.wait(empty.index(slot), ((g // STAGES) & 1) ^ 1)
        bar = ready.index(slot)
        mbarrier.expect(bar, x_desc.block_type.nbytes + w_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(x_desc, [off_m, (g0 + g) * GROUP], bar, x_smem.index(slot))
        tma.async_copy_global_to_shared(w_desc, [off_n, (g0 + g) * (GROUP // 2)], bar, w_smem.index(slot))


@gluon.jit
def _issue(acc, g, g0, n_groups, s_rows, m_rows, row_ok, x_smem, w_smem, ready, ASYM: gl.constexpr,
           GROUP: gl.constexpr, STAGES: gl.constexpr, a_l: gl.constexpr, SWIZZLE: gl.constexpr):
    HALF: gl.constexpr = GROUP // 2
    ok = row_ok & (g < n_groups)
    s = gl.load(s_rows + g0 + g, mask=ok, other=0.0)
    m = s
    if ASYM:
        m = gl.load(m_rows + g0 + g, mask=ok, other=0.0)
    slot = g % STAGES
    mbarrier.wait(ready.index(slot), (g // STAGES) & 1)
    w_l: gl.constexpr = words_layout(gl.to_linear_layout(a_l, [w_smem.shape[1], HALF]))
    r_l: gl.constexpr = gl.SliceLayout(1, w_l)
    q = words(w_smem.index(slot), SWIZZLE).load(w_l)
    w_lo, w_hi = dequant(q, gl.convert_layout(s, r_l)[:, None], gl.convert_layout(m, r_l)[:, None], ASYM, a_l)
    xs = x_smem.index(slot)
    acc = warpgroup_mma(w_lo, xs.slice(0, HALF, dim=1).permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma(w_hi, xs.slice(HALF, HALF, dim=1).permute((1, 0)), acc, is_async=True)
    return acc, w_lo, w_hi


@gluon.jit
def _release(empty, g, STAGES: gl.constexpr):
    """Group g's slot back to the producer (its wgmmas are done: the caller waited); none for g = -1 (an arrive there
    would free a slot a round early)."""
    fence_async_shared()
    mbarrier.arrive(empty.index((g + STAGES) % STAGES), count=1, pred=g >= 0)


@gluon.jit
def _consumer(x_smem, w_smem, ready, empty, s_rows, m_rows, row_ok, g0, n_groups, ASYM: gl.constexpr,
              GROUP: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr,
              SWIZZLE: gl.constexpr, num_warps: gl.constexpr):
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    gl.assume(n_groups >= 1)
    acc = gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma)
    a_lo = gl.zeros((BLOCK_N, GROUP // 2), dtype=gl.bfloat16, layout=a_l)
    a_hi = gl.zeros((BLOCK_N, GROUP // 2), dtype=gl.bfloat16, layout=a_l)
    for g in range(0, n_groups, 2):
        acc, b_lo, b_hi = _issue(acc, g, g0, n_groups, s_rows, m_rows, row_ok, x_smem, w_smem, ready, ASYM, GROUP,
                                 STAGES, a_l, SWIZZLE)
        acc = warpgroup_mma_wait(num_outstanding=2, deps=(acc, a_lo, a_hi))[0]
        _release(empty, g - 1, STAGES)
        acc, a_lo, a_hi = _issue(acc, g + 1, g0, n_groups, s_rows, m_rows, row_ok, x_smem, w_smem, ready, ASYM,
                                 GROUP, STAGES, a_l, SWIZZLE)
        acc = warpgroup_mma_wait(num_outstanding=2, deps=(acc, b_lo, b_hi))[0]
        _release(empty, g, STAGES)
    return (warpgroup_mma_wait(num_outstanding=0, deps=(acc, )), )  # a tuple: warp_specialize iterates it


@gluon.jit
def _w4ws_kernel(x_desc, w_desc, s_ptr, m_ptr, b_ptr, out_ptr, M, N, K, K_SPLIT, stride_sn, stride_om,
                 ASYM: gl.constexpr, HAS_BIAS: gl.constexpr, GROUP: gl.constexpr, BLOCK_N: gl.constexpr,
                 BLOCK_M: gl.constexpr, STAGES: gl.constexpr, SWIZZLE: gl.constexpr, num_warps: gl.constexpr):
    pid_m = gl.program_id(0)
    pid_n = gl.program_id(1)
    pid_k = gl.program_id(2)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    off_n = pid_n * BLOCK_N
    off_m = pid_m * BLOCK_M
    rows = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, a_l))
    s_rows = s_ptr + rows.to(gl.int64) * stride_sn
    m_rows = m_ptr + rows.to(gl.int64) * stride_sn
    x_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, GROUP], x_desc.layout)
    w_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, GROUP // 2], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    g0 = pid_k * (K_SPLIT // GROUP)
    n_groups = gl.minimum(K, (pid_k + 1) * K_SPLIT) // GROUP - g0
    n_fetch = n_groups + (n_groups % 2)
    acc = gl.warp_specialize([
        (_consumer, (x_smem, w_smem, ready, empty, s_rows, m_rows, rows < N, g0, n_groups, ASYM, GROUP, BLOCK_N,
                     BLOCK_M, STAGES, SWIZZLE, num_warps)),
        (_producer, (x_desc, w_desc, x_smem, w_smem, ready, empty, off_m, off_n, g0, n_fetch, GROUP, STAGES)),
    ], [1], [24])[0]
    store(acc, b_ptr, out_ptr, off_m, off_n, pid_k, M, N, stride_om, HAS_BIAS, BLOCK_N, BLOCK_M, num_warps)


def w4ws(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
         bias: torch.Tensor | None, sizes: tuple[int, int, int], config=None, maxnreg: int | None = None):
    return launch(_w4ws_kernel, x, w, scale, minimum, bias, sizes, config, **({"maxnreg": maxnreg} if maxnreg else {}))
