"""Paged decode attention in Triton over the cache layout [2, num_blocks, block_size, kv_heads, head_dim] (one
layer); prefill and mixed steps are `llmserve.kernels.varlen`'s.

- `decode_attention`: one query token per sequence (the CUDA-graph path). Split-K ("flash decoding"): a
  program per (sequence, kv head, partition) handles all query heads of its GQA group at once (rows padded
  to 16 for the tensor cores), then a second kernel merges the partitions. The launch shape is fixed (one
  graph serves every step), but each sequence's span per partition follows its own context length: its
  context split evenly over the partitions, in whole tiles of one or two cache blocks; programs past the end
  return. Blocks must be a power of two from 16 tokens (`decode_page_ok`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve.kernels.convert import kv_mode, kv_tile
from llmserve.kernels.shapes import decode_page_ok


@triton.jit
def _span(ctx, NUM_PARTS: tl.constexpr, TILE: tl.constexpr):
    """Tokens per partition for a context of ctx tokens: an even split, in whole tiles."""
    return tl.cdiv(tl.cdiv(ctx, NUM_PARTS), TILE) * TILE


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
        k = kv_tile(tl.load(k_ptr + off, mask=live[:, None], other=0.0), q.dtype, KV_FP8)
        v = kv_tile(tl.load(v_ptr + off, mask=live[:, None], other=0.0), q.dtype, KV_FP8)
        s = tl.where(live[None, :], tl.dot(q, tl.trans(k)) * qk_scale, float("-inf"))
    else:
        blk = tl.load(bt_ptr + bt_row + pg).to(tl.int64)
        off = blk * stride_blk + kvh * D + t[:, None] * stride_tok + d[None, :]
        k = kv_tile(tl.load(k_ptr + off), q.dtype, KV_FP8)
        v = kv_tile(tl.load(v_ptr + off), q.dtype, KV_FP8)
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
def _decode_row(b, kvh, part, H, q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, po_ptr, pml_ptr, scale, stride_qb,
                stride_qh, stride_bt, stride_blk, stride_tok, stride_ob, stride_oh, G: tl.constexpr,
                G_PAD: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, PAGES: tl.constexpr,
                NUM_PARTS: tl.constexpr, KV_FP8: tl.constexpr, STAGES: tl.constexpr):
    """Row b's partition `part` for KV head kvh: its share of the context, stored whole or as a partial."""
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
            base = (b * H + heads) * NUM_PARTS + part
            tl.store(po_ptr + base[:, None] * D + d[None, :], acc / l_i[:, None], mask=rmask[:, None])
            tl.store(pml_ptr + base * 2, m_i, mask=rmask)
            tl.store(pml_ptr + base * 2 + 1, l_i, mask=rmask)


@triton.jit
def _decode_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, po_ptr, pml_ptr, rows_ptr, scale,
                   stride_qb, stride_qh, stride_bt, stride_blk, stride_tok, stride_ob, stride_oh,
                   G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
                   PAGES: tl.constexpr, NUM_PARTS: tl.constexpr, KV_FP8: tl.constexpr, STAGES: tl.constexpr,
                   COUNTED: tl.constexpr):
    """A program a (row, kv head, partition); COUNTED: the rows are [0, *rows_ptr), walked by a fixed grid."""
    kvh = tl.program_id(1)
    part = tl.program_id(2)
    H = tl.num_programs(1) * G
    if COUNTED:
        for b in tl.range(tl.program_id(0).to(tl.int64), tl.load(rows_ptr), tl.num_programs(0)):  # 64-bit rows
            _decode_row(b, kvh, part, H, q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, po_ptr, pml_ptr,
                        scale, stride_qb, stride_qh, stride_bt, stride_blk, stride_tok, stride_ob, stride_oh, G, G_PAD,
                        D, PAGE, PAGES, NUM_PARTS, KV_FP8, STAGES)
    else:
        _decode_row(tl.program_id(0).to(tl.int64), kvh, part, H, q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, po_ptr,
                    pml_ptr, scale, stride_qb, stride_qh, stride_bt, stride_blk, stride_tok, stride_ob, stride_oh, G,
                    G_PAD, D, PAGE, PAGES, NUM_PARTS, KV_FP8, STAGES)


@triton.jit
def _merge_row(b, h, H, po_ptr, pml_ptr, ctx_ptr, out_ptr, stride_ob, stride_oh, D: tl.constexpr,
               NUM_PARTS: tl.constexpr, P_PAD: tl.constexpr, TILE: tl.constexpr):
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


@triton.jit
def _merge_kernel(po_ptr, pml_ptr, ctx_ptr, out_ptr, rows_ptr, stride_ob, stride_oh, D: tl.constexpr,
                  NUM_PARTS: tl.constexpr, P_PAD: tl.constexpr, TILE: tl.constexpr, COUNTED: tl.constexpr):
    h = tl.program_id(1)
    H = tl.num_programs(1)
    if COUNTED:
        for b in tl.range(tl.program_id(0).to(tl.int64), tl.load(rows_ptr), tl.num_programs(0)):
            _merge_row(b, h, H, po_ptr, pml_ptr, ctx_ptr, out_ptr, stride_ob, stride_oh, D, NUM_PARTS,
                       P_PAD, TILE)
    else:
        _merge_row(tl.program_id(0).to(tl.int64), h, H, po_ptr, pml_ptr, ctx_ptr, out_ptr, stride_ob, stride_oh, D,
                   NUM_PARTS, P_PAD, TILE)


# How an e4m3 cache reaches the decode kernel's dots (`kv_tile`'s KV_FP8, for bf16 models on CUDA): the faster one
DECODE_FP8_CONVERT = 1


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


# Programs a KV head over rows counted on the device (`decode_attention`'s rows): 2,048 at 8 KV heads, as a 256-row
# launch has; idle row slots in the grid cost 18-70 us a layer (kernel_check mixed_graph), so rows are walked
ROW_PROGRAMS = 256


def decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, scale: float, max_context: int,
                     out: torch.Tensor | None = None, config: tuple[int, int, int, int] | None = None,
                     fp8_convert: int = DECODE_FP8_CONVERT, rows: torch.Tensor | None = None) -> torch.Tensor:
    """q: [B, H, D] (any row/head strides, unit last stride); kv_cache: [2, blocks, page, KVH, D].
    block_tables: [B, W] int; context_lens: [B] int32 (>= 1), each <= max_context. `config` (default
    `decode_config`) fixes the launch shape. rows: a device int32 [1], n: only rows [0, n) are attended, the
    others' output rows left as they are (a prefill graph's leading decode rows, counted on the device): at most
    ROW_PROGRAMS programs a KV head and partition, each walking rows. Returns [B, H, D]."""
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
    grid_rows = B if rows is None else min(B, ROW_PROGRAMS)
    num_parts, block_n, warps, stages = config or decode_config(max_context, grid_rows, KVH)
    pages = 2 if block_n >= 2 * page else 1  # a tile of BLOCK_N tokens, in whole blocks (one or two)
    k, v = kv_cache[0], kv_cache[1]
    if num_parts > 1:
        po = torch.empty(B, H, num_parts, D, dtype=torch.float32, device=q.device)
        pml = torch.empty(B, H, num_parts, 2, dtype=torch.float32, device=q.device)
    else:
        po = pml = out
    counted = {"rows_ptr": context_lens if rows is None else rows, "COUNTED": rows is not None}
    _decode_kernel[(grid_rows, KVH, num_parts)](
        q, k, v, block_tables, context_lens, out, po, pml, scale=scale,
        stride_qb=q.stride(0), stride_qh=q.stride(1), stride_bt=block_tables.stride(0), stride_blk=k.stride(0),
        stride_tok=k.stride(1), stride_ob=out.stride(0), stride_oh=out.stride(1), G=G,
        G_PAD=max(16, triton.next_power_of_2(G)), D=D, PAGE=page, PAGES=pages, NUM_PARTS=num_parts,
        KV_FP8=kv_mode(kv_cache, q, fp8_convert), STAGES=stages, num_warps=warps, num_stages=stages, **counted)
    if num_parts > 1:
        _merge_kernel[(grid_rows, H)](po, pml, context_lens, out, stride_ob=out.stride(0), stride_oh=out.stride(1),
                                      D=D, NUM_PARTS=num_parts, P_PAD=max(2, triton.next_power_of_2(num_parts)),
                                      TILE=page * pages, num_warps=4, **counted)
    return out
