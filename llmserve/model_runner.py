"""Device work for one scheduled step: build the flat batch, run the model, sample."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from llmserve.attention import AttentionMetadata
from llmserve.config import ConfigError, ServingConfig
from llmserve.engine_api import TokenLogprob
from llmserve.llama import load_model
from llmserve.sampler import SamplingBatch, sample
from llmserve.scheduler import ScheduledBatch
from llmserve.sequence import Sequence

log = logging.getLogger(__name__)
CPU_DEFAULT_KV_BYTES = 256 << 20


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # float32 on CPU: bf16 matmuls there are slow and would drift from HF's float32 reference.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


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
        self.num_blocks = self._num_kv_blocks()
        self.kv_cache = torch.zeros(args.num_layers, 2, self.num_blocks, self.block_size, args.num_kv_heads,
                                    args.head_dim, dtype=self.dtype, device=self.device)

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
        blocks = budget // self._kv_block_bytes()
        if blocks < 2:
            raise ConfigError(f"kv_cache_memory_bytes: {budget} bytes hold {blocks} KV blocks of "
                              f"{self._kv_block_bytes()} bytes; raise kv_cache_memory_bytes "
                              "(or kv_cache_free_mem_fraction on a GPU), or lower kv_block_size")
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if blocks * self._kv_block_bytes() > free:
                raise ConfigError(f"kv_cache_memory_bytes: {budget} bytes do not fit the {free} bytes free on "
                                  f"{self.device}; lower kv_cache_memory_bytes or kv_cache_free_mem_fraction")
        return int(blocks)

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
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.long, device=dev),
            context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=dev),
            query_lens=list(batch.num_tokens),
            context_lens_host=ctx_lens,
            decode_only=all(n == 1 for n in batch.num_tokens),
            max_context_len=max(ctx_lens),
        )
        return (torch.tensor(ids, dtype=torch.long, device=dev), torch.tensor(positions, dtype=torch.long, device=dev),
                meta, sample_rows)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, sampling: SamplingBatch | None) -> tuple[list[int], list[TokenLogprob | None]]:
        """Runs the step; returns sampled tokens for the sequences that reached the end of their tokens."""
        input_ids, positions, meta, sample_rows = self._prepare(batch)
        logits = self.model(input_ids, positions, self.kv_cache, meta,
                            torch.tensor(sample_rows, dtype=torch.long, device=self.device))
        if not sample_rows:
            return [], []
        assert sampling is not None
        return sample(logits, sampling)

    def sampling_rows(self, batch: ScheduledBatch) -> list[Sequence]:
        return [s for s, n in zip(batch.seqs, batch.num_tokens) if s.num_computed_tokens + n == len(s.tokens)]
