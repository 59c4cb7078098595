"""Paged attention in Triton over the cache layout [2, num_blocks, block_size, kv_heads, head_dim] (one layer).

- `decode_attention`: one query token per sequence (the CUDA-graph path). Split-K ("flash decoding"): a
  program per (sequence, kv head, partition) handles all query heads of its GQA group at once (rows padded
  to 16 for the tensor cores), then a second kernel merges the partitions. The launch shape is fixed (one
  graph serves every step), but each sequence's span per partition follows its own context length: its
  context split evenly over the partitions, in whole tiles of one or two cache blocks; programs past the end
  return. Blocks must be a power of two from 16 tokens (`decode_page_ok`).
- `varlen_attention`: any number of new tokens per sequence (prefill, chunked prefill, mixed steps). A
  program per (block of query rows, kv head); rows are (query, head-of-group) pairs, so GQA groups share
  each K/V tile; causal within the new tokens, full over the cached prefix.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.ragged_tma import create_ragged_descriptor, load_ragged

from llmserve.kernels.convert import e4m3_to_bf16, ptx_converts
from llmserve.kernels.shapes import decode_page_ok, varlen_block_m


@triton.jit
def _span(ctx, NUM_PARTS: tl.constexpr, TILE: tl.constexpr):
    """Tokens per partition for a context of ctx tokens: an even split, in whole tiles."""
    return tl.cdiv(tl.cdiv(ctx, NUM_PARTS), TILE) * TILE


@triton.jit
def _kv(x, dtype, KV_FP8: tl.constexpr):
    """A loaded K/V tile in the dots' dtype. KV_FP8: 0 a 16-bit cache; e4m3: 1 Triton's conversion (to fp16, the
    dots in fp16), 2 `e4m3_to_bf16` kept in place (converted in registers, to shared memory as bf16)."""
    if KV_FP8 == 2:
        return e4m3_to_bf16(x, False)
    return x.to(dtype)


@triton.jit
def _page(q, k_ptr, v_ptr, bt_ptr, bt_row, pg, kvh, t, d, end, qk_scale, stride_blk, stride_tok, D: tl.constexpr,
          PAGE: tl.constexpr, MASKED: tl.constexpr, KV_FP8: tl.constexpr):
    """Scores and V of one cache block (tokens pg * PAGE + t): one block-table read and a scalar base address, so
    the loads' addresses are that base plus constants (per-token offsets made a 1-warp program instruction-bound).
    MASKED: tokens at or past `end` score -inf and load as zeros (a stale NaN there stays out of the dots)."""
    toks = pg * PAGE + t
    if MASKED:
        live = toks < end
        blk = tl.load(bt_ptr + bt_row + pg, mask=pg * PAGE < end, other=0).to(tl.int64)
        off = blk * stride_blk + kvh * D + t[:, None] * stride_tok + d[None, :]
        k = _kv(tl.load(k_ptr + off, mask=live[:, None], other=0.0), q.dtype, KV_FP8)
        v = _kv(tl.load(v_ptr + off, mask=live[:, None], other=0.0), q.dtype, KV_FP8)
        s = tl.where(live[None, :], tl.dot(q, tl.trans(k)) * qk_scale, float("-inf"))
    else:
        blk = tl.load(bt_ptr + bt_row + pg).to(tl.int64)
        off = blk * stride_blk + kvh * D + t[:, None] * stride_tok + d[None, :]
        k = _kv(tl.load(k_ptr + off), q.dtype, KV_FP8)
        v = _kv(tl.load(v_ptr + off), q.dtype, KV_FP8)
        s = tl.dot(q, tl.trans(k)) * qk_scale
    return s, v


@triton.jit
def _decode_tile(q, m_i, l_i, acc, k_ptr, v_ptr, bt_ptr, bt_row, n0, kvh, t, d, end, qk_scale, stride_blk, stride_tok,
                 D: tl.constexpr, PAGE: tl.constexpr, PAGES: tl.constexpr, MASKED: tl.constexpr,
                 KV_FP8: tl.constexpr):
    """The online softmax over PAGES (1 or 2) blocks from token n0: one rescale of the accumulator for both."""
    pg = n0 // PAGE
    s, v = _page(q, k_ptr, v_ptr, bt_ptr, bt_row, pg, kvh, t, d, end, qk_scale, stride_blk, stride_tok, D, PAGE,
                 MASKED, KV_FP8)
    if PAGES == 2:
        s2, v2 = _page(q, k_ptr, v_ptr, bt_ptr, bt_row, pg + 1, kvh, t, d, end, qk_scale, stride_blk, stride_tok, D,
                       PAGE, MASKED, KV_FP8)
        m_new = tl.maximum(m_i, tl.maximum(tl.max(s, 1), tl.max(s2, 1)))
        p2 = tl.math.exp2(s2 - m_new[:, None])
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v)
    if PAGES == 2:
        l_i += tl.sum(p2, 1)
        acc += tl.dot(p2.to(q.dtype), v2)
    return m_new, l_i, acc


@triton.jit
def _decode_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, po_ptr, pml_ptr, scale,
                   stride_qb, stride_qh, stride_bt, stride_blk, stride_tok, stride_ob, stride_oh,
                   G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
                   PAGES: tl.constexpr, NUM_PARTS: tl.constexpr, KV_FP8: tl.constexpr, STAGES: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    part = tl.program_id(2)
    ctx = tl.load(ctx_ptr + b)
    TILE: tl.constexpr = PAGE * PAGES
    span = _span(ctx, NUM_PARTS, TILE)
    start = part * span
    if start < ctx:
        end = tl.minimum(start + span, ctx)
        rows = tl.arange(0, G_PAD)
        rmask = rows < G
        heads = kvh * G + rows
        d = tl.arange(0, D)
        t = tl.arange(0, PAGE)
        q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=rmask[:, None], other=0.0)
        if KV_FP8 == 1:  # e4m3 -> fp16 is one native conversion (bf16 is not): the dots run in fp16
            q = q.to(tl.float16)
        qk_scale = scale * 1.4426950408889634
        m_i = tl.full((G_PAD,), float("-inf"), tl.float32)
        l_i = tl.zeros((G_PAD,), tl.float32)
        acc = tl.zeros((G_PAD, D), tl.float32)
        # MHA pads the dots to 16 query rows: a CUDA-core product for one row was slower (docs/performance.md).
        # Whole tiles skip the masks. The launch's num_stages does not reach these loops (Triton 3.6 pipelines them
        # only when asked here).
        full_end = start + (end - start) // TILE * TILE
        for n0 in tl.range(start, full_end, TILE, num_stages=STAGES):
            m_i, l_i, acc = _decode_tile(q, m_i, l_i, acc, k_ptr, v_ptr, bt_ptr, b * stride_bt, n0, kvh, t, d, end,
                                         qk_scale, stride_blk, stride_tok, D, PAGE, PAGES, False, KV_FP8)
        for n0 in tl.range(full_end, end, TILE, num_stages=1):  # at most one tile
            m_i, l_i, acc = _decode_tile(q, m_i, l_i, acc, k_ptr, v_ptr, bt_ptr, b * stride_bt, n0, kvh, t, d, end,
                                         qk_scale, stride_blk, stride_tok, D, PAGE, PAGES, True, KV_FP8)
        if NUM_PARTS == 1:
            o = acc / l_i[:, None]
            tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :],
                     o.to(out_ptr.dtype.element_ty), mask=rmask[:, None])
        else:
            # partials: po [B, H, NUM_PARTS, D] (normalized), pml [B, H, NUM_PARTS, 2] (max, sum) in log2 units
            H = tl.num_programs(1) * G
            base = (b * H + heads) * NUM_PARTS + part
            tl.store(po_ptr + base[:, None] * D + d[None, :], acc / l_i[:, None], mask=rmask[:, None])
            tl.store(pml_ptr + base * 2, m_i, mask=rmask)
            tl.store(pml_ptr + base * 2 + 1, l_i, mask=rmask)


@triton.jit
def _merge_kernel(po_ptr, pml_ptr, ctx_ptr, out_ptr, stride_ob, stride_oh,
                  D: tl.constexpr, NUM_PARTS: tl.constexpr, P_PAD: tl.constexpr, TILE: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    H = tl.num_programs(1)
    ctx = tl.load(ctx_ptr + b)
    n_parts = tl.cdiv(ctx, _span(ctx, NUM_PARTS, TILE))
    p = tl.arange(0, P_PAD)
    pmask = p < n_parts
    base = (b * H + h) * NUM_PARTS + p
    m = tl.load(pml_ptr + base * 2, mask=pmask, other=float("-inf"))
    l_ = tl.load(pml_ptr + base * 2 + 1, mask=pmask, other=0.0)
    m_max = tl.max(m, 0)
    w = tl.where(pmask, tl.math.exp2(m - m_max) * l_, 0.0)
    d = tl.arange(0, D)
    o = tl.load(po_ptr + base[:, None] * D + d[None, :], mask=pmask[:, None], other=0.0)
    o = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, o.to(out_ptr.dtype.element_ty))


# How an e4m3 cache reaches the dots (`_kv`'s KV_FP8, for bf16 models on CUDA), the faster per kernel
DECODE_FP8_CONVERT, VARLEN_FP8_CONVERT = 1, 2
# How the varlen kernel loads a fresh prompt's own K/V: 1 pointer loads, 2 TMA (to be timed against each other)
FRESH_LOADS = 1


def _kv_mode(kv_cache: torch.Tensor, q: torch.Tensor, fp8_convert: int) -> int:
    """The kernels' KV_FP8: 0 for a 16-bit cache; an e4m3 one converts as asked, through Triton's conversion where
    the inline PTX cannot run."""
    if kv_cache.dtype != torch.float8_e4m3fn:
        return 0
    return fp8_convert if ptx_converts(q) else 1


def decode_config(max_context: int, batch: int, num_kv_heads: int) -> tuple[int, int, int, int]:
    """(partitions, BLOCK_N, num_warps, num_stages) for a launch shape that serves contexts up to max_context,
    a 16-bit cache or an fp8 one. Any split covers every context (a sequence's span is its context /
    partitions); the split decides how many programs share one context: below 1,024 programs it splits toward
    1,024 so the SMs fill. One warp a program on 32-token tiles: no cross-warp reductions or barriers in the
    online softmax, more programs in flight. From bench/kernel_check attn on the H200 (docs/performance.md)."""
    programs = batch * num_kv_heads
    # A power of two (each count is a kernel variant to compile), at most one partition per 32-token tile
    parts = min(32, 1 << max(0, (1024 // programs).bit_length() - 1), triton.cdiv(max_context, 32))
    return parts, 32, 1, 3


def decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, scale: float, max_context: int,
                     out: torch.Tensor | None = None, config: tuple[int, int, int, int] | None = None,
                     fp8_convert: int = DECODE_FP8_CONVERT) -> torch.Tensor:
    """q: [B, H, D] (any row/head strides, unit last stride); kv_cache: [2, blocks, page, KVH, D].
    block_tables: [B, W] int; context_lens: [B] int32 (>= 1), each <= max_context. `config` (default
    `decode_config`) fixes the launch shape. Returns [B, H, D]."""
    B, H, D = q.shape
    _, _, page, KVH, _ = kv_cache.shape
    if not decode_page_ok(page):
        raise ValueError(f"decode_attention: cache blocks of {page} tokens; the kernel reads whole blocks of a power "
                         "of two from 16 tokens")
    G = H // KVH
    if out is None:
        out = torch.empty(B, H, D, dtype=q.dtype, device=q.device)
    if B == 0:
        return out
    num_parts, block_n, warps, stages = config or decode_config(max_context, B, KVH)
    pages = 2 if block_n >= 2 * page else 1  # a tile of BLOCK_N tokens, in whole blocks (one or two)
    k, v = kv_cache[0], kv_cache[1]
    if num_parts > 1:
        po = torch.empty(B, H, num_parts, D, dtype=torch.float32, device=q.device)
        pml = torch.empty(B, H, num_parts, 2, dtype=torch.float32, device=q.device)
    else:
        po = pml = out
    _decode_kernel[(B, KVH, num_parts)](
        q, k, v, block_tables, context_lens, out, po, pml, scale,
        q.stride(0), q.stride(1), block_tables.stride(0), k.stride(0), k.stride(1), out.stride(0), out.stride(1),
        G=G, G_PAD=max(16, triton.next_power_of_2(G)), D=D, PAGE=page, PAGES=pages,
        NUM_PARTS=num_parts, KV_FP8=_kv_mode(kv_cache, q, fp8_convert), STAGES=stages, num_warps=warps,
        num_stages=stages)
    if num_parts > 1:
        _merge_kernel[(B, H)](po, pml, context_lens, out, out.stride(0), out.stride(1), D=D, NUM_PARTS=num_parts,
                              P_PAD=max(2, triton.next_power_of_2(num_parts)), TILE=page * pages, num_warps=4)
    return out


@triton.jit
def _new_rows(src, row0, n0, kv_end, head, d, stride_t, D: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, NEW: tl.constexpr):
    """BLOCK_N keys or values of one head of this step's K/V ([T, 2 KVH, D], the qkv buffer's view) from row
    row0 + n0: pointer loads (NEW 1), or a bounds-checked TMA load from a ragged descriptor (NEW 2; rows past
    kv_end read as zeros)."""
    if NEW == 2:
        x = tl.reshape(load_ragged(src, row0, kv_end, [n0, head, 0]), [BLOCK_N, D])
    else:
        toks = n0 + tl.arange(0, BLOCK_N)
        ptrs = src + (row0 + toks).to(tl.int64)[:, None] * stride_t + head * D + d[None, :]
        if MASKED:
            x = tl.load(ptrs, mask=(toks < kv_end)[:, None], other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _cache_rows(ptr, off, d, tmask, q, MASKED: tl.constexpr, KV_FP8: tl.constexpr):
    """BLOCK_N keys or values from the cache at `off` (per token), in the dots' dtype."""
    if MASKED:
        x = tl.load(ptr + off[:, None] + d[None, :], mask=tmask[:, None], other=0.0)
    else:
        x = tl.load(ptr + off[:, None] + d[None, :])
    return _kv(x, q.dtype, KV_FP8)


@triton.jit
def _varlen_tile(q, m_i, l_i, acc, k_ptr, v_ptr, bt_ptr, seq, kvh, n0, kv_end, pos, qk_scale, d, stride_bt,
                 stride_blk, stride_tok, D: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
                 MASKED: tl.constexpr, KV_FP8: tl.constexpr, NEW: tl.constexpr):
    """One K/V tile of the online softmax. MASKED: the tile may hold keys past kv_end or after a row's position
    (the causal diagonal); tiles every row sees whole skip the masks. NEW (> 0): the keys are this step's (a fresh
    prompt's; `seq` is then its first row, k_ptr and v_ptr this step's K/V, stride_tok their row stride), as
    `_new_rows` loads them; 0: cache blocks."""
    toks = n0 + tl.arange(0, BLOCK_N)
    tmask = toks < kv_end
    if NEW:
        k = _new_rows(k_ptr, seq, n0, kv_end, kvh, d, stride_tok, D, BLOCK_N, MASKED, NEW)
    else:
        if MASKED:
            blk = tl.load(bt_ptr + seq * stride_bt + toks // PAGE, mask=tmask, other=0).to(tl.int64)
        else:
            blk = tl.load(bt_ptr + seq * stride_bt + toks // PAGE).to(tl.int64)
        off = blk * stride_blk + (toks % PAGE) * stride_tok + kvh * D
        k = _cache_rows(k_ptr, off, d, tmask, q, MASKED, KV_FP8)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if MASKED:
        s = tl.where((toks[None, :] <= pos[:, None]) & tmask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet (padding rows)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if NEW:  # V heads follow the K heads in each row
        v = _new_rows(v_ptr, seq, n0, kv_end, kvh + tl.num_programs(1), d, stride_tok, D, BLOCK_N, MASKED, NEW)
    else:
        v = _cache_rows(v_ptr, off, d, tmask, q, MASKED, KV_FP8)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _varlen_attend(q, k_ptr, v_ptr, bt_ptr, seq, kvh, full_end, kv_end, pos, qk_scale, d, stride_bt, stride_blk,
                   stride_tok, BLOCK_M: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
                   KV_FP8: tl.constexpr, NEW: tl.constexpr, STAGES: tl.constexpr):
    """The online softmax of one query block over keys [0, kv_end): whole tiles to full_end, then masked ones."""
    if KV_FP8 == 1:  # e4m3 -> fp16 is one native conversion (bf16 is not): the dots run in fp16
        q = q.to(tl.float16)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    # K/V loads are software-pipelined only when the loop asks (the launch's num_stages does not reach it)
    for n0 in tl.range(0, full_end, BLOCK_N, num_stages=STAGES):
        m_i, l_i, acc = _varlen_tile(q, m_i, l_i, acc, k_ptr, v_ptr, bt_ptr, seq, kvh, n0, kv_end, pos, qk_scale,
                                     d, stride_bt, stride_blk, stride_tok, D, PAGE, BLOCK_N, False, KV_FP8, NEW)
    for n0 in tl.range(full_end, kv_end, BLOCK_N, num_stages=STAGES):
        m_i, l_i, acc = _varlen_tile(q, m_i, l_i, acc, k_ptr, v_ptr, bt_ptr, seq, kvh, n0, kv_end, pos, qk_scale,
                                     d, stride_bt, stride_blk, stride_tok, D, PAGE, BLOCK_N, True, KV_FP8, NEW)
    return acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]


@triton.jit
def _varlen_kernel(q_ptr, k_ptr, v_ptr, new_src, bt_ptr, ctx_ptr, qstart_ptr, qb_seq_ptr, qb_start_ptr, out_ptr,
                   scale, stride_qt, stride_qh, stride_nt, stride_bt, stride_blk, stride_tok, stride_ot, stride_oh,
                   G: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, KV_FP8: tl.constexpr, PART: tl.constexpr, NEW: tl.constexpr,
                   STAGES: tl.constexpr):
    """PART: 0 every query block over the cache; 1 fresh prompts' blocks only (context = new tokens), over their
    own K/V (`new_src`, loaded as NEW says); 2 the other blocks only, over the cache. Two launches (1 and 2) rather
    than one with both loops: the two branches' shared-memory buffers would add up (144 KB a program at 16 bits:
    half the programs per SM)."""
    qb = tl.program_id(0)
    kvh = tl.program_id(1)
    seq = tl.load(qb_seq_ptr + qb).to(tl.int64)
    q0 = tl.load(qb_start_ptr + qb)
    qs = tl.load(qstart_ptr + seq)
    ql = tl.load(qstart_ptr + seq + 1) - qs
    ctx = tl.load(ctx_ptr + seq)
    QPB: tl.constexpr = BLOCK_M // G
    r = tl.arange(0, BLOCK_M)
    qi = q0 + r // G
    rmask = (r < QPB * G) & (qi < ql)
    if PART != 0:  # whether this launch takes the block: if not, no rows, no keys, nothing stored
        mine = (ctx == ql) if PART == 1 else (ctx != ql)
        rmask = rmask & mine
    heads = kvh * G + r % G
    d = tl.arange(0, D)
    tok = (qs + qi).to(tl.int64)
    q = tl.load(q_ptr + tok[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=rmask[:, None], other=0.0)
    pos = ctx - ql + qi  # absolute position of each query row
    kv_end = tl.minimum(ctx, ctx - ql + q0 + QPB)
    # Tiles wholly at or before the block's first query position are seen whole by every row
    full_end = (ctx - ql + q0 + 1) // BLOCK_N * BLOCK_N
    if PART != 0:
        kv_end = tl.where(mine, kv_end, 0)
        full_end = tl.where(mine, full_end, 0)
    qk_scale = scale * 1.4426950408889634
    if PART == 1:  # K/V as computed: an fp8 cache neither rounds nor slows them
        o = _varlen_attend(q, new_src, new_src, bt_ptr, qs, kvh, full_end, kv_end, pos, qk_scale, d, stride_bt,
                           stride_blk, stride_nt, BLOCK_M, D, PAGE, BLOCK_N, 0, NEW, STAGES)
    else:
        o = _varlen_attend(q, k_ptr, v_ptr, bt_ptr, seq, kvh, full_end, kv_end, pos, qk_scale, d, stride_bt,
                           stride_blk, stride_tok, BLOCK_M, D, PAGE, BLOCK_N, KV_FP8, 0, STAGES)
    tl.store(out_ptr + tok[:, None] * stride_ot + heads[:, None] * stride_oh + d[None, :],
             o.to(out_ptr.dtype.element_ty), mask=rmask[:, None])


def varlen_config(group: int, head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the varlen kernel."""
    bm = varlen_block_m(group, head_dim)
    return bm, 64, 4 if bm == 64 else 8, 2


def varlen_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                     query_start: torch.Tensor, qb_seq: torch.Tensor, qb_start: torch.Tensor, scale: float,
                     out: torch.Tensor | None = None, config: tuple[int, int, int, int] | None = None,
                     fp8_convert: int = VARLEN_FP8_CONVERT, new_kv: torch.Tensor | None = None,
                     kinds: tuple[bool, bool] | None = None, new_loads: int = FRESH_LOADS) -> torch.Tensor:
    """q: [T, H, D] for all new tokens, sequence after sequence (query_start: [B+1] int32 offsets);
    context_lens: [B] tokens in the cache including the new ones (already written). `config`: (BLOCK_M,
    BLOCK_N, num_warps, num_stages), BLOCK_M that of the work list (default: `varlen_config`). new_kv: this step's
    rotated K heads then V heads, [T, 2 KVH, D] (the qkv buffer's view): a fresh prompt (context = its new tokens)
    attends over them instead of the cache, so an fp8 cache neither rounds nor slows its prefill (as TensorRT-LLM's
    and vLLM's context attention do), loaded as `new_loads` says (1 pointers, 2 TMA), when `kinds` says whether the
    step holds fresh prompts and sequences with a cached prefix (the host knows in eager steps): two launches, one a
    kind, or one if the step has one kind. kinds None (a prefill graph's step, its work list padded to the most
    query blocks its bucket can have): one launch, every block over the cache. Returns [T, H, D]."""
    T, H, D = q.shape
    _, _, page, KVH, _ = kv_cache.shape
    G = H // KVH
    if out is None:
        out = torch.empty(T, H, D, dtype=q.dtype, device=q.device)
    n_qb = qb_seq.shape[0]
    if T == 0 or n_qb == 0:
        return out
    k, v = kv_cache[0], kv_cache[1]
    bm, block_n, warps, stages = config or varlen_config(G, D)
    src, stride_nt = q, 0
    if new_kv is not None:
        assert new_kv.shape == (T, 2 * KVH, D) and new_kv.stride()[1:] == (D, 1)
        stride_nt = new_kv.stride(0)
        src = create_ragged_descriptor(new_kv, [block_n, 1, D]) if new_loads == 2 else new_kv
    if new_kv is None or kinds is None or not kinds[0]:
        parts = (0,)  # every block over the cache
    else:
        parts = (1, 2) if kinds[1] else (1,)
    for part in parts:
        _varlen_kernel[(n_qb, KVH)](
            q, k, v, src, block_tables, context_lens, query_start, qb_seq, qb_start, out, scale,
            q.stride(0), q.stride(1), stride_nt, block_tables.stride(0), k.stride(0), k.stride(1), out.stride(0),
            out.stride(1), G=G, D=D, PAGE=page, BLOCK_M=bm, BLOCK_N=block_n,
            KV_FP8=_kv_mode(kv_cache, q, fp8_convert), PART=part, NEW=new_loads if part == 1 else 0, STAGES=stages,
            num_warps=warps, num_stages=stages)
    return out
