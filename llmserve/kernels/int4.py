"""`y = x @ W^T` for 4-bit group weights (W4A16), in Triton; the torch twin is Int4Linear's reference path
(llmserve/model/int4.py: dequantize, then F.linear), which the tests compare against.

Weights: uint8 [N, K / 2] in the group-halves layout (byte i of a group of g holds element i in its low nibble
and element i + g/2 in its high one), scales (and minimums) [N, K / g] in 16 bits, or 32 (GGUF Q4_K: every load
below converts them to float32, so either works unchanged); "sym" w = s * (q - 8), "asym"
w = s * q + m. `& 15` gives a byte's low half and `>> 4` its high one, and x is loaded twice at the matching
offsets (+ 0 and + g/2), so nothing is interleaved in registers.
- `w4gemv` (M = 1, batch-1 decode): a tile of BLOCK_K inputs (whole groups) is one byte load shaped [BLOCK_N,
  groups, g / 2], so a group's scale is one load broadcast over it; CUDA-core FMAs, per element acc += s * (q_lo *
  x_lo + q_hi * x_hi) (sym: q - 8; asym adds m * (x_lo + x_hi)), codes to float by a bit trick (no I2F);
  `gated=True` computes the MLP's silu(gate) * up while loading x, as the 16/8-bit GEMV does.
  From K > 8,192 inputs (down_proj) the word-reading GEMV of llmserve/kernels/int4_words.py runs instead.
- `w4mm` (M > 1): tensor cores, a K tile one group at a time: the group's low and high halves' codes (q - 8, or q:
  exact in 16 bits) are multiplied as `Q_half [BN, g/2] @ x_half^T [g/2, BM]`, W the wide operand (BM >= 16), and
  the group's sums scaled (asym: plus m times the group's x sums); above `MM_SCALE_ROWS` / `MM_MAGIC_ROWS` each
  weight dequantized to the activation dtype first (the value the torch twin rounds to). Every load is a 2D tile of
  contiguous columns.
  The gate is applied first by llmserve.kernels.fused.silu_mul (as linear.wmm does by default).
- bf16 activations, groups of 128, 2 to MMA_ROWS rows (one row too with MMA_ONE_ROW, with the GEMV's folds): the
  Gluon kernel of llmserve/kernels/int4_mma.py (mma.sync, x's rows the mma's N) instead of w4mm's others.
- bf16 activations on Hopper, 2 rows to WGMMA_ROWS (inclusive): the Gluon kernel of llmserve/kernels/int4_wgmma.py
  instead (asynchronous wgmma, which `tl.dot` here is not).
- From DEQUANT_ROWS rows (prompt steps, decode steps of many streams): W dequantized to the activation dtype by
  `_w4dequant_kernel`, bit for bit the torch twin's weight, then cuBLAS (as vLLM's AWQ path does from 256 tokens):
  the dequantization reads half a byte and writes two a weight (~5 ms over an 8B model), which pays from ~200 rows.
Launch shapes: bench/kernel_check's `int4_sweep` on the H200 (docs/performance.md has the figures); w4mm splits K
for small M (float32 partials summed in order).
`pdl=True`: programmatic dependent launch (see llmserve.kernels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve.kernels import NUM_SMS, int4_mma, int4_wgmma, launch_args
from llmserve.kernels.after_gemv import finished, gate_applied, normed
from llmserve.kernels.gemv import RopeCache, RowNorm
from llmserve.kernels.group_tiles import k_slices, load_x, store_rows, store_tile, summed
from llmserve.kernels.int4_pairs import pairs_ok, w4gemv_pairs
from llmserve.kernels.int4_words import w4gemv_words
from llmserve.kernels.pdl import pdl_prologue


@triton.jit
def _tile(k0, K, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """One K tile as [groups, half a group]: (byte offsets from k0 / 2, low-nibble input index, group index per
    group, mask of the groups inside K). Byte i of a group holds input i (low nibble) and i + GROUP // 2 (high)."""
    j = tl.arange(0, BLOCK_K // GROUP)
    i = tl.arange(0, GROUP // 2)
    byte = j[:, None] * (GROUP // 2) + i[None, :]
    lo = k0 + j[:, None] * GROUP + i[None, :]
    return byte, lo, k0 // GROUP + j, (k0 + j * GROUP) < K


@triton.jit
def _codes(p, ASYM: tl.constexpr):
    """Low and high nibbles of int32 bytes `p` as float32 (sym: minus 8), without an I2F: bits(2**23) | q is
    the float 2**23 + q (linear.py's int8 trick)."""
    lo = ((p & 15) | 0x4B000000).to(tl.float32, bitcast=True)
    hi = ((p >> 4) | 0x4B000000).to(tl.float32, bitcast=True)
    if ASYM:  # if/else both returning, as linear.py's _to_f32 does
        return lo - 8388608.0, hi - 8388608.0
    else:
        return lo - 8388616.0, hi - 8388616.0


@triton.jit
def _magic_codes(p, dtype: tl.constexpr, ASYM: tl.constexpr):
    """The low and high nibbles of int32 bytes `p` as 16-bit floats offset + code by integer ops alone (a code ORed
    into the mantissa of 128 in bf16, 1024 in fp16, whose last bit is worth 1), and what takes the codes back to q - 8
    (sym) or q: offset + 8, or offset, times the sum of x."""
    p16 = p.to(tl.int16)
    magic: tl.constexpr = 0x4300 if dtype == tl.bfloat16 else 0x6400
    base: tl.constexpr = 128.0 if dtype == tl.bfloat16 else 1024.0
    lo = ((p16 & 15) | magic).to(dtype, bitcast=True)
    hi = ((p16 >> 4) | magic).to(dtype, bitcast=True)
    return lo, hi, base if ASYM else base + 8.0


@triton.jit
def _w4gemv_kernel(x_ptr, w_ptr, s_ptr, m_ptr, b_ptr, out_ptr, N, K, stride_wn, stride_sn,
                   ASYM: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, GROUP: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr):
    """One row of x: each weight byte read once, both nibbles used; a group's products are summed first and
    its scale applied once (a scale per element cost as many loads as the weight bytes)."""
    pdl_prologue(PDL)
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    rows_w = offs_n[:, None, None].to(tl.int64) * stride_wn
    rows_s = offs_n[:, None].to(tl.int64) * stride_sn
    acc = tl.zeros((BLOCK_N, BLOCK_K // GROUP), dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        byte, lo, grp, k_mask = _tile(k0, K, GROUP, BLOCK_K)
        p = tl.load(w_ptr + rows_w + (k0 // 2 + byte)[None, :, :],
                    mask=n_mask[:, None, None] & k_mask[None, :, None], other=0).to(tl.int32)
        s_mask = n_mask[:, None] & k_mask[None, :]
        s = tl.load(s_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)
        x_lo = load_x(x_ptr, lo, k_mask[:, None], K, GATED)
        x_hi = load_x(x_ptr, lo + GROUP // 2, k_mask[:, None], K, GATED)
        q_lo, q_hi = _codes(p, ASYM)
        acc += s * tl.sum(q_lo * x_lo[None, :, :] + q_hi * x_hi[None, :, :], axis=2)
        if ASYM:
            m = tl.load(m_ptr + rows_s + grp[None, :], mask=s_mask, other=0.0).to(tl.float32)
            acc += m * tl.sum(x_lo + x_hi, axis=1)[None, :]
    store_rows(acc, b_ptr, out_ptr, offs_n, n_mask, HAS_BIAS)


@triton.jit
def _w4mm_kernel(x_ptr, w_ptr, s_ptr, m_ptr, b_ptr, out_ptr, M, N, K, K_SPLIT, stride_xm, stride_wn, stride_sn,
                 stride_om, ASYM: tl.constexpr, HAS_BIAS: tl.constexpr, GROUP: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
                 SCALE_ROWS: tl.constexpr = 0, MAGIC_ROWS: tl.constexpr = 0):
    """A K tile one group at a time (a static loop), so every load is a 2D tile of contiguous columns: the
    compiler then loads x as vectors the software pipeliner copies ahead (offsets reshaped from a [groups, half]
    grid hide that contiguity: one synchronous 2-byte load per element). Up to MAGIC_ROWS or SCALE_ROWS rows a
    program the codes go to the tensor cores and each group's sums are scaled; above, each weight is dequantized."""
    pdl_prologue(PDL)
    pid_m = tl.program_id(0)  # M fastest: neighbouring programs share the W tile (large M) in L2
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)  # split-K: this program's K_SPLIT inputs, a float32 partial in its own out slice
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    n_mask = offs_n < N
    HALF: tl.constexpr = GROUP // 2
    i = tl.arange(0, HALF)
    rows_w = offs_n[:, None].to(tl.int64) * stride_wn
    rows_s = offs_n.to(tl.int64) * stride_sn
    rows_x = offs_m[:, None].to(tl.int64) * stride_xm
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    k_end = tl.minimum(K, (pid_k + 1) * K_SPLIT)
    for k0 in range(pid_k * K_SPLIT, k_end, BLOCK_K):
        for j in tl.static_range(BLOCK_K // GROUP):
            kg = k0 + j * GROUP  # the group's first input; its bytes start at kg / 2
            inside = kg < k_end
            w_mask = n_mask & inside
            p = tl.load(w_ptr + rows_w + (kg // 2 + i)[None, :], mask=w_mask[:, None], other=0).to(tl.int32)
            s = tl.load(s_ptr + rows_s + kg // GROUP, mask=w_mask, other=0.0).to(tl.float32)[:, None]
            q_lo, q_hi = _codes(p, ASYM)
            x_mask = m_mask[:, None] & inside
            x_lo = tl.load(x_ptr + rows_x + (kg + i)[None, :], mask=x_mask, other=0.0)
            x_hi = tl.load(x_ptr + rows_x + (kg + HALF + i)[None, :], mask=x_mask, other=0.0)
            if BLOCK_M <= MAGIC_ROWS:
                c_lo, c_hi, offset = _magic_codes(p, x_lo.dtype, ASYM)
                part = tl.dot(c_lo, tl.trans(x_lo))
                part = tl.dot(c_hi, tl.trans(x_hi), part)
                xs = tl.sum(x_lo.to(tl.float32) + x_hi.to(tl.float32), axis=1)[None, :]
                acc += s * (part - offset * xs)
                if ASYM:
                    acc += tl.load(m_ptr + rows_s + kg // GROUP, mask=w_mask, other=0.0).to(tl.float32)[:, None] * xs
            elif BLOCK_M <= SCALE_ROWS:
                part = tl.dot(q_lo.to(x_lo.dtype), tl.trans(x_lo))
                part = tl.dot(q_hi.to(x_hi.dtype), tl.trans(x_hi), part)
                acc += s * part
                if ASYM:
                    m = tl.load(m_ptr + rows_s + kg // GROUP, mask=w_mask, other=0.0).to(tl.float32)[:, None]
                    acc += m * tl.sum(x_lo.to(tl.float32) + x_hi.to(tl.float32), axis=1)[None, :]
            else:
                w_lo = s * q_lo  # s * (q - 8), or s * q + m: the twin's float32 values, rounded to x's dtype below
                w_hi = s * q_hi
                if ASYM:
                    m = tl.load(m_ptr + rows_s + kg // GROUP, mask=w_mask, other=0.0).to(tl.float32)[:, None]
                    w_lo += m
                    w_hi += m
                acc = tl.dot(w_lo.to(x_lo.dtype), tl.trans(x_lo), acc)
                acc = tl.dot(w_hi.to(x_hi.dtype), tl.trans(x_hi), acc)
    store_tile(acc, b_ptr, out_ptr, offs_m, offs_n, m_mask, n_mask, M, stride_om, pid_k, HAS_BIAS)


@triton.jit
def _w4dequant_kernel(w_ptr, s_ptr, m_ptr, out_ptr, N, K, stride_wn, stride_sn, stride_on, ASYM: tl.constexpr,
                      GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """W [N, K] in out's dtype: float32 s * (q - 8), or s * q + m (launched without fused multiply-adds, as the twin
    rounds the product and the sum apart), then rounded once."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    n_mask = offs_n < N
    byte, lo, grp, k_mask = _tile(k0, K, GROUP, BLOCK_K)
    mask = n_mask[:, None, None] & k_mask[None, :, None]
    p = tl.load(w_ptr + offs_n[:, None, None].to(tl.int64) * stride_wn + (k0 // 2 + byte)[None, :, :], mask=mask,
                other=0).to(tl.int32)
    groups = offs_n[:, None].to(tl.int64) * stride_sn + grp[None, :]
    s_mask = n_mask[:, None] & k_mask[None, :]
    s = tl.load(s_ptr + groups, mask=s_mask, other=0.0).to(tl.float32)[:, :, None]
    q_lo, q_hi = _codes(p, ASYM)
    w_lo, w_hi = s * q_lo, s * q_hi
    if ASYM:
        m = tl.load(m_ptr + groups, mask=s_mask, other=0.0).to(tl.float32)[:, :, None]
        w_lo, w_hi = w_lo + m, w_hi + m
    out = out_ptr + offs_n[:, None, None].to(tl.int64) * stride_on + lo[None, :, :]
    tl.store(out, w_lo.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out + GROUP // 2, w_hi.to(out_ptr.dtype.element_ty), mask=mask)


def check_codes(w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None, storage: torch.dtype = torch.uint8,
                per_byte: int = 2, groups: tuple[int, ...] = (32, 64, 128)) -> tuple[int, int, int]:
    """(N, K, group size) of a weight of codes (`per_byte` a `storage` element: int4's 2 a uint8, int8 groups' 1
    an int8), checked against its scales."""
    N, width = w.shape
    K = per_byte * width
    group = K // scale.shape[1]
    assert w.dtype == storage and group * scale.shape[1] == K, (w.shape, scale.shape)
    assert group in groups and w.stride(1) == 1 and scale.stride(1) == 1
    assert minimum is None or (minimum.shape == scale.shape and minimum.stride(1) == 1)
    return N, K, group


def gemv_config(N: int, K: int, group: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, stages): 256 bytes per row a tile (512 inputs, whole groups); the widest
    matrices (the MLP's gate_up, its down) took more rows or warps a program in bench/kernel_check's sweep."""
    bk = max(group, min(512, triton.next_power_of_2(K)))
    if K > 8192:
        return 8, bk, 8, 3
    return (32 if N > 8192 else 16), bk, 4, 3


# The one-row GEMV in paired bf16 arithmetic (int4_pairs.py) for bf16 activations on a GPU: 2-5% faster over all
# linears at one row (docs/performance.md)
PAIRS_GEMV = True
# At one row, the MLP's silu(gate) * up in gate_up's paired GEMV (`gate_out`) rather than in down_proj's x loads,
# where each of its N / BLOCK_N programs computed the gate for all 14,336 inputs (docs/performance.md)
GATE_OUT = True
# At one row, qkv's rotary embedding and cache write in its paired GEMV's epilogue (`rope`), not a rope_and_cache launch
ROPE_IN_GEMV = True
# From 2 to MMA_ROWS rows of bf16 x, groups of 128: the tensor cores' mma.sync (llmserve/kernels/int4_mma.py: a word
# of codes in ~17 SASS instructions, x's 1-8 rows for the price of one), faster than the wgmma kernel at 8 rows
# (docs/performance.md, thirty-eighth session)
MMA_ROWS = 8
# At one row too, with the paired GEMV's folds: no, the paired GEMV was faster at every launch shape timed (same)
MMA_ONE_ROW = False
# Whether the paired GEMV launches with programmatic dependent launch when the graph asks for it: no, launched early
# it made the batch-1 decode graph 0.65 ms slower (docs/performance.md, thirty-first session), as fp8's `wmm` was
PAIRS_PDL = False
# At one row, the RMSNorms in the paired GEMVs: o_proj and down_proj add into the residual and write the new row times
# the next norm's weight (`add_to`, `next_norm`), qkv and gate_up read it and scale their outputs by 1 / rms (`norm`)
FOLD_NORM = True


def w4gemv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None = None,
           bias: torch.Tensor | None = None, gated: bool = False, config: tuple[int, int, int, int] | None = None,
           pdl: bool = False, words: bool | None = None, pairs: bool | None = None, gate_out: bool = False,
           rope: RopeCache | None = None, norm: RowNorm | None = None, add_to: torch.Tensor | None = None,
           next_norm: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """x: [1, K] (or [1, 2K] gated) -> [1, N]. `pairs`: the paired-bf16 kernel (llmserve/kernels/int4_pairs.py;
    None: PAIRS_GEMV where it can run). `words`: the word-reading kernel (llmserve/kernels/int4_words.py); None:
    from K > 8,192 (the MLP's down_proj, where it measured faster) unless a `config` is given. `gate_out` (w: the
    MLP's [gate | up] rows): silu(gate) * up, [1, N / 2]; `rope` (w: qkv's rows): q and k rotated, k and v written
    to the cache (gemv.py's `rope`); `norm`, `add_to`, `next_norm`: the RMSNorm folds (int4_pairs.py). All in the
    paired kernel's epilogue; the others compute them after, with torch or a launch."""
    sizes = check_codes(w, scale, minimum)
    if (pairs is None and words is None and config is None and MMA_ONE_ROW and not gated
            and int4_mma.usable(x, w, sizes[2])):
        return int4_mma.w4mma(x, w, scale, minimum, bias, sizes, gate_out, rope, norm, add_to, next_norm)
    if pairs or (pairs is None and PAIRS_GEMV and pairs_ok(x)):
        return w4gemv_pairs(x, w, scale, minimum, bias, gated, config, pdl and PAIRS_PDL, sizes, gate_out, rope,
                            norm, add_to, next_norm)
    if gate_out or rope is not None or norm is not None or add_to is not None:
        y = w4gemv(x, w, scale, minimum, None if norm else bias, gated, config, pdl, words, pairs=False)
        return finished(normed(y, bias, norm, sizes[1]) if norm else y, gate_out, rope, add_to, next_norm, pdl)
    if words or (words is None and config is None and sizes[1] > 8192):
        return w4gemv_words(x, w, scale, minimum, bias, gated, config, pdl, sizes)
    return launch_gemv(_w4gemv_kernel, x, w, scale, minimum, bias, gated, config, pdl, sizes)


def launch_gemv(kernel, x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
                bias: torch.Tensor | None, gated: bool, config: tuple[int, int, int, int] | None, pdl: bool,
                sizes: tuple[int, int, int]) -> torch.Tensor:
    """One program per BLOCK_N outputs; `kernel` takes _w4gemv_kernel's arguments (as the 8-bit groups' does)."""
    N, K, group = sizes
    assert x.shape == (1, 2 * K if gated else K) and x.stride(-1) == 1
    bn, bk, warps, stages = config or gemv_config(N, K, group)
    assert bk % group == 0, (bk, group)
    out = torch.empty(1, N, dtype=x.dtype, device=x.device)
    kernel[(triton.cdiv(N, bn),)](
        x, w, scale, minimum if minimum is not None else scale, bias if bias is not None else scale, out,
        N, K, w.stride(0), scale.stride(0), ASYM=minimum is not None, HAS_BIAS=bias is not None, GATED=gated,
        GROUP=group, BLOCK_N=bn, BLOCK_K=bk, STAGES=stages, num_warps=warps, **launch_args(pdl))
    return out


# (BLOCK_N, BLOCK_K, num_warps, num_stages) per M bucket above 16 rows: linear.py's 8-bit table, BLOCK_K at
# least a group.
CONFIGS: dict[int, tuple[int, int, int, int]] = {32: (32, 256, 4, 4), 64: (64, 128, 4, 4), 128: (128, 128, 8, 3)}


# Up to 16 rows, int4's (BLOCK_N, BLOCK_K, warps) a program, per weights: bench/kernel_check's int4_sweep at 8 rows
# over Llama-3.1-8B's linears on an H100 (docs/performance.md, thirty-third session)
SMALL_TILES = {"sym": (64, 128, 4), "asym": (64, 256, 4)}


def mm_config(M: int, N: int, K: int, group: int,
              small: tuple[int, int, int] | None = None) -> tuple[int, int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, split-K). Up to 16 rows `small` (BLOCK_N, BLOCK_K, warps), else the
    H200 sweep's 128 outputs and 8 warps a program (what the 8-bit groups keep), and K split until about a thousand
    programs (at most 8 ways, two tiles or more each): a program per SM or two cannot keep the weight reads busy.
    Above 16 rows K is split only while there are fewer than two programs per SM."""
    if M <= 16:
        bn, bk, warps = small or (128, 256 if N <= 4096 else 128, 8)
        bm, bk, stages = 16, max(bk, group), 3
        limit, min_tiles = 512, 2
    else:
        bm = 32 if M <= 32 else 64 if M <= 64 else 128
        bn, bk, warps, stages = CONFIGS[bm]
        bk = max(bk, group)
        limit, min_tiles = 2 * NUM_SMS - 1, 4
    split, tiles = 1, triton.cdiv(N, bn) * triton.cdiv(M, bm)
    while split < 8 and tiles * split <= limit and K // (2 * split) >= min_tiles * bk:
        split *= 2
    return bm, bn, bk, warps, stages, split


# Up to these rows a program (BLOCK_M), by weights, the tensor-core kernel multiplies a group's codes (exact in 16 bits)
# with x and scales the group's sums rather than dequantizing each weight first: one FMA a group and output rather than
# a multiply a weight; more exact than the twin (whose weights round to 16 bits), so within its tolerance. MAGIC: the
# codes as offset + code by integer ops alone, the offset taken back out through the group's x sums (which asymmetric
# weights need anyway). Each the faster way where it is on, per weights (docs/performance.md, thirty-second session;
# asymmetric at 64 rows the x sums cost more than they save).
MM_SCALE_ROWS = {"sym": 64, "asym": 0}
MM_MAGIC_ROWS = {"sym": 0, "asym": 16}

# bf16 activations on Hopper from 2 rows to WGMMA_ROWS: the Gluon kernel of llmserve/kernels/int4_wgmma.py (W the
# register operand of asynchronous wgmma). Over Llama-3.1-8B's linears on an H100 it beats the Triton kernel and
# dequantize + cuBLAS at every row count measured, 8 to 2,048 (2,048 rows: 42.7 against 46.6 ms with 256-row blocks);
# beyond that it is unmeasured and W is dequantized (docs/performance.md, thirty-fourth and thirty-fifth sessions).
WGMMA = True
WGMMA_ROWS = 2048

# Rows from which a matmul dequantizes W and calls cuBLAS (`dequant_linear`): where the two paths' times cross
# over all linears of Llama-3.1-8B on the H200 (kernel_check int4_paths; docs/performance.md).
DEQUANT_ROWS = 192


def w4mm(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None = None,
         bias: torch.Tensor | None = None, gated: bool = False,
         config: tuple[int, int, int, int, int, int] | None = None, pdl: bool = False) -> torch.Tensor:
    """x: [M, K] (or [M, 2K] gated), w: packed [N, K / 2], scale (and minimum): [N, K / g]. Returns [M, N].
    `config` given: the tensor-core kernel with that launch shape, whatever M."""
    sizes = check_codes(w, scale, minimum)
    if config is None and x.shape[0] == 1:
        return w4gemv(x, w, scale, minimum, bias, gated, pdl=pdl)
    if config is None and x.shape[0] <= MMA_ROWS and int4_mma.usable(x, w, sizes[2]):
        return int4_mma.w4mma(gate_applied(x, sizes[1], gated, pdl), w, scale, minimum, bias, sizes)
    if config is None and WGMMA and x.shape[0] <= WGMMA_ROWS and int4_wgmma.usable(x, w):
        return int4_wgmma.w4wgmma(gate_applied(x, sizes[1], gated, pdl), w, scale, minimum, bias, sizes)
    if config is None and x.shape[0] >= DEQUANT_ROWS:
        return w4mm_dequant(x, w, scale, minimum, bias, gated, pdl)
    kind = "sym" if minimum is None else "asym"
    config = config or mm_config(x.shape[0], *sizes, SMALL_TILES[kind])
    return launch_mm(_w4mm_kernel, x, w, scale, minimum, bias, gated, config, pdl, sizes,
                     SCALE_ROWS=MM_SCALE_ROWS[kind], MAGIC_ROWS=MM_MAGIC_ROWS[kind])


def w4mm_dequant(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, gated: bool = False, pdl: bool = False) -> torch.Tensor:
    """w4mm's path from DEQUANT_ROWS rows, whatever M: W dequantized whole, then cuBLAS."""
    return dequant_linear(_w4dequant_kernel, x, w, scale, minimum, bias, gated, pdl, check_codes(w, scale, minimum))


def dequant_linear(kernel, x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
                   bias: torch.Tensor | None, gated: bool, pdl: bool, sizes: tuple[int, int, int]) -> torch.Tensor:
    """Many rows: W in x's dtype made by `kernel` (_w4dequant_kernel's arguments; the 8-bit groups' too), which is
    the torch twin's weight bit for bit, then F.linear: the twin's own computation."""
    N, K, group = sizes
    x = gate_applied(x, K, gated, pdl)
    w16 = torch.empty(N, K, dtype=x.dtype, device=x.device)
    bn, bk = 16, max(256, group)
    kernel[(triton.cdiv(N, bn), triton.cdiv(K, bk))](
        w, scale, minimum if minimum is not None else scale, w16, N, K, w.stride(0), scale.stride(0), w16.stride(0),
        ASYM=minimum is not None, GROUP=group, BLOCK_N=bn, BLOCK_K=bk, num_warps=4, enable_fp_fusion=False)
    return torch.nn.functional.linear(x, w16, bias)


def launch_mm(kernel, x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
              bias: torch.Tensor | None, gated: bool, config: tuple[int, int, int, int, int, int] | None, pdl: bool,
              sizes: tuple[int, int, int], **consts) -> torch.Tensor:
    """(M, N, split-K) programs; `kernel` takes _w4mm_kernel's arguments (as the 8-bit groups' does), and `consts`."""
    M = x.shape[0]
    N, K, group = sizes
    x = gate_applied(x, K, gated, pdl)
    assert x.stride(1) == 1
    if M == 0:
        return torch.empty(M, N, dtype=x.dtype, device=x.device)
    bm, bn, bk, warps, stages, split = config or mm_config(M, N, K, group)
    assert bk % group == 0, (bk, group)
    k_split, out = k_slices(x, N, K, split, bk)
    kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn), out.shape[0])](
        x, w, scale, minimum if minimum is not None else scale, bias if bias is not None else scale, out,
        M, N, K, k_split, x.stride(0), w.stride(0), scale.stride(0), out.stride(1), ASYM=minimum is not None,
        HAS_BIAS=bias is not None, GROUP=group, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
        num_stages=stages, **consts, **launch_args(pdl))
    return summed(out, x.dtype)
