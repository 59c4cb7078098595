"""`y = x @ W^T` for int4's group weights (llmserve/kernels/int4.py's layout) on Hopper, in Gluon (Triton's lower
level: layouts, shared memory, wgmma and its waits written out), for bf16 activations and 2+ rows.

Why not Triton's `tl.dot`: Triton waits for each wgmma whose operand the kernel computes (`warp_group_dot_wait
pendings = 0`), so dequantizing and the tensor cores take turns (docs/performance.md, thirty-third session). Here:
- out^T [N, M] = W [N, K] @ x^T: W is the register operand of asynchronous wgmma (64 rows a warpgroup, one or two
  warpgroups a program), x (M as the wgmma's N, 8 to 256 rows a block) the shared-memory one.
- W's bytes and x arrive by TMA into a ring of STAGES groups; each thread reads its bytes from shared memory in the
  wgmma fragment's own layout, as 16-bit words (read as bytes, each was unpacked and repacked: 7 PRMTs a word pair),
  and dequantizes four at a time by inline PTX (`_DEQ_ASM`) to the torch twin's bf16 weight: bf16(float32 s * (q -
  8)) bit for bit for 16-bit scales (asymmetric: s * q + m, m rounded to bf16 first).
- A group's two wgmmas (its low-nibble inputs, then its high ones) are waited on only after the next group's are
  issued; two groups' operands alternate in the loop, as ptxas serializes every wgmma of a kernel whose in-flight
  operand registers are rewritten (warning C7515).
K may be split (group_tiles.k_slices: float32 partials summed in order, as int4.launch_mm does).
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from llmserve.kernels import NUM_SMS
from llmserve.kernels.group_tiles import k_slices, summed

# Four bytes of the fragment (two 16-bit words: one row's adjacent inputs, the same inputs 8 rows on) into bf16
# pairs: prmt spreads two bytes into a word's halves, a LOP3 ORs their nibbles into bf16 128.0 (128 + code, exact), a
# paired subtraction leaves c = code - 8 (sym; the code for asym). The scale is s_hi + s_lo in bf16 (a float16's 11
# bits in 8 + 3, exactly), c * s_lo is exact, so fma(c, s_hi, c * s_lo) rounds the exact product once, as the twin's
# float32 product rounded to bf16 (asym: m joins the inner fma). $0-$1 the low nibbles' weights, $2-$3 the high;
# $4 the bytes; $5-$6 s_hi as (s, s) pairs of the two rows, $7-$8 s_lo, $9-$10 m.
_DEQ_ASM = """{
.reg .b32 t0, t1, u0, u1, c0, c1, c2, c3, nib, mag, bias, l0, l1, l2, l3;
mov.b32 nib, 0x000F000F;
mov.b32 mag, 0x43004300;
mov.b32 bias, BIAS;
prmt.b32 t0, $4, 0, 0x4140;
prmt.b32 t1, $4, 0, 0x4342;
shr.u32 u0, t0, 4;
shr.u32 u1, t1, 4;
lop3.b32 c0, t0, nib, mag, 0xEA;
lop3.b32 c1, t1, nib, mag, 0xEA;
lop3.b32 c2, u0, nib, mag, 0xEA;
lop3.b32 c3, u1, nib, mag, 0xEA;
sub.rn.bf16x2 c0, c0, bias;
sub.rn.bf16x2 c1, c1, bias;
sub.rn.bf16x2 c2, c2, bias;
sub.rn.bf16x2 c3, c3, bias;
LOW
fma.rn.bf16x2 $0, c0, $5, l0;
fma.rn.bf16x2 $1, c1, $6, l1;
fma.rn.bf16x2 $2, c2, $5, l2;
fma.rn.bf16x2 $3, c3, $6, l3;
}"""
_SYM_LOW = """mul.rn.bf16x2 l0, c0, $7;
mul.rn.bf16x2 l1, c1, $8;
mul.rn.bf16x2 l2, c2, $7;
mul.rn.bf16x2 l3, c3, $8;"""
_ASYM_LOW = """fma.rn.bf16x2 l0, c0, $7, $9;
fma.rn.bf16x2 l1, c1, $8, $10;
fma.rn.bf16x2 l2, c2, $7, $9;
fma.rn.bf16x2 l3, c3, $8, $10;"""
SYM_ASM: gl.constexpr = gl.constexpr(_DEQ_ASM.replace("BIAS", "0x43084308").replace("LOW", _SYM_LOW))
ASYM_ASM: gl.constexpr = gl.constexpr(_DEQ_ASM.replace("BIAS", "0x43004300").replace("LOW", _ASYM_LOW))


@gluon.constexpr_function
def words_layout(ll):
    """The layout of the fragment's bytes (`ll`, a linear layout of [rows, bytes]) read as 16-bit words: the register
    basis of a word's second byte dropped, k halved."""
    def half(bases):
        return [[b[0], b[1] // 2] for b in bases if b != [0, 1]]
    return gl.DistributedLinearLayout(half(ll.reg_bases), half(ll.lane_bases), half(ll.warp_bases), ll.block_bases,
                                      [ll.shape[0], ll.shape[1] // 2])


@gluon.constexpr_function
def _word_shape(shape):
    return [*shape[:-1], shape[-1] // 2]


@gluon.jit
def words(w_smem, SWIZZLE: gl.constexpr):
    """W's byte tiles (the last dimension bytes) in shared memory as 16-bit words, swizzled as TMA wrote them."""
    return w_smem._reinterpret(gl.uint16, _word_shape(w_smem.shape),
                               gl.NVMMASharedLayout(swizzle_byte_width=SWIZZLE, element_bitwidth=16, rank=2))


@gluon.jit
def _pairs(v):
    """Values as bf16 in int32 (v, v): one register a paired operand."""
    b = v.to(gl.bfloat16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    return b | (b << 16)


@gluon.jit
def _unpaired(v, a_l: gl.constexpr):
    """bf16 pairs as int32 [rows, k / 2] -> bf16 [rows, k] in a_l, the low half first (the same registers: LLVM folds
    the split and the operand's repacking)."""
    lo = (v & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True)
    hi = (v >> 16).to(gl.int16).to(gl.bfloat16, bitcast=True)
    return gl.convert_layout(gl.join(lo, hi).reshape([v.shape[0], 2 * v.shape[1]]), a_l)


@gluon.jit
def dequant(q, s, m, ASYM: gl.constexpr, a_l: gl.constexpr):
    """(low, high) nibbles of the tile q (uint16 words of two bytes, `words_layout`) as bf16 weights in a_l; s, m:
    [rows, 1] in q's layout, any float dtype."""
    s32 = s.to(gl.float32)
    hi = s32.to(gl.bfloat16)
    s_hi = gl.broadcast(_pairs(hi), q)[0]
    s_lo = gl.broadcast(_pairs(s32 - hi.to(gl.float32)), q)[0]
    if ASYM:
        m2 = gl.broadcast(_pairs(m), q)[0]
        lo, hi = gl.inline_asm_elementwise(ASYM_ASM, "=r,=r,=r,=r,r,r,r,r,r,r,r", [q, s_hi, s_lo, m2],
                                           dtype=(gl.int32, gl.int32), is_pure=True, pack=2)
    else:
        lo, hi = gl.inline_asm_elementwise(SYM_ASM, "=r,=r,=r,=r,r,r,r,r,r", [q, s_hi, s_lo],
                                           dtype=(gl.int32, gl.int32), is_pure=True, pack=2)
    return _unpaired(lo, a_l), _unpaired(hi, a_l)


@gluon.jit
def _fetch(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, g0, g, n_fetch, GROUP: gl.constexpr,
           STAGES: gl.constexpr):
    """Group g's x and W tiles into their slot of the ring (the caller knows the slot's last readers finished).
    A group past K (an odd count's pair) is read all the same: TMA fills it with zeros."""
    slot = g % STAGES
    bar = bars.index(slot)
    ok = g < n_fetch
    mbarrier.expect(bar, x_desc.block_type.nbytes + w_desc.block_type.nbytes, pred=ok)
    tma.async_copy_global_to_shared(x_desc, [off_m, (g0 + g) * GROUP], bar, x_smem.index(slot), pred=ok)
    tma.async_copy_global_to_shared(w_desc, [off_n, (g0 + g) * (GROUP // 2)], bar, w_smem.index(slot), pred=ok)


@gluon.jit
def _group(acc, g, g0, n_groups, s_rows, m_rows, row_ok, x_smem, w_words, bars, ASYM: gl.constexpr,
           GROUP: gl.constexpr, STAGES: gl.constexpr, a_l: gl.constexpr, w_l: gl.constexpr):
    """Group g dequantized and its two wgmmas issued; its scales are zero past this program's groups (the weights
    of an odd count's extra group are then 0)."""
    HALF: gl.constexpr = GROUP // 2
    ok = row_ok & (g < n_groups)
    s = gl.load(s_rows + g0 + g, mask=ok, other=0.0)[:, None]
    m = s
    if ASYM:
        m = gl.load(m_rows + g0 + g, mask=ok, other=0.0)[:, None]
    slot = g % STAGES
    mbarrier.wait(bars.index(slot), (g // STAGES) & 1)
    w_lo, w_hi = dequant(w_words.index(slot).load(w_l), s, m, ASYM, a_l)
    xs = x_smem.index(slot)
    acc = warpgroup_mma(w_lo, xs.slice(0, HALF, dim=1).permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma(w_hi, xs.slice(HALF, HALF, dim=1).permute((1, 0)), acc, is_async=True)
    return acc, w_lo, w_hi


@gluon.jit
def _w4wgmma_kernel(x_desc, w_desc, s_ptr, m_ptr, b_ptr, out_ptr, M, N, K, K_SPLIT, stride_sn, stride_om,
                    ASYM: gl.constexpr, HAS_BIAS: gl.constexpr, GROUP: gl.constexpr, BLOCK_N: gl.constexpr,
                    BLOCK_M: gl.constexpr, STAGES: gl.constexpr, SWIZZLE: gl.constexpr, num_warps: gl.constexpr):
    pid_m = gl.program_id(0)  # M fastest: a W tile's row blocks run side by side (W read from DRAM once)
    pid_n = gl.program_id(1)
    pid_k = gl.program_id(2)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    w_l: gl.constexpr = words_layout(gl.to_linear_layout(a_l, [BLOCK_N, GROUP // 2]))
    off_n = pid_n * BLOCK_N
    off_m = pid_m * BLOCK_M
    rows = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, w_l))
    s_rows = s_ptr + rows.to(gl.int64) * stride_sn
    m_rows = m_ptr + rows.to(gl.int64) * stride_sn
    x_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, GROUP], x_desc.layout)
    w_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, GROUP // 2], w_desc.layout)
    w_words = words(w_smem, SWIZZLE)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    g0 = pid_k * (K_SPLIT // GROUP)
    n_groups = gl.minimum(K, (pid_k + 1) * K_SPLIT) // GROUP - g0
    n_fetch = n_groups + (n_groups % 2)
    gl.assume(n_groups >= 1)  # no path around the loop: one that set acc's registers trips ptxas's wgmma pipelining
    for i in gl.static_range(STAGES - 1):
        _fetch(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, g0, i, n_fetch, GROUP, STAGES)

    acc = gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma)
    a_lo = gl.zeros((BLOCK_N, GROUP // 2), dtype=gl.bfloat16, layout=a_l)
    a_hi = gl.zeros((BLOCK_N, GROUP // 2), dtype=gl.bfloat16, layout=a_l)
    for g in range(0, n_groups, 2):
        acc, b_lo, b_hi = _group(acc, g, g0, n_groups, s_rows, m_rows, rows < N, x_smem, w_words, bars, ASYM,
                                 GROUP, STAGES, a_l, w_l)
        acc = warpgroup_mma_wait(num_outstanding=2, deps=(acc, a_lo, a_hi))[0]  # group g - 1 done: its slot free
        _fetch(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, g0, g + STAGES - 1, n_fetch, GROUP, STAGES)
        acc, a_lo, a_hi = _group(acc, g + 1, g0, n_groups, s_rows, m_rows, rows < N, x_smem, w_words, bars, ASYM,
                                 GROUP, STAGES, a_l, w_l)
        acc = warpgroup_mma_wait(num_outstanding=2, deps=(acc, b_lo, b_hi))[0]
        _fetch(x_desc, w_desc, x_smem, w_smem, bars, off_m, off_n, g0, g + STAGES, n_fetch, GROUP, STAGES)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))
    store(acc, b_ptr, out_ptr, off_m, off_n, pid_k, M, N, stride_om, HAS_BIAS, BLOCK_N, BLOCK_M, num_warps)


@gluon.jit
def store(acc, b_ptr, out_ptr, off_m, off_n, pid_k, M, N, stride_om, HAS_BIAS: gl.constexpr, BLOCK_N: gl.constexpr,
           BLOCK_M: gl.constexpr, num_warps: gl.constexpr):
    """acc [BLOCK_N, BLOCK_M] to out[pid_k] [M, N] (N contiguous), plus the bias in the first K slice's."""
    out_l: gl.constexpr = gl.BlockedLayout([4, 1], [32, 1], [1, num_warps], [0, 1])
    res = gl.convert_layout(acc, out_l)
    on = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, out_l))
    om = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, out_l))
    if HAS_BIAS:
        res += gl.load(b_ptr + on, mask=(on < N) & (pid_k == 0), other=0.0).to(gl.float32)[:, None]
    ptrs = out_ptr + pid_k.to(gl.int64) * M * stride_om + om[None, :].to(gl.int64) * stride_om + on[:, None]
    gl.store(ptrs, res.to(out_ptr.dtype.element_ty), mask=(om[None, :] < M) & (on[:, None] < N))


BLOCK_N, WARPS, STAGES = 64, 4, 4
WIDE = (256, 128, 8, 3)  # BLOCK_M, BLOCK_N, warps, stages: W's dequantized tile serves 256 rows, two warpgroups
WIDE_TILES = 96  # the fewest wide programs (times the K split) that beat the 128-row blocks


def wgmma_config(M: int, N: int, K: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, warps, stages, split-K) from sweeps over the Llama-3.1-8B linears on an H100
    (docs/performance.md, thirty-fourth, thirty-fifth and thirty-eighth sessions): above 128 rows `WIDE` blocks where
    they make WIDE_TILES programs or more (K split 2 or 4 ways for down_proj's long K when that gets there);
    otherwise 64 outputs and a warpgroup a program, up to 16 rows K split 4 ways where there are fewer than two
    tiles per SM, above that only down_proj's long K (> 8,192) when its tiles are few. 128-row blocks take 3 stages
    where their programs outnumber the SMs (two fit an SM: one wave, not two) and 4 where they do not."""
    if M > 128:
        wide = triton.cdiv(M, WIDE[0]) * triton.cdiv(N, WIDE[1])
        split = 1
        while K > 8192 and wide * split < WIDE_TILES and split < 4:
            split *= 2
        if wide * split >= WIDE_TILES:
            return (*WIDE, split)
    bm = max(8, min(128, triton.next_power_of_2(M)))
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, BLOCK_N)
    if bm <= 16:
        split = 4 if tiles < 2 * NUM_SMS else 1
    else:
        split = (4 if bm <= 64 else 2) if K > 8192 and tiles <= 64 else 1
    stages = 3 if bm == 128 and tiles * split > NUM_SMS else STAGES
    return bm, BLOCK_N, WARPS, stages, split


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0 and t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0


def usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether this kernel can run the product: 2+ rows of bf16 x on a Hopper GPU (a TMA descriptor takes no empty
    tensor), both operands as TMA reads them."""
    return (x.is_cuda and x.shape[0] >= 2 and x.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(x.device)[0] == 9 and _aligned(x) and _aligned(w))


def w4wgmma(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
            bias: torch.Tensor | None, sizes: tuple[int, int, int],
            config: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """x [M, K] bf16 (`usable`), w packed [N, K / 2], scale (and minimum) [N, K / g] -> [M, N]."""
    return launch(_w4wgmma_kernel, x, w, scale, minimum, bias, sizes, config)


def launch(kernel, x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
           bias: torch.Tensor | None, sizes: tuple[int, int, int],
           config: tuple[int, int, int, int, int] | None = None, **options) -> torch.Tensor:
    """`kernel` (this file's, or a variant with its arguments) over w4wgmma's operands: TMA descriptors, grid, K
    slices and their sum; `options` go to the launch (maxnreg)."""
    M = x.shape[0]
    N, K, group = sizes
    bm, bn, warps, stages, split = config or wgmma_config(M, N, K)
    x_desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [bm, group],
                              gl.NVMMASharedLayout.get_default_for([bm, group], gl.bfloat16))
    w_layout = gl.NVMMASharedLayout.get_default_for([bn, group // 2], gl.uint8)
    w_desc = TensorDescriptor(w, list(w.shape), list(w.stride()), [bn, group // 2], w_layout)
    k_split, out = k_slices(x, N, K, split, group)
    kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn), out.shape[0])](
        x_desc, w_desc, scale, minimum if minimum is not None else scale, bias if bias is not None else scale, out,
        M, N, K, k_split, scale.stride(0), out.stride(1), ASYM=minimum is not None, HAS_BIAS=bias is not None,
        GROUP=group, BLOCK_N=bn, BLOCK_M=bm, STAGES=stages, SWIZZLE=w_layout.swizzle_byte_width, num_warps=warps,
        **options)
    return summed(out, x.dtype)
