"""Paged attention: write this step's K/V into the block cache, then attend over each sequence's blocks.

The cache of one layer is [2, num_blocks, block_size, kv_heads, head_dim]. A sequence's tokens live in
the blocks listed in its row of `block_tables`; token t of a sequence sits at slot
block_tables[t // block_size] * block_size + t % block_size.

Two implementations of the same function: `paged_attention` (torch: gather + SDPA; the CPU path and the
reference) and `paged_attention_cached` (Triton kernels in llmserve/kernels/attention.py; CUDA), which
expects this step's K/V already in the cache (written by the fused rotary kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from llmserve.kernels.shapes import varlen_query_blocks


class StepLayout(Protocol):
    """Where an eager step's tokens go: per token a cache slot; per sequence its block table, context length
    (cached + new) and new tokens. The engine's StepInputs is one."""

    slots: list[int]
    tables: list[list[int]]
    context_lens: list[int]
    query_lens: list[int]


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int: cache slot for each new token (< 0: do not write)
    block_tables: torch.Tensor  # [B, max_blocks] int32/64, padded with 0
    context_lens: torch.Tensor  # [B] int32: tokens in the cache after this step (cached + new)
    query_lens: list[int]  # [B] new tokens per sequence (host copy, for the prefill path)
    context_lens_host: list[int]
    decode_only: bool  # every sequence has exactly one new token
    max_context_len: int
    # CUDA (Triton) path only:
    context_bound: int = 0  # static upper bound on context_lens for decode (fixes the launch shape); 0: max_context_len
    query_start: torch.Tensor | None = None  # [B+1] int32 offsets of each sequence's new tokens
    qb_seq: torch.Tensor | None = None  # [n] int32: sequence of each varlen query block
    qb_start: torch.Tensor | None = None  # [n] int32: first query (within its sequence) of each block
    split: int = 0  # mixed steps: leading one-token rows the decode kernel takes (the work list covers the rest)
    # Leading work-list entries that are fresh prompts' (no cached prefix; the others' follow); None: unknown
    fresh_blocks: int | None = None
    # Prefill graphs (fixed launch shapes, the counts on the device): [3] int32 bounds of the padded work list's real
    # entries, (0, fresh end, end) as `varlen_attention` takes them; [1] int32, the leading one-token rows the decode
    # kernel takes (`decode_attention`'s rows; the work list covers the others, its sequence indices absolute)
    work_bounds: torch.Tensor | None = None
    decode_rows: torch.Tensor | None = None

    @property
    def own_kv(self) -> bool:
        """Whether fresh prompts attend over this step's K/V (rotated in the qkv buffer too), not the cache's."""
        return bool(self.fresh_blocks) or self.work_bounds is not None

    @classmethod
    def for_prefill(cls, seq_lens: list[int], block_size: int, device: torch.device, group: int = 1,
                    head_dim: int = 128, work_list: bool = True) -> AttentionMetadata:
        """Fresh prompts in consecutive cache blocks, sequence i starting at block sum(blocks of i' < i).
        work_list: fill the Triton path's query-block work list (`add_varlen`; the torch path ignores it)."""
        slots, tables, first = [], [], 0
        for n in seq_lens:
            nb = -(-n // block_size)
            tables.append(list(range(first, first + nb)))
            slots.extend(range(first * block_size, first * block_size + n))
            first += nb
        width = max(len(t) for t in tables)
        tables = [t + [0] * (width - len(t)) for t in tables]
        meta = cls(slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
                   block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
                   context_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
                   query_lens=list(seq_lens), context_lens_host=list(seq_lens),
                   decode_only=all(n == 1 for n in seq_lens), max_context_len=max(seq_lens))
        if work_list:
            meta.add_varlen(group, head_dim)
        return meta

    @classmethod
    def for_step(cls, step: StepLayout, device: torch.device, index: torch.dtype, context_bound: int, group: int,
                 head_dim: int, work_list: bool = True, split_rows: int = 0) -> AttentionMetadata:
        """An eager step's metadata; `index`: the dtype of slots and block tables (int32 for the kernels);
        work_list: as in for_prefill (the runner: whether its model takes the Triton path); split_rows (> 0): a
        mixed step that starts with at least this many one-token rows hands them to the decode kernel, whose
        split-context launch reads their long contexts faster than the varlen kernel's one-query tiles."""
        width = max(len(t) for t in step.tables)
        meta = cls(slot_mapping=torch.tensor(step.slots, dtype=index, device=device),
                   block_tables=torch.tensor([t + [0] * (width - len(t)) for t in step.tables], dtype=index,
                                             device=device),
                   context_lens=torch.tensor(step.context_lens, dtype=torch.int32, device=device),
                   query_lens=step.query_lens, context_lens_host=step.context_lens,
                   decode_only=all(n == 1 for n in step.query_lens), max_context_len=max(step.context_lens),
                   context_bound=context_bound)
        if work_list and not meta.decode_only:
            meta.split = leading_ones(step.query_lens, split_rows)
            meta.add_varlen(group, head_dim)
        return meta

    def add_varlen(self, group: int, head_dim: int) -> None:
        """Fills the Triton path's query-block work list from query_lens past `split` (host side): fresh prompts'
        blocks first (their own launch), then the others'."""
        dev = self.slot_mapping.device
        lens = self.query_lens[self.split:]
        starts = [0]
        for n in lens:
            starts.append(starts[-1] + n)
        seqs, firsts, self.fresh_blocks = fresh_first_blocks(lens, self.context_lens_host[self.split:], group,
                                                             head_dim)
        self.query_start = torch.tensor(starts, dtype=torch.int32, device=dev)
        self.qb_seq = torch.tensor(seqs, dtype=torch.int32, device=dev)
        self.qb_start = torch.tensor(firsts, dtype=torch.int32, device=dev)


def fresh_first_blocks(query_lens: list[int], context_lens: list[int], group: int, head_dim: int
                       ) -> tuple[list[int], list[int], int]:
    """The varlen kernel's work list (sequence, first query) with fresh prompts' blocks (no cached prefix: new
    tokens = context) first, and how many lead: `varlen_attention`'s fresh_blocks."""
    fresh = [q == c for q, c in zip(query_lens, context_lens)]
    seqs, firsts = varlen_query_blocks(query_lens, group, head_dim)
    order = [i for i, s in enumerate(seqs) if fresh[s]]
    count = len(order)
    order += [i for i, s in enumerate(seqs) if not fresh[s]]
    return [seqs[i] for i in order], [firsts[i] for i in order], count


def leading_ones(query_lens: list[int], least: int) -> int:
    """How many rows at the start have one new token, if at least `least` (> 0) and not all; else 0."""
    n = next((i for i, q in enumerate(query_lens) if q != 1), len(query_lens))
    return n if 0 < least <= n < len(query_lens) else 0


def paged_attention_cached(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                           new_kv: torch.Tensor | None = None) -> torch.Tensor:
    """CUDA path. q: [T, H, D] (may be a strided view of the qkv buffer); this step's K/V are in the cache.
    new_kv: this step's rotated K and V heads, [T, 2 KVH, D] (the qkv buffer's view), for fresh prompts' attention
    (`varlen_attention`'s new_kv)."""
    from llmserve.kernels import attention as kattn
    from llmserve.kernels import varlen

    T, H, D = q.shape
    out = torch.empty(T, H, D, dtype=q.dtype, device=q.device)
    bound = meta.context_bound or meta.max_context_len
    if meta.decode_only:
        return kattn.decode_attention(q, kv_cache, meta.block_tables, meta.context_lens, scale, bound, out=out)
    n = meta.split  # an eager step's decode rows: the varlen kernel's rows and sequences start past them
    if meta.decode_rows is not None:  # a prefill graph's, counted on the device (its split 0)
        d = min(T, meta.block_tables.shape[0])
        kattn.decode_attention(q[:d], kv_cache, meta.block_tables[:d], meta.context_lens[:d], scale, bound,
                               out=out[:d], rows=meta.decode_rows)
    elif n:
        kattn.decode_attention(q[:n], kv_cache, meta.block_tables[:n], meta.context_lens[:n], scale, bound,
                               out=out[:n])
    varlen.varlen_attention(q[n:], kv_cache, meta.block_tables[n:], meta.context_lens[n:], meta.query_start,
                           meta.qb_seq, meta.qb_start, scale, out=out[n:],
                           new_kv=new_kv[n:] if new_kv is not None else None, fresh_blocks=meta.fresh_blocks,
                           work_bounds=meta.work_bounds)
    return out


def write_kv(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    nkv, hd = k.shape[1], k.shape[2]
    kv_cache[0].view(-1, nkv, hd)[slot_mapping] = k.to(kv_cache.dtype)  # fp8 KV cache: rounded here
    kv_cache[1].view(-1, nkv, hd)[slot_mapping] = v.to(kv_cache.dtype)


def _gather(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """[blocks...] -> [length, kv_heads, head_dim] for one sequence, or [B, S, kvh, hd] for a batch."""
    g = cache[block_table]
    if block_table.dim() == 1:
        return g.flatten(0, 1)[:length]
    return g.flatten(1, 2)[:, :length]


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [T, H, D], k/v: [T, KVH, D] (this step's tokens). Returns [T, H, D]."""
    write_kv(k, v, kv_cache, meta.slot_mapping)
    if meta.decode_only:
        return _decode_attention(q, kv_cache, meta, scale)
    return _prefill_attention(q, k, v, kv_cache, meta, scale)


def _decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    # One query per sequence: gather every sequence's keys into a padded [B, S] batch and mask the tail.
    S = meta.max_context_len
    keys = _gather(kv_cache[0], meta.block_tables, S).transpose(1, 2).to(q.dtype)  # [B, KVH, S, D]
    values = _gather(kv_cache[1], meta.block_tables, S).transpose(1, 2).to(q.dtype)
    mask = torch.arange(S, device=q.device)[None, :] < meta.context_lens[:, None]  # [B, S]
    out = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask[:, None, None, :],
                                         scale=scale, enable_gqa=True)
    return out.squeeze(2)


def _prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                       meta: AttentionMetadata, scale: float) -> torch.Tensor:
    out = torch.empty_like(q)
    start = 0
    for i, (ql, cl) in enumerate(zip(meta.query_lens, meta.context_lens_host)):
        qi = q[start:start + ql].transpose(0, 1)  # [H, ql, D]
        if ql == cl:  # a fresh prompt attends over its own K/V as computed (an fp8 cache would round them)
            keys, values = (t[start:start + ql].transpose(0, 1).to(q.dtype) for t in (k, v))
        else:
            keys = _gather(kv_cache[0], meta.block_tables[i], cl).transpose(0, 1).to(q.dtype)  # [KVH, cl, D]
            values = _gather(kv_cache[1], meta.block_tables[i], cl).transpose(0, 1).to(q.dtype)
        # Query j sits at position cl - ql + j and sees keys up to and including that position.
        mask = torch.ones(ql, cl, dtype=torch.bool, device=q.device).tril(diagonal=cl - ql)
        oi = F.scaled_dot_product_attention(qi, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
        out[start:start + ql] = oi.transpose(0, 1)
        start += ql
    return out
