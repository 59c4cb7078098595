"""Prototype (session 36): int4 `y = x @ W^T` for 1-8 rows of x on the tensor cores' mma.sync (m16n8k16), in Gluon.

Why: the paired-bf16 GEMV (int4_pairs.py) spends ~21 instructions a 32-bit word of codes (8 weights): products and
sums on the CUDA cores. Here each word's codes become bf16 (c - 8, exact) in 12 instructions and the products and
sums are one mma per word and thread: x's rows are the mma's N (8 columns: 1-8 rows cost the same).

- W, the register operand A [16 rows, 16 k]: thread (g = lane / 4, c = lane % 4) reads 16 contiguous bytes of a
  group's 64 from rows g and g + 8 (one 128-bit load each); word w of them (bytes b = 16c + 4w .. + 3) gives the
  pairs (b, b+1), (b+64, b+65) (low / high nibbles of bytes 0-1) and (b+2, b+3), (b+66, b+67). The mma's k slots
  are a permutation of the group's inputs: slot 8 AB + 2c + e of step t = 2w + h holds input 16c + 2t + e + 64 AB;
  x (operand B) is read in the same order (int32 words of x: two bf16), so the products are the same.
- The warps of a program split K (group s, s + S, ...: operands [S, ...] of a batched mma) and their sums are added
  at the end; each group's sums are scaled in float32 (the scale per output row), so the products are exact and
  summed in float32 (the twin rounds each weight to bf16 first: a different, closer, result).
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

# One word (8 codes) -> four bf16 pairs: (b, b+1), (b+64, b+65) (bytes 0-1's low / high nibbles), (b+2, b+3),
# (b+66, b+67): c - 8 (sym), c (asym), or 128 + c (OFFSET: the 128 or 136 taken off the group's sums instead).
_WORD_ASM = """{
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
SUB}"""
_SUB = """.reg .b32 bias;
mov.b32 bias, BIAS;
sub.rn.bf16x2 $0, $0, bias;
sub.rn.bf16x2 $1, $1, bias;
sub.rn.bf16x2 $2, $2, bias;
sub.rn.bf16x2 $3, $3, bias;
"""
SYM_ASM: gl.constexpr = gl.constexpr(_WORD_ASM.replace("SUB", _SUB.replace("BIAS", "0x43084308")))
ASYM_ASM: gl.constexpr = gl.constexpr(_WORD_ASM.replace("SUB", _SUB.replace("BIAS", "0x43004300")))
OFFSET_ASM: gl.constexpr = gl.constexpr(_WORD_ASM.replace("SUB", ""))


@gluon.constexpr_function
def _halved(shape):
    return [*shape[:-1], shape[-1] // 2, 2]


@gluon.constexpr_function
def _dropped(shape):
    return list(shape[:-1])


@gluon.jit
def _pick(v, i: gl.constexpr, n: gl.constexpr):
    """v[..., i] of a last dimension of n (2, 4 or 8) held in one thread's registers: splits, no data moved."""
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
    """Pairs pa (slots 2c, 2c+1) and pb (slots 2c+8, 2c+9), [B, rows, 4 (c)] int32 -> [B, rows, 16] bf16 in a_l."""
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
def _w4mv_kernel(x_ptr, w_ptr, s_ptr, m_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_sn, stride_om,
                 ASYM: gl.constexpr, HAS_BIAS: gl.constexpr, OFFSET: gl.constexpr, R: gl.constexpr,
                 S: gl.constexpr, U: gl.constexpr, num_warps: gl.constexpr):
    """Program: 16 R output rows; warp s takes groups s, s + S, ... U at a time (operands [B = S U, ...])."""
    gl.static_assert(S == num_warps)
    B: gl.constexpr = S * U
    BLOCK_N: gl.constexpr = 16 * R
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[S, 1, 1], instr_shape=[1, 16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    w_l: gl.constexpr = gl.BlockedLayout([1, 1, 1, 4], [1, 8, 4, 1], [S, 1, 1, 1], [3, 2, 1, 0])
    x_l: gl.constexpr = gl.BlockedLayout([1, 1, 1, 2, 8], [1, 8, 4, 1, 1], [S, 1, 1, 1, 1], [4, 3, 2, 1, 0])
    s_l: gl.constexpr = gl.SliceLayout(2, mma)
    pid = gl.program_id(0)
    n_groups = K // 128

    wb = gl.arange(0, B, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, w_l))))
    wn_l: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, w_l)))
    wn = gl.minimum(pid * BLOCK_N + gl.arange(0, BLOCK_N, layout=wn_l), N - 1)
    wc = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, w_l))))
    ww = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, w_l))))
    w_rows = w_ptr.to(gl.pointer_type(gl.int32), bitcast=True) + wn[None, :, None, None].to(gl.int64) * (stride_wn // 4)
    w_in = wc[None, None, :, None] * 4 + ww[None, None, None, :]

    xb = gl.arange(0, B, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, gl.SliceLayout(4, x_l)))))
    xn = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, gl.SliceLayout(4, x_l)))))
    xc = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, gl.SliceLayout(4, x_l)))))
    xh = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(4, x_l)))))
    xj = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, x_l)))))
    # x's int32 word in a row: group * 64 + 32 h + 8 c + 2 w + AB; rows past M read row M - 1 (outputs not stored)
    x_in = xc[None, None, :, None, None] * 8 + xh[None, None, None, :, None] * 32 + xj[None, None, None, None, :]
    x_rows = (x_ptr.to(gl.pointer_type(gl.int32), bitcast=True)
              + gl.minimum(xn, M - 1)[None, :, None, None, None].to(gl.int64) * (stride_xm // 2))

    sb = gl.arange(0, B, layout=gl.SliceLayout(1, s_l))
    sn = gl.minimum(pid * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_l)), N - 1)
    s_rows = s_ptr + sn[None, :].to(gl.int64) * stride_sn + sb[:, None]
    m_rows = m_ptr + sn[None, :].to(gl.int64) * stride_sn + sb[:, None]

    # groups past K (K / 128 not a multiple of B) read group 0 with a scale of 0
    words = gl.load(w_rows + w_in + gl.where(wb < n_groups, wb, 0)[:, None, None, None] * 16)
    xw = gl.load(x_rows + x_in + gl.where(xb < n_groups, xb, 0)[:, None, None, None, None] * 64)
    s = gl.load(s_rows, mask=(sb < n_groups)[:, None], other=0.0).to(gl.float32)
    m = s
    if ASYM:
        m = gl.load(m_rows, mask=(sb < n_groups)[:, None], other=0.0).to(gl.float32)
    acc = gl.zeros([B, BLOCK_N, 8], gl.float32, mma)
    for g in range(B, n_groups + B, B):
        words_next = gl.load(w_rows + w_in + gl.where(g + wb < n_groups, g + wb, 0)[:, None, None, None] * 16)
        xw_next = gl.load(x_rows + x_in + gl.where(g + xb < n_groups, g + xb, 0)[:, None, None, None, None] * 64)
        ok_s = (g + sb < n_groups)[:, None]
        s_next = gl.load(s_rows + g, mask=ok_s, other=0.0).to(gl.float32)
        m_next = s_next
        if ASYM:
            m_next = gl.load(m_rows + g, mask=ok_s, other=0.0).to(gl.float32)
        if OFFSET:
            p0, p1, p2, p3 = gl.inline_asm_elementwise(OFFSET_ASM, "=r,=r,=r,=r,r", [words],
                                                       dtype=(gl.int32, gl.int32, gl.int32, gl.int32),
                                                       is_pure=True, pack=1)
        elif ASYM:
            p0, p1, p2, p3 = gl.inline_asm_elementwise(ASYM_ASM, "=r,=r,=r,=r,r", [words],
                                                       dtype=(gl.int32, gl.int32, gl.int32, gl.int32),
                                                       is_pure=True, pack=1)
        else:
            p0, p1, p2, p3 = gl.inline_asm_elementwise(SYM_ASM, "=r,=r,=r,=r,r", [words],
                                                       dtype=(gl.int32, gl.int32, gl.int32, gl.int32),
                                                       is_pure=True, pack=1)
        part = gl.zeros([B, BLOCK_N, 8], gl.float32, mma)
        for w in gl.static_range(4):
            part = mma_v2(_w_operand(_pick(p0, w, 4), _pick(p2, w, 4), a_l), _x_operand(xw, w, 0, b_l), part)
            part = mma_v2(_w_operand(_pick(p1, w, 4), _pick(p3, w, 4), a_l), _x_operand(xw, w, 1, b_l), part)
        acc += part * s[:, :, None]
        if OFFSET or ASYM:  # the group's sum of x times what the codes leave out: m (asym), -136 s or -128 s + m
            ones = gl.full([B, BLOCK_N, 16], 1.0, gl.bfloat16, a_l)
            xsum = gl.zeros([B, BLOCK_N, 8], gl.float32, mma)
            for w in gl.static_range(4):
                xsum = mma_v2(ones, _x_operand(xw, w, 0, b_l), xsum)
                xsum = mma_v2(ones, _x_operand(xw, w, 1, b_l), xsum)
            if OFFSET:
                if ASYM:
                    c = m - 128.0 * s
                else:
                    c = -136.0 * s
            else:
                c = m
            acc += c[:, :, None] * xsum
        words = words_next
        xw = xw_next
        s = s_next
        m = m_next
    total = gl.sum(acc, axis=0)  # [BLOCK_N, 8]: out^T
    out_l: gl.constexpr = gl.BlockedLayout([1, 1], [32, 1], [num_warps, 1], [0, 1])
    res = gl.convert_layout(total, out_l)
    on = pid * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, out_l))
    om = gl.arange(0, 8, layout=gl.SliceLayout(0, out_l))
    if HAS_BIAS:
        res += gl.load(b_ptr + on, mask=on < N, other=0.0).to(gl.float32)[:, None]
    gl.store(out_ptr + om[None, :].to(gl.int64) * stride_om + on[:, None], res.to(out_ptr.dtype.element_ty),
             mask=(om[None, :] < M) & (on[:, None] < N))


def w4mv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None = None,
         bias: torch.Tensor | None = None, R: int = 1, S: int = 4, U: int = 1, offset: bool = False) -> torch.Tensor:
    """x [M <= 8, K] bf16, w [N, K / 2] uint8 (groups of 128, group-halves layout), scale [N, K / 128]."""
    M, K = x.shape
    N = w.shape[0]
    assert M <= 8 and K % 128 == 0 and x.stride(1) == 1 and w.stride(1) == 1
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    _w4mv_kernel[(triton.cdiv(N, 16 * R), )](
        x, w, scale, minimum if minimum is not None else scale, bias if bias is not None else scale, out, M, N, K,
        x.stride(0), w.stride(0), scale.stride(0), out.stride(0), ASYM=minimum is not None, HAS_BIAS=bias is not None,
        OFFSET=offset, R=R, S=S, U=U, num_warps=S)
    return out
