"""Device work for one scheduled step: build the flat batch, run the model, sample.

On CUDA with a 16-bit model, decode steps replay CUDA graphs captured per padded batch size (1, 2, 4, ...,
256): the step's inputs go through one pinned host buffer and one copy into the graphs' static inputs,
the graph computes logits and their argmax, and the one host sync of the step is reading the token ids
back. Padding rows of a graph write their K/V into a scratch block the block manager never hands out.
Prefill and mixed steps run eagerly through the same Triton kernels (varlen attention).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from llmserve import kernels
from llmserve.attention import AttentionMetadata
from llmserve.config import ConfigError, ServingConfig
from llmserve.engine_api import TokenLogprob
from llmserve.llama import load_model
from llmserve.sampler import SamplingBatch, is_plain_greedy, sample
from llmserve.scheduler import ScheduledBatch
from llmserve.sequence import Sequence

log = logging.getLogger(__name__)
CPU_DEFAULT_KV_BYTES = 256 << 20
GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # float32 on CPU: bf16 matmuls there are slow and would drift from HF's float32 reference.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _pinned_int32(n: int):
    """An int32 host buffer in page-locked memory registered with CUDA directly (not through torch's caching
    host allocator, whose event bookkeeping does not belong in a graph capture).
    Returns (tensor, numpy view, registered)."""
    import numpy as np

    arr = np.zeros(n, dtype=np.int32)
    try:
        rc = torch.cuda.cudart().cudaHostRegister(arr.ctypes.data, arr.nbytes, 0)
        ok = int(getattr(rc, "value", rc)) == 0
    except (RuntimeError, AttributeError, TypeError):
        ok = False
    if ok:
        return torch.from_numpy(arr), arr, True
    t = torch.empty(n, dtype=torch.int32, pin_memory=True)
    return t, t.numpy(), False


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    sizes = [s for s in GRAPH_BATCH_SIZES if s < max_batch_size]
    return sizes + [max_batch_size]


class ModelRunner:
    def __init__(self, cfg: ServingConfig, checkpoint_dir: Path):
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.model = load_model(checkpoint_dir, self.dtype, self.device)
        args = self.model.args
        self.max_model_len = cfg.max_model_len or args.max_position_embeddings
        self.model.init_rope(self.max_model_len, self.device)
        self.block_size = cfg.kv_block_size
        self.fast = self.dtype in (torch.float16, torch.bfloat16) and kernels.enabled(
            torch.empty(0, device=self.device))
        # One extra block on the fast path: the scratch block for padding rows of a CUDA graph.
        self._extra_blocks = 1 if self.fast else 0
        self.num_blocks = self._num_kv_blocks()
        self.kv_cache = torch.zeros(args.num_layers, 2, self.num_blocks + self._extra_blocks, self.block_size,
                                    args.num_kv_heads, args.head_dim, dtype=self.dtype, device=self.device)
        self.group = args.num_heads // args.num_kv_heads
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        if self.fast and self.device.type == "cuda":
            self._warmup()
        if self.fast and cfg.cuda_graphs:
            self._capture_graphs()

    def _kv_block_bytes(self) -> int:
        a = self.model.args
        return 2 * a.num_layers * self.block_size * a.num_kv_heads * a.head_dim * self.dtype.itemsize

    def _num_kv_blocks(self) -> int:
        budget = self.cfg.kv_cache_memory_bytes
        if not budget:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                budget = int(free * self.cfg.kv_cache_free_mem_fraction) - (1 << 30)  # headroom for activations
            else:
                budget = CPU_DEFAULT_KV_BYTES
        blocks = budget // self._kv_block_bytes() - self._extra_blocks
        if blocks < 2:
            raise ConfigError(f"kv_cache_memory_bytes: {budget} bytes hold {blocks} KV blocks of "
                              f"{self._kv_block_bytes()} bytes; raise kv_cache_memory_bytes "
                              "(or kv_cache_free_mem_fraction on a GPU), or lower kv_block_size")
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if (blocks + self._extra_blocks) * self._kv_block_bytes() > free:
                raise ConfigError(f"kv_cache_memory_bytes: {budget} bytes do not fit the {free} bytes free on "
                                  f"{self.device}; lower kv_cache_memory_bytes or kv_cache_free_mem_fraction")
        return int(blocks)

    # -- eager steps (CPU, prefill, mixed) ---------------------------------------------------------------------
    def _prepare(self, batch: ScheduledBatch) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        ids, positions, slots, ctx_lens, sample_rows = [], [], [], [], []
        bs = self.block_size
        for seq, n in zip(batch.seqs, batch.num_tokens):
            start = seq.num_computed_tokens
            ids.extend(seq.tokens[start:start + n])
            positions.extend(range(start, start + n))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            ctx_lens.append(start + n)
            if start + n == len(seq.tokens):
                sample_rows.append(len(ids) - 1)
        max_blocks = max(len(s.block_table) for s in batch.seqs)
        tables = [s.block_table + [0] * (max_blocks - len(s.block_table)) for s in batch.seqs]
        dev = self.device
        index = torch.int32 if self.fast else torch.long
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=index, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32 if self.fast else torch.long, device=dev),
            context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=dev),
            query_lens=list(batch.num_tokens),
            context_lens_host=ctx_lens,
            decode_only=all(n == 1 for n in batch.num_tokens),
            max_context_len=max(ctx_lens),
            context_bound=self.max_model_len,
        )
        if self.fast and not meta.decode_only:
            meta.add_varlen(self.group, self.model.args.head_dim)
        return (torch.tensor(ids, dtype=index, device=dev), torch.tensor(positions, dtype=index, device=dev),
                meta, sample_rows)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, sampling: SamplingBatch | None) -> tuple[list[int], list[TokenLogprob | None]]:
        """Runs the step; returns sampled tokens for the sequences that reached the end of their tokens."""
        if self._graphs and len(batch.seqs) <= self._graph_max and all(n == 1 for n in batch.num_tokens):
            return self._run_graph(batch, sampling)
        input_ids, positions, meta, sample_rows = self._prepare(batch)
        logits = self.model(input_ids, positions, self.kv_cache, meta,
                            torch.tensor(sample_rows, dtype=torch.long, device=self.device))
        if not sample_rows:
            return [], []
        assert sampling is not None
        return sample(logits, sampling)

    def sampling_rows(self, batch: ScheduledBatch) -> list[Sequence]:
        return [s for s, n in zip(batch.seqs, batch.num_tokens) if s.num_computed_tokens + n == len(s.tokens)]

    @torch.inference_mode()
    def _warmup(self) -> None:
        """Compiles the Triton kernels for every shape class an eager step can meet (Triton specializes on
        M == 1 and M % 16 == 0, our kernels on M buckets), so no request waits for a compilation."""
        scratch = self.num_blocks
        top = min(self.cfg.max_num_tokens, self.max_model_len)
        sizes = sorted({n for n in (2, 3, 16, 17, 32, 33, 64, 65, 128, 129, 1000, top - 1, top) if 2 <= n <= top})
        dev = self.device
        for n in sizes:
            width = -(-n // self.block_size)
            meta = AttentionMetadata(
                slot_mapping=torch.full((n,), -1, dtype=torch.int32, device=dev),
                block_tables=torch.full((1, width), scratch, dtype=torch.int32, device=dev),
                context_lens=torch.tensor([n], dtype=torch.int32, device=dev), query_lens=[n], context_lens_host=[n],
                decode_only=False, max_context_len=n, context_bound=self.max_model_len)
            meta.add_varlen(self.group, self.model.args.head_dim)
            ids = torch.zeros(n, dtype=torch.int32, device=dev)
            pos = torch.arange(n, dtype=torch.int32, device=dev)
            self.model(ids, pos, self.kv_cache, meta, torch.tensor([n - 1], device=dev))
        if not self.cfg.cuda_graphs:  # eager decode steps: one variant per split-K partition size
            for b in sorted({1, 2, 8, 64, self.cfg.max_batch_size}):
                meta = AttentionMetadata(
                    slot_mapping=torch.full((b,), -1, dtype=torch.int32, device=dev),
                    block_tables=torch.full((b, 1), scratch, dtype=torch.int32, device=dev),
                    context_lens=torch.ones(b, dtype=torch.int32, device=dev), query_lens=[1] * b,
                    context_lens_host=[1] * b, decode_only=True, max_context_len=1, context_bound=self.max_model_len)
                ids = torch.zeros(b, dtype=torch.int32, device=dev)
                self.model(ids, ids, self.kv_cache, meta, None)
        torch.cuda.synchronize(self.device)

    # -- CUDA graphs for decode ----------------------------------------------------------------------------------
    def _capture_graphs(self) -> None:
        sizes = graph_batch_sizes(self.cfg.max_batch_size)
        self._graph_max = max_b = max(sizes)
        W = self._width = -(-self.max_model_len // self.block_size)
        n = 4 * max_b + max_b * W
        self._host, self._host_np, registered = _pinned_int32(n)
        # The host -> device copy of the step's inputs is part of each graph when the host buffer is pinned
        # memory we registered (no allocator bookkeeping during capture): one launch per decode step.
        self._copy_in_graph = registered and self._host.is_pinned() and self._probe_copy_capture()
        self._dev = torch.empty(n, dtype=torch.int32, device=self.device)
        h = self._host_np
        self._h_ids, self._h_pos, self._h_slot, self._h_ctx = (h[i * max_b:(i + 1) * max_b] for i in range(4))
        self._h_bt = h[4 * max_b:].reshape(max_b, W)
        d = self._dev
        ids, pos, slot, ctx = (d[i * max_b:(i + 1) * max_b] for i in range(4))
        bt = d[4 * max_b:].view(max_b, W)
        self._scratch_block = self.num_blocks  # the extra block
        h[:] = 0
        self._h_slot[:] = self._scratch_block * self.block_size
        self._h_ctx[:] = 1
        self._h_bt[:, 0] = self._scratch_block
        self._row_tables: list[list[int] | None] = [None] * max_b
        self._dev.copy_(self._host)
        pool = torch.cuda.graph_pool_handle()
        for S in sorted(sizes, reverse=True):
            meta = AttentionMetadata(slot_mapping=slot[:S], block_tables=bt[:S], context_lens=ctx[:S],
                                     query_lens=[1] * S, context_lens_host=[1] * S, decode_only=True,
                                     max_context_len=self.max_model_len, context_bound=self.max_model_len)
            for _ in range(2):  # compiles the Triton kernels outside the capture
                self._decode_forward(ids[:S], pos[:S], meta)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            n_copy = 4 * max_b + S * W
            with torch.cuda.graph(graph, pool=pool):
                if self._copy_in_graph:
                    self._dev[:n_copy].copy_(self._host[:n_copy], non_blocking=True)
                logits, tokens = self._decode_forward(ids[:S], pos[:S], meta)
            self._graphs[S] = (graph, logits, tokens)
        torch.cuda.synchronize(self.device)
        self._sizes = sorted(sizes)
        log.info("captured CUDA graphs for decode batch sizes %s", self._sizes)

    def _probe_copy_capture(self) -> bool:
        """Captures a host -> device copy alone once; graphs copy their inputs themselves only if that works."""
        src = self._host[:16]
        dst = torch.empty(16, dtype=torch.int32, device=self.device)
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                dst.copy_(src, non_blocking=True)
            src.fill_(7)
            g.replay()
            torch.cuda.synchronize(self.device)
            ok = bool((dst == 7).all())
            src.zero_()
            return ok
        except RuntimeError:
            log.warning("capturing the input copy in the decode graphs failed; copying before each replay")
            torch.cuda.synchronize(self.device)
            return False

    def _decode_forward(self, ids: torch.Tensor, pos: torch.Tensor, meta: AttentionMetadata):
        logits = self.model(ids, pos, self.kv_cache, meta, None)
        return logits, logits.argmax(dim=-1)

    def _run_graph(self, batch: ScheduledBatch, sampling: SamplingBatch | None):
        B = len(batch.seqs)
        S = next(s for s in self._sizes if s >= B)
        bs = self.block_size
        ids, pos, slot, ctx = self._h_ids, self._h_pos, self._h_slot, self._h_ctx
        bt, rows = self._h_bt, self._row_tables
        seqs = batch.seqs
        p_list = [s.num_computed_tokens for s in seqs]
        pos[:B] = p_list
        ctx[:B] = [p + 1 for p in p_list]
        ids[:B] = [s.tokens[p] for s, p in zip(seqs, p_list)]
        slot[:B] = [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, p_list)]
        for i, seq in enumerate(seqs):
            table = seq.block_table
            if rows[i] != table:
                bt[i, :len(table)] = table
                rows[i] = list(table)
        for i in range(B, S):  # padding rows: scratch slot, one-token context
            if rows[i] is not None or ctx[i] != 1:
                ids[i] = pos[i] = 0
                slot[i] = self._scratch_block * bs
                ctx[i] = 1
                bt[i, 0] = self._scratch_block
                rows[i] = None
        if not self._copy_in_graph:
            n = 4 * self._graph_max + S * self._width
            self._dev[:n].copy_(self._host[:n], non_blocking=True)
        graph, logits, tokens = self._graphs[S]
        graph.replay()
        if sampling is None or is_plain_greedy(sampling):
            return tokens[:B].tolist(), [None] * B
        return sample(logits[:B], sampling)
