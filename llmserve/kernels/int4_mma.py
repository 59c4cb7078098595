"""`y = x @ W^T` for 1-8 rows of bf16 x and int4 weights in groups of 128 (int4.py's layout), on the tensor cores'
mma.sync (m16n8k16, Ampere and later), in Gluon: the one-row GEMV's replacement, with its epilogue folds.

Why: the paired-bf16 GEMV (int4_pairs.py) spends ~35 SASS instructions a 32-bit word of codes (8 weights) on the
CUDA cores; here a word's codes become bf16 in 8 and one mma a word and thread takes the products and sums (x's
rows are the mma's 8 columns: 1-8 rows cost the same).
- W is operand A [16 rows, 16 k]: thread (g = lane / 4, c = lane % 4) reads 16 contiguous bytes of a group's 64 from
  rows g and g + 8 (one 128-bit load each). Word w of them (bytes b = 16c + 4w ..) gives the bf16 pairs 128 + code
  of inputs (b, b+1), (b+64, b+65) (bytes 0-1's low / high nibbles), (b+2, b+3), (b+66, b+67). The mma's k slots are
  a permutation of the group's inputs: slot 8 AB + 2c + e of step (w, h) holds input 16c + 4w + 2AB + e + 64h, and
  x (operand B, read as int32 words of two bf16) follows the same order, so each B register is one word of x.
- The codes stay 128 + c (exact in bf16; the mma sums exactly enough in float32): a group's sums are scaled in float32
  and the group's sum of x (an mma of ones) times -136 s (sym: w = s (c - 8)) or m - 128 s (asym: w = s c + m) added.
  The twin rounds each weight to bf16 first: the result differs within that rounding (closer to the exact product).
- The warps of a program split K (warp s takes groups s, s + S, ..., U at a time: operands [S U, ...] of a batched
  mma); the words reach registers either through two register buffers in turn (each loaded a batch's products
  ahead; AHEAD: L2 asked for W's groups further on) or through a ring of STAGES shared-memory slots that cp.async
  fills (each thread copies the pieces it reads back itself); the warps' sums meet at the end.
One row (`fold`): gemv.py's epilogue (store_folded) as the paired GEMV runs it: gate_out, rope, norm, add_to.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2

from llmserve.kernels.gemv import RopeCache, RowNorm, fold_inputs, rope_args, store_folded

GROUP = 128  # the layout above: 4 threads x 16 bytes = a group's 64 bytes of a row
# One word (8 codes) -> the four bf16 pairs 128 + code (see above)
_WORD_ASM: gl.constexpr = gl.constexpr("""{
.reg .b32 t0, t1, u0, u1, nib, mag;
mov.b32 nib, 0x000F000F;
mov.b32 mag, 0x43004300;
prmt.b32 t0, $4, 0, 0x4140;
prmt.b32 t1, $4, 0, 0x4342;
shr.u32 u0, t0, 4;
shr.u32 u1, t1, 4;
lop3.b32 $0, t0, nib, mag, 0xEA;
lop3.b32 $1, u0, nib, mag, 0xEA;
lop3.b32 $2, t1, nib, mag, 0xEA;
lop3.b32 $3, u1, nib, mag, 0xEA;
}""")


@gluon.constexpr_function
def _halved(shape):
    return [*shape[:-1], shape[-1] // 2, 2]


@gluon.constexpr_function
def _dropped(shape):
    return list(shape[:-1])


@gluon.jit
def _pick(v, i: gl.constexpr, n: gl.constexpr):
    """v[..., i] of a last dimension of n (a power of two) in one thread's registers: splits, no data moved."""
    if n == 1:
        r = v.reshape(_dropped(v.shape))
    else:
        a, b = v.reshape(_halved(v.shape)).split()
        if i % 2 == 0:
            r = _pick(a, i // 2, n // 2)
        else:
            r = _pick(b, i // 2, n // 2)
    return r


@gluon.jit
def _bf16(v):
    """int32 bf16 pairs [...] -> bf16 [..., 2] (the low half first)."""
    lo = (v & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True)
    hi = (v >> 16).to(gl.int16).to(gl.bfloat16, bitcast=True)
    return gl.join(lo, hi)


@gluon.jit
def _w_operand(pa, pb, a_l: gl.constexpr):
    """Pairs pa (slots 2c, 2c+1) and pb (slots 2c+8, 2c+9), [B, rows, 4 (c)] int32 -> [B, rows, 16] bf16 in a_l (the
    same registers: the layouts line up, nothing moves)."""
    v = _bf16(gl.join(pa, pb)).permute((0, 1, 3, 2, 4))  # [B, rows, AB, c, e]
    return gl.convert_layout(v.reshape([v.shape[0], v.shape[1], 16]), a_l)


@gluon.jit
def _x_operand(xw, w: gl.constexpr, h: gl.constexpr, b_l: gl.constexpr):
    """Step (w, h)'s B operand [B, 16, 8] from x's int32 words [B, 8 (rows), 4 (c), 2 (h), 8 (2 w + AB)]."""
    v = xw.reshape([xw.shape[0], 8, 4, 2, 4, 2]).permute((0, 1, 2, 5, 3, 4))  # [B, n, c, AB, h, w]
    v = _bf16(_pick(v.reshape([xw.shape[0], 8, 4, 2, 8]), 4 * h + w, 8))  # [B, n, c, AB, e]
    v = v.permute((0, 3, 2, 4, 1))  # [B, AB, c, e, n]
    return gl.convert_layout(v.reshape([v.shape[0], 16, 8]), b_l)


@gluon.jit
def _rows(idx, pid, N, BLOCK_N: gl.constexpr, GATE_OUT: gl.constexpr, ROPE_HALF: gl.constexpr):
    """The weight row of each index of the program's BLOCK_N (gemv.program_rows: gate and up rows, or rotary
    partners, in turn)."""
    if GATE_OUT or ROPE_HALF > 0:
        i = pid * (BLOCK_N // 2) + idx // 2
        if ROPE_HALF > 0:
            row = (i // ROPE_HALF) * (2 * ROPE_HALF) + i % ROPE_HALF + (idx % 2) * ROPE_HALF
        else:
            row = i + (idx % 2) * (N // 2)
    else:
        row = pid * BLOCK_N + idx
    return row


@gluon.jit
def _dot_group(words, xw, s, c, acc, mma: gl.constexpr, a_l: gl.constexpr, b_l: gl.constexpr):
    """acc + one group of each batch entry: the codes' products times s, plus the group's x sum times c."""
    p0, p1, p2, p3 = gl.inline_asm_elementwise(_WORD_ASM, "=r,=r,=r,=r,r", [words],
                                               dtype=(gl.int32, gl.int32, gl.int32, gl.int32), is_pure=True, pack=1)
    part = gl.zeros(acc.shape, gl.float32, mma)
    xsum = gl.zeros(acc.shape, gl.float32, mma)
    ones = gl.full([acc.shape[0], acc.shape[1], 16], 1.0, gl.bfloat16, a_l)
    for w in gl.static_range(4):
        x0 = _x_operand(xw, w, 0, b_l)
        x1 = _x_operand(xw, w, 1, b_l)
        part = mma_v2(_w_operand(_pick(p0, w, 4), _pick(p2, w, 4), a_l), x0, part)
        part = mma_v2(_w_operand(_pick(p1, w, 4), _pick(p3, w, 4), a_l), x1, part)
        xsum = mma_v2(ones, x0, xsum)  # the same for every row: ptxas keeps one 16-row block's
        xsum = mma_v2(ones, x1, xsum)
    return acc + part * s[:, :, None] + xsum * c[:, :, None]


@gluon.jit
def _prefetch(g, n_groups, w_rows, wb):
    """W's words of groups g + b into L2 ahead of their loads (kept inside W)."""
    ptrs = _pick(w_rows + gl.minimum(g + wb, n_groups - 1)[:, None, None, None] * 16, 0, 4)  # a thread's 16 bytes
    gl.inline_asm_elementwise("prefetch.global.L2 [$1];", "=r,l", [ptrs], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _fetch(g, n_groups, w_rows, x_rows, s_rows, m_rows, wb, xb, sb, ASYM: gl.constexpr):
    """Groups g + b (b < B: the batch entries) of W's words, x's words, the scales, and what the codes 128 + c leave
    out of a weight (-136 s sym, m - 128 s asym). Past K: W not read (any codes: finite), x's group 0, a scale and
    offset of 0, so the entry adds nothing."""
    words = gl.load(w_rows + (g + wb)[:, None, None, None] * 16, mask=(g + wb < n_groups)[:, None, None, None])
    xw = gl.load(x_rows + gl.where(g + xb < n_groups, g + xb, 0)[:, None, None, None, None] * 64)
    s, c = _scales(g, n_groups, s_rows, m_rows, sb, ASYM)
    return words, xw, s, c


@gluon.jit
def _buffered(acc, n_groups, w_rows, x_rows, s_rows, m_rows, wb, xb, sb, ASYM: gl.constexpr, B: gl.constexpr,
              AHEAD: gl.constexpr, mma: gl.constexpr, a_l: gl.constexpr, b_l: gl.constexpr):
    """The K loop with two register buffers in turn, each loaded a batch's products before its own (one buffer
    carried across iterations had ptxas place the loads after the products, their whole latency in the loop)."""
    w0, x0, s0, c0 = _fetch(0, n_groups, w_rows, x_rows, s_rows, m_rows, wb, xb, sb, ASYM)
    for g in range(0, n_groups, 2 * B):
        if AHEAD > 0:  # L2 asked for W's groups AHEAD batches on
            _prefetch(g + AHEAD * B, n_groups, w_rows, wb)
            _prefetch(g + (AHEAD + 1) * B, n_groups, w_rows, wb)
        w1, x1, s1, c1 = _fetch(g + B, n_groups, w_rows, x_rows, s_rows, m_rows, wb, xb, sb, ASYM)
        acc = _dot_group(w0, x0, s0, c0, acc, mma, a_l, b_l)
        w0, x0, s0, c0 = _fetch(g + 2 * B, n_groups, w_rows, x_rows, s_rows, m_rows, wb, xb, sb, ASYM)
        acc = _dot_group(w1, x1, s1, c1, acc, mma, a_l, b_l)
    return acc


@gluon.jit
def _scales(g, n_groups, s_rows, m_rows, sb, ASYM: gl.constexpr):
    """_fetch's scales and offsets alone (the staged loop copies the words)."""
    s = gl.load(s_rows + g, mask=(g + sb < n_groups)[:, None], other=0.0).to(gl.float32)
    if ASYM:
        c = gl.load(m_rows + g, mask=(g + sb < n_groups)[:, None], other=0.0).to(gl.float32) - 128.0 * s
    else:
        c = -136.0 * s
    return s, c


@gluon.jit
def _copy(g, n_groups, M, w_rows, x_rows, wb, xb, xn, w_slot, x_slot):
    """Groups g + b's words of W and x into a ring slot by cp.async, as one commit group: each thread copies the 16-byte
    pieces it will read back itself (the compiler still puts CTA barriers around the slots). Past K, or x's rows past
    M: zeros."""
    async_copy.async_copy_global_to_shared(w_slot, w_rows + (g + wb)[:, None, None, None] * 16,
                                           mask=(g + wb < n_groups)[:, None, None, None])
    ok = (g + xb < n_groups)[:, None, None, None, None] & (xn < M)[None, :, None, None, None]
    async_copy.async_copy_global_to_shared(x_slot, x_rows + (g + xb)[:, None, None, None, None] * 64, mask=ok)
    async_copy.commit_group()


@gluon.jit
def _staged(acc, n_groups, M, w_rows, x_rows, s_rows, m_rows, wb, xb, xn, sb, ASYM: gl.constexpr, B: gl.constexpr,
            BLOCK_N: gl.constexpr, STAGES: gl.constexpr, w_l: gl.constexpr, x_l: gl.constexpr, mma: gl.constexpr,
            a_l: gl.constexpr, b_l: gl.constexpr):
    """The K loop with W's and x's words through a ring of STAGES shared-memory slots filled by cp.async (the copies
    hold no registers, so STAGES - 1 batches stay in flight); the scales a batch ahead in registers."""
    w_smem = gl.allocate_shared_memory(gl.int32, [STAGES, B, BLOCK_N, 4, 4],
                                       gl.SwizzledSharedLayout(1, 1, 1, [3, 2, 1, 0]))
    x_smem = gl.allocate_shared_memory(gl.int32, [STAGES, B, 8, 4, 2, 8],
                                       gl.SwizzledSharedLayout(1, 1, 1, [4, 3, 2, 1, 0]))
    for i in gl.static_range(STAGES - 1):
        _copy(i * B, n_groups, M, w_rows, x_rows, wb, xb, xn, w_smem.index(i), x_smem.index(i))
    s0, c0 = _scales(0, n_groups, s_rows, m_rows, sb, ASYM)
    for g in range(0, n_groups, B):
        t = g // B
        nxt = t + STAGES - 1
        _copy(nxt * B, n_groups, M, w_rows, x_rows, wb, xb, xn, w_smem.index(nxt % STAGES),
              x_smem.index(nxt % STAGES))
        s1, c1 = _scales(g + B, n_groups, s_rows, m_rows, sb, ASYM)
        async_copy.wait_group(STAGES - 1)  # this thread's copies of batch t have landed
        words = w_smem.index(t % STAGES).load(w_l)
        xw = x_smem.index(t % STAGES).load(x_l)
        acc = _dot_group(words, xw, s0, c0, acc, mma, a_l, b_l)
        s0, c0 = s1, c1
    async_copy.wait_group(0)
    return acc


@gluon.jit
def _w4mma_kernel(x_ptr, w_ptr, s_ptr, m_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_sn, stride_om,
                  cos_ptr, sin_ptr, slot_ptr, kc_ptr, vc_ptr, stride_slot, sumsq_in, sumsq_out, P, eps, nw_ptr, hw_ptr,
                  ASYM: gl.constexpr, HAS_BIAS: gl.constexpr, R: gl.constexpr, S: gl.constexpr, U: gl.constexpr,
                  AHEAD: gl.constexpr, STAGES: gl.constexpr, ONE_ROW: gl.constexpr, GATE_OUT: gl.constexpr,
                  NORM: gl.constexpr, ADD_TO: gl.constexpr, WEIGHTED: gl.constexpr, P_BLOCK: gl.constexpr,
                  NH: gl.constexpr, NKV: gl.constexpr, ROPE_HALF: gl.constexpr, num_warps: gl.constexpr):
    """A program: 16 R output rows; warp s takes groups s, s + S, ... U at a time (batch entries B = S U)."""
    gl.static_assert(S == num_warps)
    B: gl.constexpr = S * U
    BLOCK_N: gl.constexpr = 16 * R
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[S, 1, 1], instr_shape=[1, 16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    # W's words [B, BLOCK_N, 4 (c), 4 (w)], rows g + 8 r in registers as operand A holds them; x's [B, 8 (rows),
    # 4 (c), 2 (h), 8 (2 w + AB)]; the scales [B, BLOCK_N] as the sums hold them
    w_l: gl.constexpr = gl.BlockedLayout([1, 1, 1, 4], [1, 8, 4, 1], [S, 1, 1, 1], [3, 2, 1, 0])
    x_l: gl.constexpr = gl.BlockedLayout([1, 1, 1, 2, 8], [1, 8, 4, 1, 1], [S, 1, 1, 1, 1], [4, 3, 2, 1, 0])
    s_l: gl.constexpr = gl.SliceLayout(2, mma)
    y_l: gl.constexpr = gl.BlockedLayout([2], [32], [num_warps], [0])  # a row's pairs in one thread (the folds)
    pid = gl.program_id(0)
    n_groups = K // 128  # groups of 128 (GROUP)

    idx_y = gl.arange(0, BLOCK_N, layout=y_l)
    offs_n = _rows(idx_y, pid, N, BLOCK_N, GATE_OUT, ROPE_HALF)
    n_mask = offs_n < N
    half, _ = idx_y.reshape([BLOCK_N // 2, 2]).split()
    half = pid * (BLOCK_N // 2) + half // 2
    part, res, cos, sin, slot = fold_inputs(pid, offs_n, n_mask, out_ptr, sumsq_in, P, cos_ptr, sin_ptr, slot_ptr,
                                            NORM, ADD_TO, ROPE_HALF, P_BLOCK, BLOCK_N, half,
                                            gl.arange(0, P_BLOCK, layout=y_l))

    wb = gl.arange(0, B, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, w_l))))
    wn = gl.minimum(_rows(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, w_l)))),
                          pid, N, BLOCK_N, GATE_OUT, ROPE_HALF), N - 1)  # rows past N: read, not stored
    wc = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, w_l))))
    ww = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, w_l))))
    w_rows = (w_ptr.to(gl.pointer_type(gl.int32), bitcast=True)
              + wn[None, :, None, None].to(gl.int64) * (stride_wn // 4)
              + (wc[None, None, :, None] * 4 + ww[None, None, None, :]))
    x5: gl.constexpr = gl.SliceLayout(4, x_l)
    xb = gl.arange(0, B, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, x5))))
    xn = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, x5))))
    xc = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, x5))))
    xh = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, x5))))
    xj = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, x_l)))))
    # x's int32 word in a row: group * 64 + 32 h + 8 c + 2 w + AB; rows past M read row M - 1 (not stored)
    x_rows = (x_ptr.to(gl.pointer_type(gl.int32), bitcast=True)
              + gl.minimum(xn, M - 1)[None, :, None, None, None].to(gl.int64) * (stride_xm // 2)
              + (xc[None, None, :, None, None] * 8 + xh[None, None, None, :, None] * 32
                 + xj[None, None, None, None, :]))
    sb = gl.arange(0, B, layout=gl.SliceLayout(1, s_l))
    sn = gl.minimum(_rows(gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_l)), pid, N, BLOCK_N, GATE_OUT, ROPE_HALF),
                    N - 1)
    s_rows = s_ptr + sn[None, :].to(gl.int64) * stride_sn + sb[:, None]
    m_rows = m_ptr + sn[None, :].to(gl.int64) * stride_sn + sb[:, None]

    acc = gl.zeros([B, BLOCK_N, 8], gl.float32, mma)
    if STAGES > 0:
        acc = _staged(acc, n_groups, M, w_rows, x_rows, s_rows, m_rows, wb, xb, xn, sb, ASYM, B, BLOCK_N, STAGES, w_l,
                      x_l, mma, a_l, b_l)
    else:
        acc = _buffered(acc, n_groups, w_rows, x_rows, s_rows, m_rows, wb, xb, sb, ASYM, B, AHEAD, mma, a_l, b_l)
    total = gl.sum(acc, axis=0)  # [BLOCK_N, 8]: out^T
    if ONE_ROW:
        col = gl.arange(0, 8, layout=gl.SliceLayout(0, total.type.layout))
        y = gl.convert_layout(gl.sum(gl.where(col[None, :] == 0, total, 0.0), axis=1), y_l)
        store_folded(y, pid, offs_n, n_mask, N, K, out_ptr, b_ptr, eps, part, res, sumsq_out, nw_ptr, hw_ptr, cos,
                     sin, slot, kc_ptr, vc_ptr, stride_slot, HAS_BIAS, NORM, ADD_TO, WEIGHTED, GATE_OUT, NH, NKV,
                     ROPE_HALF, BLOCK_N, half)
    else:
        _store_rows(total, b_ptr, out_ptr, pid, M, N, stride_om, HAS_BIAS, BLOCK_N, num_warps)


@gluon.jit
def _store_rows(total, b_ptr, out_ptr, pid, M, N, stride_om, HAS_BIAS: gl.constexpr, BLOCK_N: gl.constexpr,
                num_warps: gl.constexpr):
    """out^T [BLOCK_N, 8] to out [M, N] (its first M columns), plus the bias."""
    out_l: gl.constexpr = gl.BlockedLayout([1, 1], [32, 1], [num_warps, 1], [0, 1])
    res = gl.convert_layout(total, out_l)
    on = pid * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, out_l))
    om = gl.arange(0, 8, layout=gl.SliceLayout(0, out_l))
    if HAS_BIAS:
        res += gl.load(b_ptr + on, mask=on < N, other=0.0).to(gl.float32)[:, None]
    gl.store(out_ptr + om[None, :].to(gl.int64) * stride_om + on[:, None], res.to(out_ptr.dtype.element_ty),
             mask=(om[None, :] < M) & (on[:, None] < N))


def mma_config(N: int, K: int) -> tuple[int, int, int, int, int]:
    """(R, S, U, AHEAD, STAGES): 16 R rows a program, S warps splitting K, U groups a warp at a time; STAGES 0: two
    register buffers, W's groups asked of L2 AHEAD batches (of S U groups) before their loads (0: none); else a ring
    of STAGES shared-memory slots filled by cp.async. Each matrix of Llama-3.1-8B's at its fastest at 8 rows, or
    within 2% (an H100; bench/results/2026-12-07-s36/probe.py `time`, docs/performance.md thirty-eighth session)."""
    if K > 8192:
        return 1, 8, 1, 2, 0
    if N > 16384:
        return 1, 4, 1, 0, 0
    return (2, 4, 1, 2, 0) if N <= 4096 else (1, 4, 1, 2, 0)


def _aligned(t: torch.Tensor) -> bool:
    """Rows read 16 bytes at a time."""
    return t.stride(1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0


def usable(x: torch.Tensor, w: torch.Tensor, group: int) -> bool:
    """Whether this kernel can take x and w: 1-8 rows of bf16 on an Ampere or later GPU, groups of 128, both read 16
    bytes at a time."""
    return (x.is_cuda and 1 <= x.shape[0] <= 8 and x.dtype == torch.bfloat16 and group == GROUP
            and torch.cuda.get_device_capability(x.device)[0] >= 8 and _aligned(x) and _aligned(w))


def w4mma(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
          bias: torch.Tensor | None, sizes: tuple[int, int, int], gate_out: bool = False,
          rope: RopeCache | None = None, norm: RowNorm | None = None, add_to: torch.Tensor | None = None,
          next_norm: torch.Tensor | None = None, config: tuple[int, ...] | None = None
          ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """x [M, K] (`usable`) -> [M, N]; one row: the folds of int4_pairs.w4gemv_pairs (gate_out, rope, norm, add_to
    with next_norm), with its returns."""
    M = x.shape[0]
    N, K, group = sizes
    folds = gate_out or rope is not None or norm is not None or add_to is not None
    assert group == GROUP and (M == 1 or not folds) and (N % 2 == 0 or not gate_out)
    R, S, U, ahead, stages = config or mma_config(N, K)
    block = 16 * R
    grid = triton.cdiv(N, block)
    if add_to is not None:
        assert add_to.shape == (1, N) and add_to.is_contiguous()
        out, sums_out = add_to, torch.empty(grid, dtype=torch.float32, device=x.device)
    else:
        out, sums_out = torch.empty(M, N // 2 if gate_out else N, dtype=x.dtype, device=x.device), scale
    weighted = torch.empty_like(add_to) if add_to is not None and next_norm is not None else None
    r = rope_args(rope, N) if rope is not None else (scale,) * 5 + (0,)
    heads = (rope.num_heads, rope.num_kv_heads, rope.head_dim // 2) if rope is not None else (0, 0, 0)
    sums, eps = (norm.sumsq, norm.eps) if norm is not None else (scale, 0.0)
    P = sums.numel() if norm is not None else 1
    _w4mma_kernel[(grid,)](
        x, w, scale, minimum if minimum is not None else scale, bias if bias is not None else scale, out, M, N, K,
        x.stride(0), w.stride(0), scale.stride(0), out.stride(0), *r, sums, sums_out, P, eps,
        next_norm if weighted is not None else scale, weighted if weighted is not None else scale,
        ASYM=minimum is not None, HAS_BIAS=bias is not None, R=R, S=S, U=U, AHEAD=ahead, STAGES=stages, ONE_ROW=M == 1,
        GATE_OUT=gate_out, NORM=norm is not None, ADD_TO=add_to is not None, WEIGHTED=weighted is not None,
        P_BLOCK=triton.next_power_of_2(P), NH=heads[0], NKV=heads[1], ROPE_HALF=heads[2], num_warps=S)
    return (sums_out, weighted) if add_to is not None else out
