"""Varlen attention in Triton: any number of new tokens per sequence (prefill, chunked prefill, mixed steps) over
the paged cache [2, num_blocks, block_size, kv_heads, head_dim] (one layer). A program per (block of query rows, kv
head); rows are (query, head-of-group) pairs, so GQA groups share each K/V tile; causal within the new tokens, full
over the cached prefix. A fresh prompt (no cached prefix) may read its K/V from this step's qkv buffer instead of
the cache (`varlen_attention`'s new_kv).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl
from triton.tools.ragged_tma import create_ragged_descriptor, load_ragged

from llmserve.kernels.convert import kv_mode, kv_tile
from llmserve.kernels.shapes import varlen_block_m

# How an e4m3 cache reaches the varlen kernel's dots (`kv_tile`'s KV_FP8, for bf16 models on CUDA): the faster one
VARLEN_FP8_CONVERT = 2
# How the varlen kernel loads a fresh prompt's own K/V: 1 pointer loads, 2 TMA (Hopper on; other GPUs use 1)
FRESH_LOADS = 2
# A step with fresh prompts and chunks after a cached prefix: the chunks' launch runs on a side stream beside the
# fresh prompts' (a few programs over long contexts, alone on the GPU after the fresh launch otherwise)
OVERLAP_LAUNCHES = True


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
    return kv_tile(x, q.dtype, KV_FP8)


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
def _varlen_block(qb, kvh, q_ptr, k_ptr, v_ptr, new_src, bt_ptr, ctx_ptr, qstart_ptr, qb_seq_ptr, qb_start_ptr,
                  out_ptr, scale, stride_qt, stride_qh, stride_nt, stride_bt, stride_blk, stride_tok, stride_ot,
                  stride_oh, G: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, KV_FP8: tl.constexpr, NEW: tl.constexpr, STAGES: tl.constexpr):
    """Work-list entry qb for KV head kvh: its query rows' attention, stored. NEW (> 0): a fresh prompt's block,
    over its own K/V (`new_src`, loaded as `_new_rows` says); 0: over the cache."""
    seq = tl.load(qb_seq_ptr + qb).to(tl.int64)
    q0 = tl.load(qb_start_ptr + qb)
    qs = tl.load(qstart_ptr + seq)
    ql = tl.load(qstart_ptr + seq + 1) - qs
    ctx = tl.load(ctx_ptr + seq)
    QPB: tl.constexpr = BLOCK_M // G
    r = tl.arange(0, BLOCK_M)
    qi = q0 + r // G
    rmask = (r < QPB * G) & (qi < ql)
    heads = kvh * G + r % G
    d = tl.arange(0, D)
    tok = (qs + qi).to(tl.int64)
    q = tl.load(q_ptr + tok[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=rmask[:, None], other=0.0)
    pos = ctx - ql + qi  # absolute position of each query row
    kv_end = tl.minimum(ctx, ctx - ql + q0 + QPB)
    # Tiles wholly at or before the block's first query position are seen whole by every row
    full_end = (ctx - ql + q0 + 1) // BLOCK_N * BLOCK_N
    qk_scale = scale * 1.4426950408889634
    if NEW:  # K/V as computed: an fp8 cache neither rounds nor slows them
        o = _varlen_attend(q, new_src, new_src, bt_ptr, qs, kvh, full_end, kv_end, pos, qk_scale, d, stride_bt,
                           stride_blk, stride_nt, BLOCK_M, D, PAGE, BLOCK_N, 0, NEW, STAGES)
    else:
        o = _varlen_attend(q, k_ptr, v_ptr, bt_ptr, seq, kvh, full_end, kv_end, pos, qk_scale, d, stride_bt,
                           stride_blk, stride_tok, BLOCK_M, D, PAGE, BLOCK_N, KV_FP8, 0, STAGES)
    tl.store(out_ptr + tok[:, None] * stride_ot + heads[:, None] * stride_oh + d[None, :],
             o.to(out_ptr.dtype.element_ty), mask=rmask[:, None])


@triton.jit(do_not_specialize=["qb_first"])
def _varlen_kernel(q_ptr, k_ptr, v_ptr, new_src, bt_ptr, ctx_ptr, qstart_ptr, qb_seq_ptr, qb_start_ptr, qb_first,
                   out_ptr, count_ptr, scale, stride_qt, stride_qh, stride_nt, stride_bt, stride_blk, stride_tok,
                   stride_ot, stride_oh, G: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, KV_FP8: tl.constexpr, NEW: tl.constexpr, STAGES: tl.constexpr,
                   PERSIST: tl.constexpr):
    """Fresh prompts' blocks (NEW > 0) and the others' (NEW 0) take a launch each rather than one launch with both
    loops behind a runtime test: the two branches' shared-memory buffers would add up (144 KB a program at 16 bits:
    half the programs per SM). PERSIST: a fixed grid walks the entries [count_ptr[0], count_ptr[1]) of the work list
    (a prefill graph's real ones of a kind), in a snake order (entry i * P + p, then (i + 1) * P + P - 1 - p) that
    evens out blocks whose cost grows along a sequence; otherwise a program an entry from entry qb_first (an int, not
    specialized: the second launch starts where the fresh prompts' blocks end, anywhere)."""
    kvh = tl.program_id(1)
    if PERSIST:
        first = tl.load(count_ptr)
        n = tl.load(count_ptr + 1) - first
        P = tl.num_programs(0)
        p = tl.program_id(0)
        for i in range(0, tl.cdiv(n, P)):
            qb = i * P + tl.where(i % 2 == 0, p, P - 1 - p)
            if qb < n:
                qb += first
                _varlen_block(qb, kvh, q_ptr, k_ptr, v_ptr, new_src, bt_ptr, ctx_ptr, qstart_ptr, qb_seq_ptr,
                              qb_start_ptr, out_ptr, scale, stride_qt, stride_qh, stride_nt, stride_bt, stride_blk,
                              stride_tok, stride_ot, stride_oh, G, D, PAGE, BLOCK_M, BLOCK_N, KV_FP8, NEW, STAGES)
    else:
        _varlen_block(qb_first + tl.program_id(0), kvh, q_ptr, k_ptr, v_ptr, new_src, bt_ptr, ctx_ptr, qstart_ptr,
                      qb_seq_ptr, qb_start_ptr, out_ptr, scale, stride_qt, stride_qh, stride_nt, stride_bt, stride_blk,
                      stride_tok, stride_ot, stride_oh, G, D, PAGE, BLOCK_M, BLOCK_N, KV_FP8, NEW, STAGES)


def varlen_config(group: int, head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the varlen kernel."""
    bm = varlen_block_m(group, head_dim)
    return bm, 64, 4 if bm == 64 else 8, 2


def varlen_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                     query_start: torch.Tensor, qb_seq: torch.Tensor, qb_start: torch.Tensor, scale: float,
                     out: torch.Tensor | None = None, config: tuple[int, int, int, int] | None = None,
                     fp8_convert: int = VARLEN_FP8_CONVERT, new_kv: torch.Tensor | None = None,
                     fresh_blocks: int | None = None, new_loads: int | None = None,
                     work_bounds: torch.Tensor | None = None, programs: int = 0,
                     overlap: bool = OVERLAP_LAUNCHES) -> torch.Tensor:
    """q: [T, H, D] for all new tokens, sequence after sequence (query_start: [B+1] int32 offsets);
    context_lens: [B] tokens in the cache including the new ones (already written). `config`: (BLOCK_M,
    BLOCK_N, num_warps, num_stages), BLOCK_M that of the work list (default: `varlen_config`). new_kv: this step's
    rotated K heads then V heads, [T, 2 KVH, D] (the qkv buffer's view): a fresh prompt (context = its new tokens)
    attends over them instead of the cache, so an fp8 cache neither rounds nor slows its prefill (as TensorRT-LLM's
    and vLLM's context attention do), loaded as `new_loads` says (1 pointers, 2 TMA; None: `fresh_loads`), when
    `fresh_blocks` says how many leading entries of the work list are fresh prompts' (the host orders it so in eager
    steps; the others' follow): a launch over those and one over the rest, on a side stream beside it (`overlap`).
    fresh_blocks None or 0: one launch, every block over the cache. work_bounds (a prefill graph's step, its work
    list padded to the most query blocks its bucket can have): a device int32 [3], (0, f, n): entries [0, f) are
    fresh prompts' and [f, n) the others', n the real ones; two persistent launches of `programs` programs a KV head
    (default: two an SM) walk them, so a padded list costs no program an idle entry (fresh_blocks unused; without
    new_kv both over the cache). Returns [T, H, D]."""
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
    persist = work_bounds is not None
    f = fresh_blocks if new_kv is not None and fresh_blocks else 0
    if f or (persist and new_kv is not None):
        assert new_kv.shape == (T, 2 * KVH, D) and new_kv.stride()[1:] == (D, 1)
        stride_nt = new_kv.stride(0)
        new_loads = new_loads or fresh_loads(q.device)
        src = create_ragged_descriptor(new_kv, [block_n, 1, D]) if new_loads == 2 else new_kv
    # (first entry, entries, NEW, bounds) a launch: the blocks over the cache (the side stream's), then the fresh ones;
    # a persistent launch reads its first and end entries from `bounds` (the first two ints from there)
    if persist:
        launches = [(0, 0, 0, work_bounds[1:]), (0, 0, new_loads if new_kv is not None else 0, work_bounds)]
    else:
        launches = [(f, n_qb - f, 0, qb_seq), (0, f, new_loads, qb_seq)] if f else [(0, n_qb, 0, qb_seq)]
        launches = [x for x in launches if x[1]]
    side = overlap and len(launches) == 2 and q.device.type == "cuda"
    for i, (first, count, new, bounds) in enumerate(launches):
        grid = (programs or _persistent_programs(q.device, KVH) if persist else count, KVH)
        with _on_side_stream(q.device, side and i == 0):
            _varlen_kernel[grid](
                q, k, v, src, block_tables, context_lens, query_start, qb_seq, qb_start, first, out, bounds, scale,
                q.stride(0), q.stride(1), stride_nt, block_tables.stride(0), k.stride(0), k.stride(1), out.stride(0),
                out.stride(1), G=G, D=D, PAGE=page, BLOCK_M=bm, BLOCK_N=block_n,
                KV_FP8=kv_mode(kv_cache, q, fp8_convert), NEW=new, STAGES=stages, PERSIST=persist, num_warps=warps,
                num_stages=stages)
    if side:
        torch.cuda.current_stream(q.device).wait_stream(_side_stream(q.device.index or 0))
    return out


def fresh_loads(device: torch.device) -> int:
    """FRESH_LOADS, or pointer loads on a GPU without TMA (before Hopper)."""
    return 1 if device.type == "cuda" and _capability(device.index or 0) < 9 else FRESH_LOADS


@functools.cache
def _capability(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


@contextlib.contextmanager
def _on_side_stream(device: torch.device, side: bool):
    """Launches in the block go to the device's side stream, after the current stream's work so far (the current
    stream waits for it once varlen_attention's launches are queued); a graph being captured forks and joins too.
    Its priority is high, so its few long programs take SMs before the fresh launch's many."""
    if not side:
        yield
        return
    stream = _side_stream(device.index or 0)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield


@functools.cache
def _side_stream(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(device=index, priority=-1)


def _persistent_programs(device: torch.device, kv_heads: int) -> int:
    """Programs a KV head for a persistent launch: two a streaming multiprocessor (the kernel's 48-80 KB of shared
    memory and ~210-240 registers a thread allow two), four programs on the CPU."""
    return max(1, 2 * _sm_count(device.index or 0) // kv_heads) if device.type == "cuda" else 4


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
