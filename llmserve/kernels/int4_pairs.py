"""The one-row int4 GEMV in paired bf16 arithmetic, for bf16 activations on a GPU (inline PTX: on the CPU only the tests
run it, Triton's interpreter with tests/ptx_emulator.py). It reads the weights as int4_words.py does (int4.py's codes
viewed as int32 words of 8), and turns each word into four bf16 pairs: a shift and a LOP3 with a magic bf16 give 128
+ code in both halves, one paired subtraction gives code - 8, exactly (asymmetric weights too: their minimum takes 8
scales back); four paired multiply-adds (HFMA2) take the products with x's matching pairs, and the pairs' sum goes to
float32 once a word, before the group's scale: about half the word GEMV's instructions a weight byte (the GEMVs are
issue-bound, docs/performance.md). A word's eight products and their sums round to bf16 (TensorRT-LLM's weight-only
GEMV keeps a thread's whole K range in the activation dtype); everything after is float32. `gate_out`: the MLP's
silu(gate) * up in the [gate | up] product's epilogue (each program pairs gate and up rows, as gemv.py's), so
down_proj reads a plain row: computed in down_proj's x loads instead, every one of its programs redid the gate for
all its inputs. `rope`: qkv's rotary embedding and KV-cache write in its epilogue (gemv.py's `rope_store`), no
rope_and_cache launch. x's pairs: natural, (x[4m], x[4m + 1]) and (x[4m + 2], x[4m + 3]) as x's int64 holds them, the
word's nibbles permuted to match, up to NATURAL_MAX_K inputs; spread, (x[4m], x[4m + 2]) and (x[4m + 1], x[4m + 3]),
beyond."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve.kernels import launch_args
from llmserve.kernels.gemv import RopeCache, RowNorm, fold_inputs, program_rows, rope_args, store_folded
from llmserve.kernels.group_tiles import load_x
from llmserve.kernels.int4_words import word_tile
from llmserve.kernels.pdl import pdl_launch_next, pdl_prologue

# A word's nibbles at bits 0-3 and 16-19 (shifted by 0, 4, 8, 12 for the others), OR'd into bf16 128.0 in each half:
# the bf16 128 + code, exact (its last mantissa bit is worth 1)
NIBBLES, MAGIC = 0x000F000F, 0x43004300
# Subtracted from 128 + code: bf16 136, so the products are (code - 8) * x: w = s * (code - 8) symmetric, and
# asymmetric w = s * code + m = s * (code - 8) + (m + 8 s). With the codes 0..15 a word's bf16 sum was ~8x larger
# than what is left after m's term cancels it, and its rounding showed (rel 1.05e-2 against the dequantized weight).
BIAS = 0x43084308

# $0 = sum over a word of (code - bias) * x, float32. $1 the word; $2-$5 x's bf16 pairs matching the nibble pairs
# t0-t3; $6 NIBBLES, $7 MAGIC, $8 the bias (registers: LOP3 and HFMA2 take one immediate). The pair sum's halves
# become float32 by a shift and a mask (bf16 is float32's top half). Spread: t0-t3 the nibbles at bits 0-3 / 16-19
# after a shift of 0, 4, 8, 12 (inputs 4m and 4m + 2, their high nibbles, 4m + 1 and 4m + 3, theirs), so x's pairs
# take two byte permutes a word position. Natural: two byte permutes of the word first (bytes 0, 1 and 2, 3 into
# the halves), so t0-t3 hold inputs (4m, 4m + 1), their high nibbles, (4m + 2, 4m + 3), theirs: x's own pairs.
_DOT_TAIL = """sub.rn.bf16x2 t0, t0, $8;
sub.rn.bf16x2 t1, t1, $8;
sub.rn.bf16x2 t2, t2, $8;
sub.rn.bf16x2 t3, t3, $8;
mul.rn.bf16x2 a, t0, $2;
fma.rn.bf16x2 a, t1, $3, a;
fma.rn.bf16x2 a, t2, $4, a;
fma.rn.bf16x2 a, t3, $5, a;
shl.b32 lo, a, 16;
and.b32 hi, a, 0xFFFF0000;
add.f32 $0, lo, hi;
}"""
_SPREAD_DOT = tl.constexpr("""{
.reg .b32 s, t0, t1, t2, t3, a, lo, hi;
lop3.b32 t0, $1, $6, $7, 0xEA;
shr.u32 s, $1, 4;
lop3.b32 t1, s, $6, $7, 0xEA;
shr.u32 s, $1, 8;
lop3.b32 t2, s, $6, $7, 0xEA;
shr.u32 s, $1, 12;
lop3.b32 t3, s, $6, $7, 0xEA;
""" + _DOT_TAIL)
_NATURAL_DOT = tl.constexpr("""{
.reg .b32 p, t0, t1, t2, t3, a, lo, hi;
prmt.b32 p, $1, 0, 0x4140;
lop3.b32 t0, p, $6, $7, 0xEA;
shr.u32 p, p, 4;
lop3.b32 t1, p, $6, $7, 0xEA;
prmt.b32 p, $1, 0, 0x4342;
lop3.b32 t2, p, $6, $7, 0xEA;
shr.u32 p, p, 4;
lop3.b32 t3, p, $6, $7, 0xEA;
""" + _DOT_TAIL)
# x's natural pairs up to this K: fewer instructions a word, and faster for qkv, o_proj and gate_up. Longer rows
# (down_proj's) share a thread's x pairs among its rows, so there the spread pairs' permutes are fewer than the natural
# ones' permutes of every word (the same time either way: docs/performance.md, forty-fourth session).
NATURAL_MAX_K = 8192
# The asm of the helpers below (module constants: tests/test_kernels_ptx.py runs every one on the CPU)
_SPLIT_PAIRS = tl.constexpr("{.reg .b32 lo, hi; mov.b64 {lo, hi}, $2; prmt.b32 $0, lo, hi, 0x5410; "
                            "prmt.b32 $1, lo, hi, 0x7632;}")
_NATURAL_PAIRS = tl.constexpr("mov.b64 {$0, $1}, $2;")
_PACK = tl.constexpr("cvt.rn.bf16x2.f32 $0, $2, $1;")
_PAIR_SUM = tl.constexpr("{.reg .b32 lo, hi; shl.b32 lo, $1, 16; and.b32 hi, $1, 0xFFFF0000; add.f32 $0, lo, hi;}")


@triton.jit
def _split_pairs(q, NATURAL: tl.constexpr):
    """x[i..i+3] as one int64 -> the bf16 pairs (x[i], x[i + 2]) and (x[i + 1], x[i + 3]) (two byte permutes), or
    NATURAL (x[i], x[i + 1]) and (x[i + 2], x[i + 3]) (its two halves)."""
    asm: tl.constexpr = _NATURAL_PAIRS if NATURAL else _SPLIT_PAIRS
    return tl.inline_asm_elementwise(asm, "=r,=r,l", [q], dtype=(tl.int32, tl.int32), is_pure=True, pack=1)


@triton.jit
def _pack(lo, hi):
    """float32 lo and hi rounded to one bf16 pair (lo in the low half)."""
    return tl.inline_asm_elementwise(_PACK, "=r,f,f", [lo, hi], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _pair_sum(p):
    """The two bf16 of pair p added in float32."""
    return tl.inline_asm_elementwise(_PAIR_SUM, "=f,r", [p], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _pairs(x_ptr, xq_ptr, idx, qidx, mask, K, GATED: tl.constexpr, NATURAL: tl.constexpr):
    """x's pairs at idx (a multiple of 4) as `_split_pairs` makes them from x's int64 word qidx = idx / 4 (xq: x
    viewed as int64), or, gated, of silu(gate) * up rounded to bf16 as the eager ops round it."""
    if GATED:
        x0 = load_x(x_ptr, idx, mask, K, GATED)
        x1 = load_x(x_ptr, idx + 1, mask, K, GATED)
        x2 = load_x(x_ptr, idx + 2, mask, K, GATED)
        x3 = load_x(x_ptr, idx + 3, mask, K, GATED)
        if NATURAL:
            return _pack(x0, x1), _pack(x2, x3)
        return _pack(x0, x2), _pack(x1, x3)
    else:
        return _split_pairs(tl.load(xq_ptr + qidx, mask=mask, other=0), NATURAL)


@triton.jit
def _w4gemv_pairs_kernel(x_ptr, xq_ptr, w_ptr, s_ptr, m_ptr, b_ptr, out_ptr, N, K, stride_wn, stride_sn, nibbles,
                         magic, bias, cos_ptr, sin_ptr, slot_ptr, kc_ptr, vc_ptr, stride_slot, sumsq_in, sumsq_out, P,
                         eps, nw_ptr, hw_ptr, ASYM: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
                         GATE_OUT: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         STAGES: tl.constexpr, EVEN: tl.constexpr, PDL: tl.constexpr, NH: tl.constexpr = 0,
                         NKV: tl.constexpr = 0, ROPE_HALF: tl.constexpr = 0, NORM: tl.constexpr = False,
                         ADD_TO: tl.constexpr = False, WEIGHTED: tl.constexpr = False, P_BLOCK: tl.constexpr = 1,
                         NATURAL: tl.constexpr = False):
    """Word m of a group holds inputs 4m..4m+3 in its bytes' low nibbles and the same + GROUP / 2 in their high
    ones (int4_words.py's reading); x's pairs are built once per word position and serve every row of the thread.
    ROPE_HALF: qkv's rotary embedding and KV-cache write in the epilogue, as gemv.py's `rope_store`. NORM: x is
    the row already times the RMSNorm's weight (the product before wrote it, WEIGHTED), the outputs times 1 / rms
    from the P sums at sumsq_in. ADD_TO: out_ptr is the residual row, this program's sum of squares to sumsq_out
    and, WEIGHTED, the new row times the next norm's weight (nw_ptr) to hw_ptr."""
    # The next kernel may launch only after the loop: let in at the start, its programs took the SMs with room first,
    # several on some while others had none (docs/performance.md, forty-fourth session)
    pdl_prologue(PDL, LATE=True)
    pid = tl.program_id(0)
    offs_n = program_rows(pid, BLOCK_N, N // 2, GATE_OUT, ROPE_HALF)
    n_mask = tl.full((BLOCK_N,), True, tl.int1) if EVEN else offs_n < N
    part, res, cos, sin, slot = fold_inputs(pid, offs_n, n_mask, out_ptr, sumsq_in, P, cos_ptr, sin_ptr, slot_ptr,
                                            NORM, ADD_TO, ROPE_HALF, P_BLOCK, BLOCK_N)
    rows_w = offs_n[:, None, None].to(tl.int64) * stride_wn
    rows_s = offs_n[:, None].to(tl.int64) * stride_sn
    acc = tl.zeros((BLOCK_N, BLOCK_K // GROUP, GROUP // 8), dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        v, grp, k_mask, base = word_tile(w_ptr, rows_w, n_mask, k0, K, GROUP, BLOCK_K, EVEN)
        xm = k_mask[None, :, None]
        # base / 4 in x's int64 words, built from aranges: the compiler then sees a thread's words as contiguous
        # and copies them 16 bytes at a time (from base // 4 it issued one 8-byte copy each, with its own address)
        qa = (k0 // 4 + tl.arange(0, BLOCK_K // GROUP)[:, None] * (GROUP // 4) + tl.arange(0, GROUP // 8)[None, :])
        pa0, pa1 = _pairs(x_ptr, xq_ptr, base, qa[None, :, :], xm, K, GATED, NATURAL)
        pb0, pb1 = _pairs(x_ptr, xq_ptr, base + GROUP // 2, qa[None, :, :] + GROUP // 8, xm, K, GATED, NATURAL)
        dot: tl.constexpr = _NATURAL_DOT if NATURAL else _SPREAD_DOT
        t = tl.inline_asm_elementwise(dot, "=f,r,r,r,r,r,r,r,r", [v, pa0, pb0, pa1, pb1, nibbles, magic, bias],
                                      dtype=tl.float32, is_pure=True, pack=1)
        s_mask = n_mask[:, None] & k_mask[None, :]
        s = tl.load(s_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)
        acc += s[:, :, None] * t
        if ASYM:
            mn = tl.load(m_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32) + 8.0 * s
            acc += mn[:, :, None] * (_pair_sum(pa0) + _pair_sum(pa1) + _pair_sum(pb0) + _pair_sum(pb1))
    pdl_launch_next(PDL, LATE=True)
    store_folded(tl.sum(tl.sum(acc, axis=2), axis=1), pid, offs_n, n_mask, N, K, out_ptr, b_ptr, eps, part, res,
                 sumsq_out, nw_ptr, hw_ptr, cos, sin, slot, kc_ptr, vc_ptr, stride_slot, HAS_BIAS, NORM, ADD_TO,
                 WEIGHTED, GATE_OUT, NH, NKV, ROPE_HALF, BLOCK_N)


def pairs_config(N: int, K: int, group: int, asym: bool, gated: bool = False) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, stages): kernel_check's int4_sweep at one row over Llama-3.1-8B's matrices (an
    H100; gate_up returning silu(gate) * up, down_proj reading a plain row): 16 rows of 1,024 inputs for the MLP's
    down_proj (K > 8,192; 8 warps asymmetric, unless it computes the gate in its loads, which each warp repeats),
    32 of 256 for the widest (gate_up; 512 asymmetric), 16 of 512 for the attention's."""
    if K > 8192:
        return 16, max(group, 1024), 8 if asym and not gated else 4, 3
    if N > 8192:
        return 32, max(group, 512 if asym else 256), 4, 3
    return 16, max(group, 512), 4, 3


def pairs_ok(x: torch.Tensor) -> bool:
    """Whether w4gemv_pairs can take x: bf16 on a GPU (inline PTX; an fp16 model's products could overflow)."""
    return x.dtype == torch.bfloat16 and x.is_cuda


def w4gemv_pairs(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
                 bias: torch.Tensor | None, gated: bool, config: tuple[int, int, int, int] | None, pdl: bool,
                 sizes: tuple[int, int, int], gate_out: bool = False, rope: RopeCache | None = None,
                 norm: RowNorm | None = None, add_to: torch.Tensor | None = None,
                 next_norm: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """x: [1, K] (or [1, 2K] gated) bf16 -> [1, N] (with `gate_out`, w's rows [gate | up]: silu(gate) * up,
    [1, N / 2]; with `rope`, w's rows qkv's: q and k rotated, k and v in the cache, as gemv.py's `rope`); `sizes`
    (N, K, group) as int4.check_codes gives them. `norm`: x is the row times the norm's weight (`next_norm` of the
    product before), the outputs are scaled by 1 / rms from `norm.sumsq` (its weight is not read). `add_to`: the
    residual row [1, N], added into in place; returns (its sums of squares, one per program, float32; the new row
    times `next_norm` [1, N], None without one)."""
    N, K, group = sizes
    assert x.dtype == torch.bfloat16 and x.shape == (1, 2 * K if gated else K) and x.is_contiguous()
    x = x if x.data_ptr() % 8 == 0 else x.clone()  # read 8 bytes at a time (a row inside a wider buffer may not be)
    folds = int(gate_out) + int(rope is not None) + int(add_to is not None)
    assert not (gated and gate_out) and (N % 2 == 0 or not gate_out) and folds <= 1
    assert add_to is None or (add_to.shape == (1, N) and add_to.is_contiguous())
    bn, bk, warps, stages = config or pairs_config(N, K, group, minimum is not None, gated)
    assert bk % group == 0, (bk, group)
    grid = triton.cdiv(N // 2 if gate_out else N, bn // 2 if gate_out else bn)
    if add_to is not None:
        out, sums_out = add_to, torch.empty(grid, dtype=torch.float32, device=x.device)
    else:
        out, sums_out = torch.empty(1, N // 2 if gate_out else N, dtype=x.dtype, device=x.device), scale
    weighted = torch.empty_like(add_to) if add_to is not None and next_norm is not None else None
    words = w.view(torch.int32)
    r = rope_args(rope, N) if rope is not None else (scale,) * 5 + (0,)
    heads = (rope.num_heads, rope.num_kv_heads, rope.head_dim // 2) if rope is not None else (0, 0, 0)
    sums, eps = (norm.sumsq, norm.eps) if norm is not None else (scale, 0.0)
    P = sums.numel() if norm is not None else 1
    _w4gemv_pairs_kernel[(grid,)](
        x, x.view(torch.int64), words, scale, minimum if minimum is not None else scale,
        bias if bias is not None else scale, out, N, K, words.stride(0), scale.stride(0), NIBBLES, MAGIC,
        BIAS, *r, sums, sums_out, P, eps, next_norm if weighted is not None else scale,
        weighted if weighted is not None else scale, ASYM=minimum is not None, HAS_BIAS=bias is not None,
        GATED=gated, GATE_OUT=gate_out, GROUP=group, BLOCK_N=bn, BLOCK_K=bk, STAGES=stages,
        EVEN=K % bk == 0 and out.shape[1] % (bn // 2 if gate_out else bn) == 0, num_warps=warps, NH=heads[0],
        NKV=heads[1], ROPE_HALF=heads[2], NORM=norm is not None, ADD_TO=add_to is not None,
        WEIGHTED=weighted is not None, P_BLOCK=triton.next_power_of_2(P), NATURAL=K <= NATURAL_MAX_K,
        **launch_args(pdl))
    return (sums_out, weighted) if add_to is not None else out
