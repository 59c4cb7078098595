"""CUDA graphs for prefill and mixed steps, one per padded token count.

An eager step of a 7B model is about 400 kernel launches, and enqueueing them costs the host more than the GPU
work of a small step, whatever its token count (docs/performance.md). A graph replay launches all of them in
one call. The graphs are captured with plain launches (no programmatic dependent launch).

Everything that varies within a token bucket lives in device buffers of fixed shape:
- the step's tokens (ids, positions, cache slots, source rows), padded to the bucket with slot -1, which the
  fused rotary kernel does not write;
- per sequence, for up to max_batch_size sequences: context length, query offset and block table; rows past
  the step's sequences have no new tokens and an empty context;
- the attention's split, as an eager step's: a mixed step's leading one-token rows (from `mixed_split_rows`) go to
  the decode kernel, whose fixed grid walks as many rows as the count on the device says;
- the varlen attention's work list over the other rows, fresh prompts' blocks first (over their own K/V, as in
  eager steps), padded to the most query blocks a step of the bucket can have with blocks of an empty row, and the
  bounds of its real entries: two persistent launches walk those only, so the padding costs no program (at 1,024
  tokens and 1,024 sequences the list has 1,089 entries, a prompt of 128 needs 8).
A step past the captured buckets runs eagerly on the same buffers, unpadded, with an eager step's attention: leading
decode rows through the decode kernel, fresh prompts over their own K/V, a launch an entry (`_EagerWork`); a
persistent launch over the cache took 1.8x as long on a step of 4 x 2,048 fresh tokens (docs/performance.md). Such
steps are run once at capture (`warm_past_buckets`), so their kernels compile before serving.
Padded token rows compute garbage that stays in their rows: every layer but attention is row by row, and
attention reads only the cache and the real rows' queries. The graph runs the decoder stack; the final norm,
lm_head over the sampled rows and the sampling stay eager (a few launches), since those rows vary.

A launched step (async scheduling, llmserve/engine/launcher.py) may have decode rows whose input token is still
on the device: their source row (>= 0) names it in `last_tokens`, the previous launched step's argmax, and the
graph takes it from there (a torch.where at its start, as the decode graphs do): no host sync, no extra launch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from llmserve.engine.graph_inputs import StepInputs, TableRows, pinned_int32
from llmserve.kernels.shapes import mixed_split_rows, varlen_block_m
from llmserve.model.attention import AttentionMetadata, fresh_first_blocks, leading_ones


@dataclass(frozen=True)
class _EagerWork:
    """An unpadded step's attention, as AttentionMetadata.for_step lays it out: `split` leading one-token rows go
    to the decode kernel; the work list covers the rest, `fresh` entries of fresh prompts first, `count` in all."""

    split: int
    fresh: int
    count: int


def token_buckets(max_tokens: int) -> list[int]:
    """Padded step sizes: powers of two from 16 and, from 128 up, the midpoints (192, 384, ...), so a step
    computes at most 1.5x its tokens once it is large enough for the padding to cost GPU time; then max_tokens."""
    sizes, n = [], 16
    while n < max_tokens:
        sizes.append(n)
        if n >= 128 and n * 3 // 2 < max_tokens:
            sizes.append(n * 3 // 2)
        n *= 2
    return sizes + [max_tokens]


class PrefillGraphs:
    def __init__(self, model, kv_cache: torch.Tensor, max_tokens: int, max_seqs: int, width: int,
                 max_model_len: int, last_tokens: torch.Tensor | None = None, graph_tokens: int = 0):
        """Until `capture_all`, steps run the same padded inputs eagerly (the tests check the padding on CPU so).
        last_tokens: the int32 device buffer carried tokens come from (the runner's; else one of max_seqs).
        graph_tokens: the largest step captured (default max_tokens); a larger one, up to max_tokens, runs the
        same inputs eagerly, unpadded: its host work still overlaps the GPU's (no host sync for its inputs)."""
        args = model.args
        self.model, self.kv_cache, self.max_model_len = model, kv_cache, max_model_len
        self.group, self.head_dim = args.num_heads // args.num_kv_heads, args.head_dim
        self.qpb = varlen_block_m(self.group, self.head_dim) // self.group
        self.max_tokens = max_tokens
        self.buckets = token_buckets(min(graph_tokens or max_tokens, max_tokens))
        self.max_seqs, self.width = B, W = max_seqs, width
        T, QB = max_tokens, self._work_rows(max_tokens)
        # Sections of one int32 buffer (block tables last: a step copies only the rows it uses). Row B of the
        # per-sequence sections is the empty sequence that padded work-list entries point to.
        sizes = {"ids": T, "pos": T, "slot": T, "src": T, "rows": B, "ctx": B + 1, "qstart": B + 2, "qb_seq": QB,
                 "qb_start": QB, "work": 4, "bt": (B + 1) * W}
        self._offsets, n = {}, 0
        for name, size in sizes.items():
            self._offsets[name] = (n, n + size)
            n += size
        self._hosts = [self._host_views(*pinned_int32(n)) for _ in range(2)]
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0
        self._dev = torch.zeros(n, dtype=torch.int32, device=kv_cache.device)
        self._d = {k: self._dev[a:b] for k, (a, b) in self._offsets.items()}
        self._d["bt"] = self._d["bt"].view(B + 1, W)
        for h in self._hosts:  # every entry an idle one until a step says otherwise
            h["slot"][:] = h["src"][:] = -1
            h["qb_seq"][:] = B
        self._dev.copy_(self._hosts[0]["tensor"])
        self.last_tokens = last_tokens if last_tokens is not None else \
            torch.zeros(max_seqs, dtype=torch.int32, device=kv_cache.device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.last_split_ms = (0.0, 0.0, 0.0)
        self._split_rows = mixed_split_rows(kv_cache.dtype == torch.float8_e4m3fn)
        self._eager: _EagerWork | None = None  # the last filled step's, when it runs past the buckets

    def _work_rows(self, tokens: int) -> int:
        """Most query blocks a step of `tokens` tokens can need: each sequence rounds up by one block at most."""
        return tokens // self.qpb + min(self.max_seqs, tokens) + 1

    def _host_views(self, tensor: torch.Tensor, arr) -> dict:
        views = {k: arr[a:b] for k, (a, b) in self._offsets.items()}
        views["bt"] = views["bt"].reshape(self.max_seqs + 1, self.width)
        views["tensor"], views["tables"] = tensor, TableRows(views["bt"])
        return views

    def _meta(self, tokens: int) -> AttentionMetadata:
        d, qb = self._d, self._work_rows(tokens)
        meta = AttentionMetadata(slot_mapping=d["slot"][:tokens], block_tables=d["bt"], context_lens=d["ctx"],
                                 query_lens=[], context_lens_host=[], decode_only=False,
                                 max_context_len=self.max_model_len, context_bound=self.max_model_len,
                                 query_start=d["qstart"], qb_seq=d["qb_seq"][:qb], qb_start=d["qb_start"][:qb],
                                 work_bounds=d["work"][:3], decode_rows=d["work"][3:])
        e = self._eager if tokens not in self.buckets else None
        if e is not None:
            meta.qb_seq, meta.qb_start, meta.work_bounds = d["qb_seq"][:e.count], d["qb_start"][:e.count], None
            meta.split, meta.fresh_blocks, meta.decode_rows = e.split, e.fresh, None
        return meta

    def _layers(self, tokens: int):
        d = self._d
        src = d["src"][:tokens]
        # A carried token (src >= 0) comes from the previous launched step's argmax, on the device.
        ids = torch.where(src >= 0, self.last_tokens[src.clamp(min=0)], d["ids"][:tokens])
        return self.model.decode_layers(ids, d["pos"][:tokens], self.kv_cache, self._meta(tokens))

    def capture_all(self, pool) -> None:
        for T in sorted(self.buckets, reverse=True):
            for _ in range(2):  # compiles what the capture would otherwise meet
                self._layers(T)
            torch.cuda.synchronize(self.kv_cache.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                hidden, residual = self._layers(T)
            self.graphs[T] = (graph, hidden, residual)

    def warm_past_buckets(self, scratch_block: int) -> None:
        """Runs steps past the captured buckets as serving meets them (a fresh prompt and a chunk, beside no decode
        rows, as many as the split takes, and one more) on the scratch block, writing no cache slot: their eager
        launches compile here, on these buffers (Triton specializes on pointer alignment: ctx[split:] moves by 4
        bytes a row), not while a request waits. Every tensor-parallel rank runs the same steps."""
        top = self.buckets[-1]
        if self.max_tokens <= top:  # every step has a bucket
            return
        for d in (0, self._split_rows, self._split_rows + 1):
            p = top - d  # with the chunk's one token, top + 1 tokens: past the buckets
            if p < 2 or d + 2 > self.max_seqs:
                continue
            q, c = [1] * d + [p, 1], [1] * d + [p, 2]
            table = [scratch_block] * self.width
            step = StepInputs(ids=[0] * (top + 1), positions=[i for n, m in zip(q, c) for i in range(m - n, m)],
                              slots=[-1] * (top + 1), query_lens=q, context_lens=c, tables=[table] * len(q),
                              sample_rows=[])
            self.run(step, logits=False)

    def fits(self, num_tokens: int, num_seqs: int) -> bool:
        return num_tokens <= self.max_tokens and num_seqs <= self.max_seqs

    def run(self, step: StepInputs, carried: np.ndarray | None = None, logits: bool = True) -> torch.Tensor | None:
        """Runs the decoder stack on the step; returns the logits of its sample rows (None if it has none, or with
        logits=False: a tensor-parallel worker's step). carried: per token, the row of `last_tokens` its id comes
        from (-1: its own); None: none carried."""
        t0 = time.perf_counter()
        n, B = len(step.ids), len(step.query_lens)
        T = next((b for b in self.buckets if b >= n), n)  # past the buckets: eager, unpadded
        self._turn ^= 1
        if self._copied[self._turn] is not None:  # this buffer's copy two steps ago must be done
            self._copied[self._turn].synchronize()
        h = self._hosts[self._turn]
        self._fill(h, step, T, carried)
        end = self._offsets["bt"][0] + B * self.width
        self._dev[:end].copy_(h["tensor"][:end], non_blocking=True)
        if self._dev.is_cuda:
            self._copied[self._turn] = torch.cuda.Event()
            self._copied[self._turn].record()
        t1 = time.perf_counter()
        if T in self.graphs:
            graph, hidden, residual = self.graphs[T]
            graph.replay()
        else:
            hidden, residual = self._layers(T)
        t2 = time.perf_counter()
        out = self.model.logits(hidden, residual, self._d["rows"][:len(step.sample_rows)], upcast=False) \
            if step.sample_rows and logits else None
        # Host ms of the step's parts (inputs, replay, logits), for the step trace: where a launch is held up
        self.last_split_ms = ((t1 - t0) * 1e3, (t2 - t1) * 1e3, (time.perf_counter() - t2) * 1e3)
        return out

    def _fill(self, h: dict, step: StepInputs, T: int, carried: np.ndarray | None = None) -> None:
        n, B = len(step.ids), len(step.query_lens)
        h["ids"][:n], h["pos"][:n], h["slot"][:n] = step.ids, step.positions, step.slots
        h["ids"][n:T], h["pos"][n:T], h["slot"][n:T] = 0, 0, -1
        h["src"][:T] = -1
        if carried is not None:
            h["src"][:n] = carried
        h["rows"][:len(step.sample_rows)] = step.sample_rows
        h["ctx"][:B], h["ctx"][B:] = step.context_lens, 0
        if T in self.buckets:
            self._fill_padded_work(h, step, T)
        else:
            self._fill_eager_work(h, step)
        for i, table in enumerate(step.tables):
            h["tables"].write(i, table)

    def _split_work(self, step: StepInputs) -> tuple[int, list[int], list[int], int]:
        """As AttentionMetadata.for_step splits a step: the leading decode rows the decode kernel takes, then the
        work list of the rows past them (sequence indices from the split), fresh prompts' blocks first, and their
        count."""
        split = leading_ones(step.query_lens, self._split_rows)
        return split, *fresh_first_blocks(step.query_lens[split:], step.context_lens[split:], self.group,
                                          self.head_dim)

    def _fill_padded_work(self, h: dict, step: StepInputs, T: int) -> None:
        """The leading decode rows' count (the split); the work list of the rows past it (absolute sequence indices
        and query offsets), fresh prompts' blocks first, then idle entries; its bounds."""
        n, B = len(step.ids), len(step.query_lens)
        h["qstart"][0] = 0
        h["qstart"][1:B + 1] = np.cumsum(step.query_lens)
        h["qstart"][B + 1:] = n
        split, seqs, firsts, fresh = self._split_work(step)
        k, qb = len(seqs), self._work_rows(T)
        h["qb_seq"][:k], h["qb_start"][:k] = np.add(seqs, split), firsts
        h["qb_seq"][k:qb], h["qb_start"][k:qb] = self.max_seqs, 0
        h["work"][:] = 0, fresh, k, split
        self._eager = None

    def _fill_eager_work(self, h: dict, step: StepInputs) -> None:
        """The work list of the rows past `split` (their query offsets from 0, sequence indices from the split, as
        paged_attention_cached slices the per-sequence rows), fresh prompts' blocks first."""
        split, seqs, firsts, fresh = self._split_work(step)
        lens = step.query_lens[split:]
        h["qstart"][0] = 0
        h["qstart"][1:len(lens) + 1] = np.cumsum(lens)
        h["qb_seq"][:len(seqs)], h["qb_start"][:len(seqs)] = seqs, firsts
        self._eager = _EagerWork(split, fresh, len(seqs))
