"""The one-row int4 GEMV reading its weights as 32-bit words of 8 codes (llmserve/kernels/int4.py's format, the
uint8 [N, K / 2] codes viewed as int32): each code becomes a float by one LOP3 with a magic float whose last
mantissa bit is worth the code's place, an exact FADD and an FFMA, and a thread's x values serve every row it
holds: about half the byte-reading `w4gemv`'s instructions a weight byte, which is issue-bound. It measured faster
only on the MLP's down_proj, so `w4gemv` uses it from K > 8,192 inputs (docs/performance.md has the figures)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve.kernels import launch_args
from llmserve.kernels.group_tiles import load_x, store_rows
from llmserve.kernels.pdl import pdl_prologue

# Magic floats 2**23, 2**19, 2**15, 2**11: OR'd with the code at bits 4c..4c+3 of a word, the float is magic + code
MAGICS = (0x4B000000, 0x49000000, 0x47000000, 0x45000000)


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
def word_tile(w_ptr, rows_w, n_mask, k0, K, GROUP: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr = False):
    """One K tile of a word-reading GEMV: the words [BLOCK_N, groups, GROUP / 8] (int32, rows_w each row's offset),
    each group's index and whether it lies inside K (EVEN_K: K a multiple of BLOCK_K, a constant true mask that the
    compiler drops), and the first input of each word's low nibbles."""
    WG: tl.constexpr = GROUP // 8
    m = tl.arange(0, WG)
    j = tl.arange(0, BLOCK_K // GROUP)
    grp = k0 // GROUP + j
    k_mask = tl.full((BLOCK_K // GROUP,), True, tl.int1) if EVEN_K else (k0 + j * GROUP) < K
    v = tl.load(w_ptr + rows_w + (grp[:, None] * WG + m[None, :])[None, :, :],
                mask=n_mask[:, None, None] & k_mask[None, :, None], other=0)
    return v, grp, k_mask, (k0 + j[:, None] * GROUP + 4 * m[None, :])[None, :, :]


@triton.jit
def _w4gemv_words_kernel(x_ptr, w_ptr, s_ptr, m_ptr, b_ptr, out_ptr, N, K, stride_wn, stride_sn, m0, m1, m2, m3,
                         ASYM: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, GROUP: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
    """Word m of a group holds inputs 4m..4m+3 in its bytes' low nibbles and the same + GROUP / 2 in their high
    ones; its 8 products are summed, then the group's scale applied (and, asymmetric, minimum x the sum of x)."""
    pdl_prologue(PDL)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    rows_w = offs_n[:, None, None].to(tl.int64) * stride_wn
    rows_s = offs_n[:, None].to(tl.int64) * stride_sn
    SHIFT: tl.constexpr = 0.0 if ASYM else 8.0  # sym: w = s * (q - 8)
    acc = tl.zeros((BLOCK_N, BLOCK_K // GROUP, GROUP // 8), dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        v, grp, k_mask, base = word_tile(w_ptr, rows_w, n_mask, k0, K, GROUP, BLOCK_K)
        v = v.to(tl.uint32, bitcast=True)
        u = v >> 16
        xm = k_mask[None, :, None]
        xa0, xa1, xa2, xa3 = _x4(x_ptr, base, xm, K, GATED)
        xb0, xb1, xb2, xb3 = _x4(x_ptr, base + GROUP // 2, xm, K, GATED)
        t = _code(v, m0, 0xF, 8388608.0 + SHIFT) * xa0
        t += _code(u, m0, 0xF, 8388608.0 + SHIFT) * xa2
        t += _code(v, m1, 0xF0, 524288.0 + SHIFT) * xb0
        t += _code(u, m1, 0xF0, 524288.0 + SHIFT) * xb2
        t += _code(v, m2, 0xF00, 32768.0 + SHIFT) * xa1
        t += _code(u, m2, 0xF00, 32768.0 + SHIFT) * xa3
        t += _code(v, m3, 0xF000, 2048.0 + SHIFT) * xb1
        t += _code(u, m3, 0xF000, 2048.0 + SHIFT) * xb3
        s_mask = n_mask[:, None] & k_mask[None, :]
        s = tl.load(s_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)
        acc += s[:, :, None] * t
        if ASYM:
            mn = tl.load(m_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)
            acc += mn[:, :, None] * (xa0 + xa1 + xa2 + xa3 + xb0 + xb1 + xb2 + xb3)
    store_rows(tl.sum(acc, axis=2), b_ptr, out_ptr, offs_n, n_mask, HAS_BIAS)


def words_config(group: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, stages): the launch shape the H200 run timed (16 rows of 1,024 inputs)."""
    return 16, max(group, 1024), 4, 3


def w4gemv_words(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
                 bias: torch.Tensor | None, gated: bool, config: tuple[int, int, int, int] | None, pdl: bool,
                 sizes: tuple[int, int, int]) -> torch.Tensor:
    """x: [1, K] (or [1, 2K] gated) -> [1, N]; `sizes` (N, K, group) as int4.check_codes gives them."""
    N, K, group = sizes
    assert x.shape == (1, 2 * K if gated else K) and x.stride(-1) == 1
    bn, bk, warps, stages = config or words_config(group)
    assert bk % group == 0, (bk, group)
    out = torch.empty(1, N, dtype=x.dtype, device=x.device)
    words = w.view(torch.int32)
    _w4gemv_words_kernel[(triton.cdiv(N, bn),)](
        x, words, scale, minimum if minimum is not None else scale, bias if bias is not None else scale, out,
        N, K, words.stride(0), scale.stride(0), *MAGICS, ASYM=minimum is not None, HAS_BIAS=bias is not None,
        GATED=gated, GROUP=group, BLOCK_N=bn, BLOCK_K=bk, STAGES=stages, num_warps=warps, **launch_args(pdl))
    return out
