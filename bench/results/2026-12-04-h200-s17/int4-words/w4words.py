"""Prototypes (not measured, seventeenth session): the batch-1 int4 GEMV reading its weights as 32-bit words of 8
codes, x shared by the rows a thread holds. `w4gemv_words`: a LOP3 (mask and a magic float's bits), an exact FADD
and an FFMA a code; `w4gemv_words2`: every code shifted to bit 12 or 16, a LOP3 and an FFMA a code, the magic terms
taken off once per word. SASS counts (bench.ptx_stats's way) at 4096 x 4096: 9.3 and 8.1 instructions a weight byte
against 17.2 for llmserve.kernels.int4's w4gemv; the gated down_proj (4096 x 14336) 11.6 and 10.2 against 27.9.
Same arguments as w4gemv; run by w4_ab.py beside it."""
import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from llmserve.kernels import launch_args
from llmserve.kernels.int4 import check_codes, load_x, store_rows


@triton.jit
def _code(v, magic, MASK: tl.constexpr, BIAS: tl.constexpr):
    """The code at bits MASK of v (bits 4c..4c+3) minus BIAS as float32, exactly: `magic` is the float 2**(23 - 4c),
    whose last mantissa bit is worth 2**-4c, so magic | (v & MASK) is the float 2**(23 - 4c) + code. It comes in
    as an argument: held in a register, the and + or is one LOP3 (two immediates are not)."""
    return ((v & MASK) | magic).to(tl.float32, bitcast=True) - BIAS


@triton.jit
def _x4(x_ptr, idx, mask, K, GATED: tl.constexpr):
    """x at idx + 0..3 as four tensors shaped like idx (float32), each a strided load (x is small and cached)."""
    return (load_x(x_ptr, idx, mask, K, GATED), load_x(x_ptr, idx + 1, mask, K, GATED),
            load_x(x_ptr, idx + 2, mask, K, GATED), load_x(x_ptr, idx + 3, mask, K, GATED))


@triton.jit
def _w4gemv_words_kernel(x_ptr, w_ptr, s_ptr, m_ptr, b_ptr, out_ptr, N, K, stride_wn, stride_sn, m0, m1, m2, m3,
                         ASYM: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, GROUP: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    WG: tl.constexpr = GROUP // 8  # words a group: word m holds inputs 4m..4m+3 (low nibbles), + GROUP/2 (high)
    GT: tl.constexpr = BLOCK_K // GROUP
    m = tl.arange(0, WG)
    j = tl.arange(0, GT)
    rows_w = offs_n[:, None, None].to(tl.int64) * stride_wn
    rows_s = offs_n[:, None].to(tl.int64) * stride_sn
    # sym: w = s * (q - 8): the bias is the magic float plus 8
    B0: tl.constexpr = 8388608.0 + (0.0 if ASYM else 8.0)  # 2**23
    B1: tl.constexpr = 524288.0 + (0.0 if ASYM else 8.0)  # 2**19
    B2: tl.constexpr = 32768.0 + (0.0 if ASYM else 8.0)  # 2**15
    B3: tl.constexpr = 2048.0 + (0.0 if ASYM else 8.0)  # 2**11
    acc = tl.zeros((BLOCK_N, GT, WG), dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        grp = k0 // GROUP + j
        k_mask = (k0 + j * GROUP) < K
        v = tl.load(w_ptr + rows_w + (grp[:, None] * WG + m[None, :])[None, :, :],
                    mask=n_mask[:, None, None] & k_mask[None, :, None], other=0).to(tl.uint32, bitcast=True)
        u = v >> 16
        base = (k0 + j[:, None] * GROUP + 4 * m[None, :])[None, :, :]
        xm = k_mask[None, :, None]
        xa0, xa1, xa2, xa3 = _x4(x_ptr, base, xm, K, GATED)
        xb0, xb1, xb2, xb3 = _x4(x_ptr, base + GROUP // 2, xm, K, GATED)
        t = _code(v, m0, 0xF, B0) * xa0
        t += _code(u, m0, 0xF, B0) * xa2
        t += _code(v, m1, 0xF0, B1) * xb0
        t += _code(u, m1, 0xF0, B1) * xb2
        t += _code(v, m2, 0xF00, B2) * xa1
        t += _code(u, m2, 0xF00, B2) * xa3
        t += _code(v, m3, 0xF000, B3) * xb1
        t += _code(u, m3, 0xF000, B3) * xb3
        s_mask = n_mask[:, None] & k_mask[None, :]
        s = tl.load(s_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)
        acc += s[:, :, None] * t
        if ASYM:
            mn = tl.load(m_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)
            acc += mn[:, :, None] * (xa0 + xa1 + xa2 + xa3 + xb0 + xb1 + xb2 + xb3)
    store_rows(tl.sum(acc, axis=2), b_ptr, out_ptr, offs_n, n_mask, HAS_BIAS)



@triton.jit
def _w4gemv_words2_kernel(x_ptr, w_ptr, s_ptr, m_ptr, b_ptr, out_ptr, N, K, stride_wn, stride_sn, m12, m16,
                          ASYM: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, GROUP: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
    """As _w4gemv_words_kernel without a FADD a code: every code is shifted to bits 12 or 16 of a word, where the
    magic floats 2**11 and 2**7 put it (f = magic + code), and the magic terms are taken off once per word from the
    row-independent sums of x (a float32 cancellation of at most 2**11 against the codes: ~1e-4 relative)."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    WG: tl.constexpr = GROUP // 8
    GT: tl.constexpr = BLOCK_K // GROUP
    m = tl.arange(0, WG)
    j = tl.arange(0, GT)
    rows_w = offs_n[:, None, None].to(tl.int64) * stride_wn
    rows_s = offs_n[:, None].to(tl.int64) * stride_sn
    CA: tl.constexpr = 2048.0 + (0.0 if ASYM else 8.0)  # low-nibble codes sit at bit 12: magic 2**11
    CB: tl.constexpr = 128.0 + (0.0 if ASYM else 8.0)  # high-nibble codes at bit 16: magic 2**7
    acc = tl.zeros((BLOCK_N, GT, WG), dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        grp = k0 // GROUP + j
        k_mask = (k0 + j * GROUP) < K
        v = tl.load(w_ptr + rows_w + (grp[:, None] * WG + m[None, :])[None, :, :],
                    mask=n_mask[:, None, None] & k_mask[None, :, None], other=0).to(tl.uint32, bitcast=True)
        base = (k0 + j[:, None] * GROUP + 4 * m[None, :])[None, :, :]
        xm = k_mask[None, :, None]
        xa0, xa1, xa2, xa3 = _x4(x_ptr, base, xm, K, GATED)
        xb0, xb1, xb2, xb3 = _x4(x_ptr, base + GROUP // 2, xm, K, GATED)
        a, b, c, d = v << 12, v << 4, v >> 4, v >> 12  # byte i's nibbles to bits 12 (low) and 16 (high)
        t = ((a & 0xF000) | m12).to(tl.float32, bitcast=True) * xa0
        t += ((a & 0xF0000) | m16).to(tl.float32, bitcast=True) * xb0
        t += ((b & 0xF000) | m12).to(tl.float32, bitcast=True) * xa1
        t += ((b & 0xF0000) | m16).to(tl.float32, bitcast=True) * xb1
        t += ((c & 0xF000) | m12).to(tl.float32, bitcast=True) * xa2
        t += ((c & 0xF0000) | m16).to(tl.float32, bitcast=True) * xb2
        t += ((d & 0xF000) | m12).to(tl.float32, bitcast=True) * xa3
        t += ((d & 0xF0000) | m16).to(tl.float32, bitcast=True) * xb3
        t -= CA * (xa0 + xa1 + xa2 + xa3) + CB * (xb0 + xb1 + xb2 + xb3)
        s_mask = n_mask[:, None] & k_mask[None, :]
        s = tl.load(s_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)
        acc += s[:, :, None] * t
        if ASYM:
            mn = tl.load(m_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)
            acc += mn[:, :, None] * (xa0 + xa1 + xa2 + xa3 + xb0 + xb1 + xb2 + xb3)
    store_rows(tl.sum(acc, axis=2), b_ptr, out_ptr, offs_n, n_mask, HAS_BIAS)

def _launch(kernel, magics, x, w, scale, minimum, bias, gated, config, pdl):
    N, K, group = check_codes(w, scale, minimum)
    assert x.shape == (1, 2 * K if gated else K) and x.stride(-1) == 1
    bn, bk, warps, stages = config or (16, max(group, 1024), 4, 3)
    out = torch.empty(1, N, dtype=x.dtype, device=x.device)
    words = w.view(torch.int32)
    kernel[(triton.cdiv(N, bn),)](
        x, words, scale, minimum if minimum is not None else scale, bias if bias is not None else scale, out,
        N, K, words.stride(0), scale.stride(0), *magics,
        ASYM=minimum is not None, HAS_BIAS=bias is not None, GATED=gated, GROUP=group, BLOCK_N=bn, BLOCK_K=bk,
        STAGES=stages, num_warps=warps, **launch_args(pdl))
    return out


def w4gemv_words(x, w, scale, minimum=None, bias=None, gated=False, config=None, pdl=False):
    return _launch(_w4gemv_words_kernel, (0x4B000000, 0x49000000, 0x47000000, 0x45000000), x, w, scale, minimum,
                   bias, gated, config, pdl)


def w4gemv_words2(x, w, scale, minimum=None, bias=None, gated=False, config=None, pdl=False):
    return _launch(_w4gemv_words2_kernel, (0x45000000, 0x43000000), x, w, scale, minimum, bias, gated, config, pdl)
