"""Device work for one scheduled step: build the flat batch, run the model, sample.

On CUDA with a 16-bit model, decode steps replay CUDA graphs captured per padded batch size (1, 2, 4, ...,
256): the step's inputs go through a pinned host buffer and one copy into the graphs' static inputs, the
graph computes logits and their argmax, and the one host sync of the step is reading the token ids back.
Prefill and mixed steps of up to `prefill_graph_max_tokens` tokens replay a graph per padded token count
(llmserve/engine/prefill_graphs.py); larger ones, and every step on a CPU, run eagerly (varlen attention), a
greedy one larger than the graphs on their pinned inputs, so that it too is launched without a host sync.

`launch` (llmserve/engine/launcher.py, with the decode graphs) starts a greedy step, decode or mixed, without
waiting for it: a decode row may take its input token from the previous launched step's output on the device
(`src_rows`), so the engine can queue step N+1 before it has read step N's tokens, and its host work overlaps
the GPU's.

The kernel switch (LLMSERVE_TRITON_KERNELS) is read once, here at start, and the loaded model keeps the choice;
programmatic dependent launch is on only while the small decode graphs are captured (`model.pdl_launches`).
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from llmserve import kernels
from llmserve.config import ConfigError, ServingConfig, switch
from llmserve.engine.api import TokenLogprob
from llmserve.engine.graph_inputs import StepInputs
from llmserve.engine.launcher import Launcher
from llmserve.engine.parallel.group import RankGroup
from llmserve.engine.parallel.pipeline import InFlight
from llmserve.engine.penalties import TokenHistory
from llmserve.engine.prefill_graphs import PrefillGraphs
from llmserve.engine.sampler import SamplingBatch, is_plain_greedy, sample
from llmserve.engine.scheduler import ScheduledBatch
from llmserve.engine.sequence import Sequence
from llmserve.engine.startup import StartupTimes, served_context
from llmserve.kernels.shapes import decode_page_ok, mixed_split_rows
from llmserve.model.attention import AttentionMetadata
from llmserve.model.llama import check_served_context, load_model

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


def use_pdl(choice: str, device: torch.device) -> bool:
    """`pdl` auto: on for Hopper and later (compute capability 9.0+), where programmatic dependent launch exists.
    It applies to the linear and fused kernels of the decode graphs of up to 16 rows (capture_graphs)."""
    return switch(choice, lambda: device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0))


class ModelRunner(Launcher):
    def __init__(self, cfg: ServingConfig, checkpoint_dir: Path, tp: RankGroup | None = None):
        """tp: this process's rank of a tensor/pipeline-parallel group (llmserve/engine/parallel): its shard, its
        heads of its layers' KV; rank 0 sends each step to the others, which replay the same CUDA graphs (tensor
        parallel only: pipeline stages run eagerly)."""
        self.cfg = cfg
        self.tp = tp
        self.device = tp.device if tp is not None else pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.pytorch.dtype, self.device)
        self.kernel_mode = kernels.mode_from_env()
        self.startup = StartupTimes(self.device)  # seconds per start phase (bench: --phases load)
        self.model = self.startup.timed("load", load_model, checkpoint_dir, self.dtype, self.device, self.kernel_mode,
                                        prepare=tp and tp.shard, select=tp and tp.select)
        self.model.launch.fp8_fast_accum = cfg.pytorch.fp8_fast_accum
        args = self.model.args
        self.block_size = cfg.cache.kv_block_size
        self.kv_dtype = torch.float8_e4m3fn if cfg.cache.kv_cache_dtype == "fp8" else self.dtype
        self.fast = self.model.kernels  # the Triton path (16-bit, CUDA, triton, not switched off)
        if self.fast and not decode_page_ok(self.block_size):
            raise ConfigError(f"kv_block_size: {self.block_size} tokens; the CUDA attention kernels read whole blocks "
                              "of a power of two from 16 tokens (16, 32, 64, ...)")
        self.pdl = self.fast and cfg.pytorch.cuda_graphs and use_pdl(cfg.pytorch.pdl, self.device)
        # One extra block on the fast path: the scratch block for padding rows of a CUDA graph.
        self._extra_blocks = 1 if self.fast else 0
        self.num_blocks = self._num_kv_blocks() if tp is None else tp.agree_blocks(self._num_kv_blocks())
        self.max_model_len = served_context(cfg.max_model_len, args.max_position_embeddings,
                                            self.num_blocks * self.block_size)
        if tp is not None:
            tp.open(self.max_model_len, args, self.dtype)
        check_served_context(args, self.max_model_len)  # a sliding window must not cut the context
        self.model.init_rope(self.max_model_len, self.device)
        self.kv_cache = self.startup.timed("kv_allocation", torch.zeros, args.num_layers, 2,
                                           self.num_blocks + self._extra_blocks, self.block_size, args.num_kv_heads,
                                           args.head_dim, dtype=self.kv_dtype, device=self.device)
        self.group = args.num_heads // args.num_kv_heads
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._sizes: list[int] = []
        self._prefill_graphs: PrefillGraphs | None = None
        self.last_launch_s = 0.0
        self.last_launch_split_ms: tuple[float, float, float] | None = None  # a graph step's inputs/replay/logits
        self.token_history = TokenHistory(cfg.batching.max_batch_size, self.device)  # penalised rows' tokens
        if self.fast and self.device.type == "cuda" and getattr(tp, "pipeline", None) is None:  # stages: not yet
            self.startup.timed("warmup", self._warmup)
        if self.fast and cfg.pytorch.cuda_graphs and getattr(tp, "pipeline", None) is None:
            self.startup.timed("graph_capture", self.capture_graphs)  # every rank, in the same order

    def _kv_block_bytes(self) -> int:
        a = self.model.args
        return 2 * a.num_layers * self.block_size * a.num_kv_heads * a.head_dim * self.kv_dtype.itemsize

    def _num_kv_blocks(self) -> int:
        budget = self.cfg.cache.kv_cache_memory_bytes
        if not budget:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                budget = int(free * self.cfg.cache.kv_cache_free_mem_fraction) - (1 << 30)  # headroom for activations
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
    def _prepare(self, step: StepInputs) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        index = torch.int32 if self.fast else torch.long
        meta = AttentionMetadata.for_step(step, self.device, index, self.max_model_len, self.group,
                                          self.model.args.head_dim, work_list=self.fast,
                                          split_rows=mixed_split_rows(self.kv_dtype == torch.float8_e4m3fn))
        return (torch.tensor(step.ids, dtype=index, device=self.device),
                torch.tensor(step.positions, dtype=index, device=self.device), meta)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, sampling: SamplingBatch | None) -> tuple[list[int], list[TokenLogprob | None]]:
        """Runs the step; returns sampled tokens for the sequences that reached the end of their tokens."""
        if self._graphs and len(batch.seqs) <= self._graph_max and all(n == 1 for n in batch.num_tokens):
            if sampling is None or is_plain_greedy(sampling):
                return self.launch(batch, [-1] * len(batch.seqs), None).tokens(), [None] * len(batch.seqs)
            _, logits = self._replay(batch, [-1] * len(batch.seqs))
            return sample(logits[:len(batch.seqs)], sampling)
        if self.tp is not None and self.tp.pipeline is not None:
            return self.collect(self.submit(batch, sampling), sampling)
        t0 = time.perf_counter()
        step = StepInputs.of(batch.seqs, batch.num_tokens, self.block_size)
        self.last_launch_split_ms = None
        with self.tp.step(step) if self.tp is not None else nullcontext():
            if self._prefill_graphs is not None and self._prefill_graphs.fits(len(step.ids), len(batch.seqs)):
                logits = self._prefill_graphs.run(step)
                self.last_launch_split_ms = self._prefill_graphs.last_split_ms
            else:
                logits = self.forward(step)
        # Host time to enqueue the step (the step trace's launch_ms): near the step's wall time when the host sets
        # the pace, or when it was held up inside the launch while the GPU worked (docs/performance.md).
        self.last_launch_s = time.perf_counter() - t0
        if not step.sample_rows:
            return [], []
        assert sampling is not None
        return sample(logits, sampling)

    @property
    def steps_in_flight(self) -> int:
        """Steps the engine may keep in the pipeline at once (`submit` before `collect`): 1 without stages."""
        pipeline = self.tp.pipeline if self.tp is not None else None
        return pipeline.steps_in_flight if pipeline is not None else 1

    @torch.inference_mode()
    def submit(self, batch: ScheduledBatch, sampling: SamplingBatch | None) -> InFlight:
        """Pipeline stages: sends the step and runs rank 0's stage of it, without waiting for the others. When
        every sampled row is plain greedy the last stage sends their token ids, not their logits."""
        t0 = time.perf_counter()
        argmax = sampling is None or is_plain_greedy(sampling)
        step = StepInputs.of(batch.seqs, batch.num_tokens, self.block_size)
        with self.tp.step(step, wait=False, argmax=argmax):
            flight = self.tp.pipeline.submit(self.model, self.kv_cache, step, self._prepare, argmax)
        self.last_launch_s, self.last_launch_split_ms = time.perf_counter() - t0, None
        return flight

    @torch.inference_mode()
    def collect(self, flight: InFlight, sampling: SamplingBatch | None) -> tuple[list[int], list[TokenLogprob | None]]:
        """A submitted step's sampled tokens, once its logits are back from the last stage."""
        with self.tp.guard():
            out = self.tp.pipeline.collect(flight)
        if not flight.sample_rows or sampling is None:  # None: the step is dropped (the engine stops)
            return [], []
        if flight.argmax:
            return out.tolist(), [None] * len(out)
        return sample(out, sampling)

    @torch.inference_mode()
    def forward(self, step: StepInputs, logits: bool = True, argmax: bool = False) -> torch.Tensor | None:
        """An eager step's sampled rows' logits; logits=False: a TP worker's layers only; stages: pipeline.py (a
        worker's part of a step rank 0 submitted, `argmax` as it sent it)."""
        if self.tp is not None and self.tp.pipeline is not None:
            return self.tp.pipeline.run(self.model, self.kv_cache, step, self._prepare, argmax)
        input_ids, positions, meta = self._prepare(step)
        if not logits:
            self.model.decode_layers(input_ids, positions, self.kv_cache, meta)
            return None
        return self.model(input_ids, positions, self.kv_cache, meta,
                          torch.tensor(step.sample_rows, dtype=torch.long, device=self.device))

    def follow(self, step: StepInputs, carried: np.ndarray | None, launched: bool, argmax: bool = False) -> None:
        """A tensor-parallel worker's shard of a step rank 0 sent: run as rank 0 ran it (`run`, or `launch` for a
        launched one), so that both take the same graphs, hence the same collectives."""
        graphs = self._prefill_graphs
        if launched:
            self._mixed_tokens(step, carried)
        elif graphs is not None and graphs.fits(len(step.ids), len(step.query_lens)):
            graphs.run(step, logits=False)
        else:
            self.forward(step, logits=False, argmax=argmax)

    def close(self) -> None:
        """Frees the KV cache and stops the tensor-parallel workers (if any)."""
        self.kv_cache = None
        if self.tp is not None:
            self.tp.close()

    def sampling_rows(self, batch: ScheduledBatch) -> list[Sequence]:
        return [s for s, n in zip(batch.seqs, batch.num_tokens) if s.num_computed_tokens + n == len(s.tokens)]

    def sampling_of(self, batch: ScheduledBatch) -> tuple[list[Sequence], SamplingBatch | None]:
        """The step's sampled rows and their sampling inputs (penalties read their tokens from token_history)."""
        rows = self.sampling_rows(batch)
        return rows, SamplingBatch.of(rows, self.token_history) if rows else None

    def _warm_step(self, query_lens: list[int], context_lens: list[int], scratch: int) -> None:
        """One eager step of these sequences on the scratch block, writing no cache slot: compiles what it launches."""
        dev, n = self.device, sum(query_lens)
        meta = AttentionMetadata(
            slot_mapping=torch.full((n,), -1, dtype=torch.int32, device=dev),
            block_tables=torch.full((len(query_lens), -(-max(context_lens) // self.block_size)), scratch,
                                    dtype=torch.int32, device=dev),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=dev), query_lens=query_lens,
            context_lens_host=context_lens, decode_only=False, max_context_len=max(context_lens),
            context_bound=self.max_model_len)
        meta.add_varlen(self.group, self.model.args.head_dim)
        pos = torch.tensor([p for q, c in zip(query_lens, context_lens) for p in range(c - q, c)], dtype=torch.int32,
                           device=dev)
        self.model(torch.zeros(n, dtype=torch.int32, device=dev), pos, self.kv_cache, meta,
                   torch.tensor([n - 1], device=dev))

    @torch.inference_mode()
    def _warmup(self) -> None:
        """Compiles the Triton kernels for every shape class an eager step can meet (Triton specializes on
        M == 1 and M % 16 == 0, our kernels on M buckets), so no request waits for a compilation."""
        scratch = self.num_blocks
        top = min(self.cfg.batching.max_num_tokens, self.max_model_len)
        sizes = sorted({n for n in (2, 3, 16, 17, 32, 33, 64, 65, 128, 129, 1000, top - 1, top) if 2 <= n <= top})
        dev = self.device
        for n in sizes:
            self._warm_step([n], [n], scratch)
        # A fresh prompt beside a chunk after a cached prefix: the varlen launch over the cache too (the steps above
        # are fresh prompts, which attend over their own K/V)
        self._warm_step([2, 1], [2, 2], scratch)
        if not self.cfg.pytorch.cuda_graphs:  # eager decode steps: the linear kernels' M classes, each attention config
            from llmserve.kernels.attention import decode_config

            firsts: dict[tuple, int] = {}
            for b in range(1, self.cfg.batching.max_batch_size + 1):
                firsts.setdefault(decode_config(self.max_model_len, b, self.model.args.num_kv_heads), b)
            for b in sorted({1, 2, 8, 64, self.cfg.batching.max_batch_size, *firsts.values()}):
                meta = AttentionMetadata(
                    slot_mapping=torch.full((b,), -1, dtype=torch.int32, device=dev),
                    block_tables=torch.full((b, 1), scratch, dtype=torch.int32, device=dev),
                    context_lens=torch.ones(b, dtype=torch.int32, device=dev), query_lens=[1] * b,
                    context_lens_host=[1] * b, decode_only=True, max_context_len=1, context_bound=self.max_model_len)
                ids = torch.zeros(b, dtype=torch.int32, device=dev)
                self.model(ids, ids, self.kv_cache, meta, None)
        torch.cuda.synchronize(self.device)
