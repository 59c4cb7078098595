"""Prototype: int4_wgmma.py's kernel with W's bytes read from shared memory as uint16 (the two adjacent bytes each
fragment register pair needs), so a dequantization's four input bytes are two 16-bit loads and one pack instead of
two loads, four byte extractions and three packs (SASS: 7 PRMT per 4 bytes before). The inline PTX returns each
bf16 pair as an int32 and the pairs are split, joined and reshaped to the wgmma operand layout (the same registers:
LLVM folds the split and the repack). Same arguments and launch shapes as int4_wgmma.w4wgmma."""
import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from llmserve.kernels.group_tiles import k_slices, summed
from llmserve.kernels.int4_wgmma import _DEQ_ASM, _fetch, _pairs, _store, wgmma_config

# int4_wgmma's dequantization with pack=2 over 16-bit inputs: $4 the bytes (two u16), $5-$6 s_hi (rows r, r + 8),
# $7-$8 s_lo, $9-$10 m.
_SYM_LOW = """mul.rn.bf16x2 l0, c0, $7;
mul.rn.bf16x2 l1, c1, $8;
mul.rn.bf16x2 l2, c2, $7;
mul.rn.bf16x2 l3, c3, $8;"""
_ASYM_LOW = """fma.rn.bf16x2 l0, c0, $7, $9;
fma.rn.bf16x2 l1, c1, $8, $10;
fma.rn.bf16x2 l2, c2, $7, $9;
fma.rn.bf16x2 l3, c3, $8, $10;"""
_BASE = _DEQ_ASM.replace("$5, l0", "$5, l0").replace("c1, $7, l1", "c1, $6, l1").replace("c3, $7, l3", "c3, $6, l3")
SYM16: gl.constexpr = gl.constexpr(_BASE.replace("BIAS", "0x43084308").replace("LOW", _SYM_LOW))
ASYM16: gl.constexpr = gl.constexpr(_BASE.replace("BIAS", "0x43004300").replace("LOW", _ASYM_LOW))


@gluon.constexpr_function
def halved(ll):
    """The layout of a uint8 tile read as uint16: the register basis of adjacent bytes dropped, k halved."""
    def half(bases):
        return [[b[0], b[1] // 2] for b in bases if b != [0, 1]]
    return gl.DistributedLinearLayout(half(ll.reg_bases), half(ll.lane_bases), half(ll.warp_bases), ll.block_bases,
                                      [ll.shape[0], ll.shape[1] // 2])


@gluon.jit
def _split(v32, a_l: gl.constexpr):
    """int32 bf16 pairs [rows, k / 2] -> bf16 [rows, k] in a_l (the pair's low half first)."""
    lo = (v32 & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True)
    hi = (v32 >> 16).to(gl.int16).to(gl.bfloat16, bitcast=True)
    j = gl.join(lo, hi)
    return gl.convert_layout(j.reshape([v32.shape[0], 2 * v32.shape[1]]), a_l)


@gluon.jit
def dequant16(q, s, m, ASYM: gl.constexpr, a_l: gl.constexpr):
    s32 = s.to(gl.float32)
    hi = s32.to(gl.bfloat16)
    s_hi = gl.broadcast(_pairs(hi), q)[0]
    s_lo = gl.broadcast(_pairs(s32 - hi.to(gl.float32)), q)[0]
    if ASYM:
        m2 = gl.broadcast(_pairs(m), q)[0]
        lo, hi = gl.inline_asm_elementwise(ASYM16, "=r,=r,=r,=r,r,r,r,r,r,r,r", [q, s_hi, s_lo, m2],
                                           dtype=(gl.int32, gl.int32), is_pure=True, pack=2)
    else:
        lo, hi = gl.inline_asm_elementwise(SYM16, "=r,=r,=r,=r,r,r,r,r,r", [q, s_hi, s_lo],
                                           dtype=(gl.int32, gl.int32), is_pure=True, pack=2)
    return _split(lo, a_l), _split(hi, a_l)


@gluon.jit
def _group(acc, g, g0, n_groups, s_rows, m_rows, row_ok, x_smem, w16, bars, ASYM: gl.constexpr,
           GROUP: gl.constexpr, STAGES: gl.constexpr, a_l: gl.constexpr, l16: gl.constexpr):
    HALF: gl.constexpr = GROUP // 2
    ok = row_ok & (g < n_groups)
    s = gl.load(s_rows + g0 + g, mask=ok, other=0.0)[:, None]
    m = s
    if ASYM:
        m = gl.load(m_rows + g0 + g, mask=ok, other=0.0)[:, None]
    slot = g % STAGES
    mbarrier.wait(bars.index(slot), (g // STAGES) & 1)
    w_lo, w_hi = dequant16(w16.index(slot).load(l16), s, m, ASYM, a_l)
    xs = x_smem.index(slot)
    acc = warpgroup_mma(w_lo, xs.slice(0, HALF, dim=1).permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma(w_hi, xs.slice(HALF, HALF, dim=1).permute((1, 0)), acc, is_async=True)
    return acc, w_lo, w_hi


@gluon.jit
def _w4u16_kernel(x_desc, w_desc, s_ptr, m_ptr, b_ptr, out_ptr, M, N, K, K_SPLIT, stride_sn, stride_om,
                  ASYM: gl.constexpr, HAS_BIAS: gl.constexpr, GROUP: gl.constexpr, BLOCK_N: gl.constexpr,
                  BLOCK_M: gl.constexpr, STAGES: gl.constexpr, SWIZZLE: gl.constexpr, num_warps: gl.constexpr):
    pid_m = gl.program_id(0)
    pid_n = gl.program_id(1)
    pid_k = gl.program_id(2)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    l16: gl.constexpr = halved(gl.to_linear_layout(a_l, [BLOCK_N, GROUP // 2]))
    off_n = pid_n * BLOCK_N
    off_m = pid_m * BLOCK_M
    rows = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, l16))
    s_rows = s_ptr + rows.to(gl.int64) * stride_sn
    m_rows = m_ptr + rows.to(gl.int64) * stride_sn
    x_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, GROUP], x_desc.layout)
    w_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, GROUP // 2], w_desc.layout)
    w16 = w_smem._reinterpret(gl.uint16, [STAGES, BLOCK_N, GROUP // 4],
                              gl.NVMMASharedLayout(swizzle_byte_width=SWIZZLE, element_bitwidth=16, rank=2))
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    g0 = pid_k * (K_SPLIT // GROUP)
    n_groups = gl.minimum(K, (pid_k + 1) * K_SPLIT) // GROUP - g0
    n_fetch = n_groups + (n_groups % 2)
    gl.assume(n_groups >= 1)
    for i in gl.static_range(STAGES - 1):
        _fetch(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, g0, i, n_fetch, GROUP, STAGES)

    acc = gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma)
    a_lo = gl.zeros((BLOCK_N, GROUP // 2), dtype=gl.bfloat16, layout=a_l)
    a_hi = gl.zeros((BLOCK_N, GROUP // 2), dtype=gl.bfloat16, layout=a_l)
    for g in range(0, n_groups, 2):
        acc, b_lo, b_hi = _group(acc, g, g0, n_groups, s_rows, m_rows, rows < N, x_smem, w16, bars, ASYM,
                                 GROUP, STAGES, a_l, l16)
        acc = warpgroup_mma_wait(num_outstanding=2, deps=(acc, a_lo, a_hi))[0]
        _fetch(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, g0, g + STAGES - 1, n_fetch, GROUP, STAGES)
        acc, a_lo, a_hi = _group(acc, g + 1, g0, n_groups, s_rows, m_rows, rows < N, x_smem, w16, bars, ASYM,
                                 GROUP, STAGES, a_l, l16)
        acc = warpgroup_mma_wait(num_outstanding=2, deps=(acc, b_lo, b_hi))[0]
        _fetch(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, g0, g + STAGES, n_fetch, GROUP, STAGES)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))
    _store(acc, b_ptr, out_ptr, off_m, off_n, pid_k, M, N, stride_om, HAS_BIAS, BLOCK_N, BLOCK_M, num_warps)


def w4u16(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
          bias: torch.Tensor | None, sizes: tuple[int, int, int], config=None) -> torch.Tensor:
    M = x.shape[0]
    N, K, group = sizes
    bm, bn, warps, stages, split = config or wgmma_config(M, N, K)
    x_desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [bm, group],
                              gl.NVMMASharedLayout.get_default_for([bm, group], gl.bfloat16))
    w_layout = gl.NVMMASharedLayout.get_default_for([bn, group // 2], gl.uint8)
    w_desc = TensorDescriptor(w, list(w.shape), list(w.stride()), [bn, group // 2], w_layout)
    k_split, out = k_slices(x, N, K, split, group)
    _w4u16_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn), out.shape[0])](
        x_desc, w_desc, scale, minimum if minimum is not None else scale, bias if bias is not None else scale, out,
        M, N, K, k_split, scale.stride(0), out.stride(1), ASYM=minimum is not None, HAS_BIAS=bias is not None,
        GROUP=group, BLOCK_N=bn, BLOCK_M=bm, STAGES=stages, SWIZZLE=w_layout.swizzle_byte_width, num_warps=warps)
    return summed(out, x.dtype)
