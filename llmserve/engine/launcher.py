"""Launched steps and the decode CUDA graphs: the part of ModelRunner that starts a step without waiting for it.

`launch` starts a greedy step, plain decode or mixed (prefill chunks next to decode rows), and returns at once
(async scheduling). A decode row whose input token is still on the device (its sequence's placeholder: the
previous launched step's argmax) names that step's output row in `src_rows`, and takes the token from there
on the device, so the engine queues step N+1 before it has read step N's tokens and its host work overlaps
the GPU's. The step's sampled rows' argmax lands, in row order, in a device buffer the next launch reads
(`Launched.device_tokens`) and, by an asynchronous copy, in one of two pinned host buffers used in turn: the
engine completes step N before it launches step N+2, so a buffer is free again by then.
- Decode steps replay a decode graph per padded batch size (1, 2, 4, ..., 256): the inputs go through a pinned
  host buffer (two, used in turn) and one copy into the graphs' static inputs; the graph takes the carried
  tokens, computes logits and their argmax and writes it to `_last_tokens`.
- Mixed steps on CUDA replay a prefill graph (prefill_graphs.py), which takes the carried tokens from
  `_last_tokens` itself; the sampled rows' logits and argmax follow eagerly and overwrite `_last_tokens[:R]`.
  A mixed step larger than the prefill graphs (up to max_num_tokens) runs eagerly on the same pinned inputs,
  so that it too is queued without a host sync.
- Without graphs (a CPU, graphs off) the same runs eagerly.
Padding rows of a decode graph write their K/V into a scratch block the block manager never hands out.
With tensor-parallel workers each step goes to them first (llmserve/engine/parallel/step_broadcast.py: a decode
graph's filled inputs as they are, a mixed step as StepInputs) and they replay the same graphs, computing the
same argmax into their own `_last_tokens` (lm_head is replicated), so carried tokens need no extra message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from llmserve.engine.graph_inputs import DecodeInputs, StepInputs
from llmserve.engine.prefill_graphs import PrefillGraphs
from llmserve.engine.scheduler import ScheduledBatch
from llmserve.engine.sequence import Sequence
from llmserve.model.attention import AttentionMetadata

log = logging.getLogger(__name__)
GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Launched:
    """A step on its way: its sampled sequences in row order and, once `tokens()` returns, their argmax."""

    seqs: list[Sequence]
    device_tokens: torch.Tensor  # [>= len(seqs)] on the device: what the next launch's src_rows index
    host: torch.Tensor  # [>= len(seqs)] int64, filled by an asynchronous copy
    event: torch.cuda.Event | None
    # The step's sequences that sample nothing (prompt chunks with more to come): the engine publishes their
    # computed blocks to the prefix cache when it completes the step, as a synchronous step would.
    chunks: list[Sequence] = field(default_factory=list)
    _rows: dict[int, int] | None = field(default=None, init=False, repr=False)

    def row(self, seq: Sequence) -> int:
        if self._rows is None:  # built on first use: a steady decode step never asks (TorchEngine._launch)
            self._rows = {id(s): i for i, s in enumerate(self.seqs)}
        return self._rows.get(id(seq), -1)

    def tokens(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()  # the step's one host sync
        return self.host[:len(self.seqs)].tolist()


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    sizes = [s for s in GRAPH_BATCH_SIZES if s < max_batch_size]
    return sizes + [max_batch_size]


def carried_rows(num_tokens: list[int], src_rows: list[int]) -> np.ndarray | None:
    """Per token of a step, the previous step's output row its id comes from (-1: its own id); None when no
    token is carried. A carried token is the one token of its sequence in the step (a decode row)."""
    src = np.asarray(src_rows, dtype=np.int32)
    has = src >= 0
    if not has.any():
        return None
    out = np.full(sum(num_tokens), -1, dtype=np.int32)
    out[(np.cumsum(num_tokens) - 1)[has]] = src[has]
    return out


class Launcher:
    """ModelRunner's launched steps and decode graphs (a base class: it uses the runner's model, cache, config)."""

    # -- CUDA graphs for decode ----------------------------------------------------------------------------------
    @property
    def decode_graph_sizes(self) -> list[int]:
        """The padded batch sizes of the captured decode graphs, ascending (empty: none captured)."""
        return list(self._sizes)

    def graph_for(self, batch_size: int) -> torch.cuda.CUDAGraph:
        """The captured decode graph that a step of `batch_size` rows replays (its padded size's)."""
        size = next((s for s in self._sizes if s >= batch_size), None)
        if size is None:
            raise KeyError(f"no decode graph takes {batch_size} rows (captured: {self._sizes})")
        return self._graphs[size][0]

    def drop_graphs(self) -> None:
        """Forgets the captured graphs, decode and prefill: steps run eagerly until `capture_graphs` again."""
        if self._graphs:
            torch.cuda.synchronize(self.device)  # no replay or input copy of theirs still in flight
        self._graphs.clear()
        self._sizes = []
        self._prefill_graphs = None

    def capture_graphs(self) -> None:
        """Captures the prefill graphs, then a decode graph per padded batch size (with the model's kernels)."""
        if self._graphs:
            self.drop_graphs()
        sizes = graph_batch_sizes(self.cfg.batching.max_batch_size)
        self._graph_max = max_b = max(sizes)
        W = self._width = -(-self.max_model_len // self.block_size)
        n = 5 * max_b + max_b * W
        self._scratch_block = self.num_blocks  # the extra block
        # Sections: token ids, positions, cache slots, context lengths, source rows; then block tables.
        self._hosts = [DecodeInputs(n, max_b, W, self._scratch_block, self.block_size) for _ in range(2)]
        self._turn = 0
        self._follow_copied: list[torch.cuda.Event | None] = [None, None]  # a worker's (follow_decode)
        self._dev = torch.empty(n, dtype=torch.int32, device=self.device)
        d = self._dev
        ids, pos, slot, ctx, src = (d[i * max_b:(i + 1) * max_b] for i in range(5))
        bt = d[5 * max_b:].view(max_b, W)
        # The previous launched step's argmax, for rows whose input token is still on the device (src >= 0).
        self._last_tokens = torch.zeros(max_b, dtype=torch.int32, device=self.device)
        # Launched steps' tokens for the host, one buffer per launch in turn (decode and mixed alike).
        self._out_host = [torch.zeros(max_b, dtype=torch.long).pin_memory() for _ in range(2)]
        self._out_turn = 0
        self._dev.copy_(self._hosts[0].tensor)
        pool = torch.cuda.graph_pool_handle()
        # Prefill graphs first: captured after, they left the batch-1 decode graph slower (docs/performance.md).
        top = min(self.cfg.pytorch.prefill_graph_max_tokens, self.cfg.batching.max_num_tokens)
        if top > 0:
            self._prefill_graphs = PrefillGraphs(self.model, self.kv_cache, self.cfg.batching.max_num_tokens,
                                                 self.cfg.batching.max_batch_size, W, self.max_model_len,
                                                 last_tokens=self._last_tokens, graph_tokens=top)
            self._prefill_graphs.capture_all(pool)
            self._prefill_graphs.warm_past_buckets(self._scratch_block)
        for S in sorted(sizes, reverse=True):
            meta = AttentionMetadata(slot_mapping=slot[:S], block_tables=bt[:S], context_lens=ctx[:S],
                                     query_lens=[1] * S, context_lens_host=[1] * S, decode_only=True,
                                     max_context_len=self.max_model_len, context_bound=self.max_model_len)
            # PDL only up to 16 rows, where our GEMV/GEMM kernels do the linear layers: eager steps and larger
            # graphs were slower with it (docs/performance.md).
            with self.model.pdl_launches(self.pdl and S <= 16):
                for _ in range(2):  # compiles the Triton kernels outside the capture
                    self._decode_forward(ids[:S], pos[:S], src[:S], meta)
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    logits, tokens = self._decode_forward(ids[:S], pos[:S], src[:S], meta)
            self._graphs[S] = (graph, logits, tokens)
        torch.cuda.synchronize(self.device)
        self._sizes = sorted(sizes)
        log.info("captured CUDA graphs for decode batch sizes %s", self._sizes)

    def _decode_forward(self, ids: torch.Tensor, pos: torch.Tensor, src: torch.Tensor, meta: AttentionMetadata):
        ids = torch.where(src >= 0, self._last_tokens[src.clamp(min=0)], ids)
        # Logits in the lm_head's dtype: the argmax needs no float32 copy (1,024 rows of a 128k vocabulary: 1 GB of
        # traffic a step), and the sampler upcasts the rows it samples
        logits = self.model.logits(*self.model.decode_layers(ids, pos, self.kv_cache, meta), upcast=False)
        tokens = logits.argmax(dim=-1)
        self._last_tokens[:tokens.shape[0]].copy_(tokens)
        return logits, tokens

    def _replay(self, batch: ScheduledBatch, src_rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Fills this turn's host inputs, copies them and replays the graph; returns (tokens, logits)."""
        B = len(batch.seqs)
        S = next(s for s in self._sizes if s >= B)
        self._turn ^= 1
        h = self._hosts[self._turn]
        h.fill(batch.seqs, src_rows, S)
        inputs = h.tensor[:5 * self._graph_max + S * self._width]
        with self.tp.decode(S, inputs) if self.tp is not None else nullcontext():
            return self._replay_inputs(S, inputs)

    def _replay_inputs(self, S: int, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._dev[:len(inputs)].copy_(inputs, non_blocking=True)
        graph, logits, tokens = self._graphs[S]
        graph.replay()
        return tokens, logits

    def follow_decode(self, S: int, n: int, receive: Callable[[torch.Tensor], None]) -> None:
        """A tensor-parallel worker's decode step: rank 0's filled inputs for the graph of S rows, received into
        this rank's host buffers in turn (the copy from a buffer two steps ago must be done before it is
        refilled), then the same replay."""
        self._turn ^= 1
        copied = self._follow_copied[self._turn]
        if copied is not None:
            copied.synchronize()
        inputs = self._hosts[self._turn].tensor[:n]
        receive(inputs)
        self._replay_inputs(S, inputs)
        self._follow_copied[self._turn] = torch.cuda.Event()
        self._follow_copied[self._turn].record()

    # -- launched steps ------------------------------------------------------------------------------------------
    def can_launch(self, batch_size: int) -> bool:
        """Whether `launch` takes a decode step of this many rows (CUDA graphs cover it, or no graphs at all; with
        tensor-parallel workers, graphs only: an eager launch's carried tokens are rank 0's alone)."""
        if self._graphs:
            return batch_size <= self._graph_max
        return self.tp is None

    @property
    def mixed_token_cap(self) -> int:
        """The most tokens a launched mixed step may have (0: none is launched): on CUDA, the prefill graphs'
        inputs' (max_num_tokens; past the captured graphs the step runs eagerly on them)."""
        if self.device.type != "cuda":
            return self.cfg.batching.max_num_tokens if self.tp is None else 0
        return self._prefill_graphs.max_tokens if self._prefill_graphs is not None else 0

    def can_launch_mixed(self, num_tokens: int, num_seqs: int) -> bool:
        """Whether `launch` takes a mixed step of this size (a CPU: any; CUDA: one the prefill graphs take)."""
        if self.device.type != "cuda":
            return self.tp is None
        return self._prefill_graphs is not None and self._prefill_graphs.fits(num_tokens, num_seqs)

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, src_rows: list[int], prev: Launched | None) -> Launched:
        """Starts a greedy step and returns without waiting for it. A row with src_rows[i] >= 0 (a decode row)
        takes its input token from row src_rows[i] of `prev`'s output, on the device."""
        seqs = batch.seqs
        decode = len(seqs) == batch.total_tokens  # one token per sequence: every row is sampled
        if decode and self._graphs:
            tokens, _ = self._replay(batch, src_rows)
            return self._launched(list(seqs), self._last_tokens, tokens)
        step = StepInputs.of(seqs, batch.num_tokens, self.block_size)
        rows = list(seqs) if decode else self.sampling_rows(batch)
        carried = carried_rows(batch.num_tokens, src_rows)
        graphs = self._prefill_graphs
        if not decode and graphs is not None and graphs.fits(len(step.ids), len(seqs)):
            with self.tp.step(step, carried, launched=True) if self.tp is not None else nullcontext():
                tokens = self._mixed_tokens(step, carried)
            return self._launched(rows, self._last_tokens, tokens)
        tokens = self._eager_tokens(step, carried, prev)
        return self._launched(rows, tokens, tokens)

    def _mixed_tokens(self, step: StepInputs, carried: np.ndarray | None) -> torch.Tensor | None:
        """A mixed step in the prefill graphs (which take the carried tokens from _last_tokens): its sampled rows'
        argmax, also left in _last_tokens for the next launch. Every tensor-parallel rank runs it (replicated
        lm_head, identical hidden states after the all-reduce), so every rank's _last_tokens agree."""
        logits = self._prefill_graphs.run(step, carried)
        tokens = logits.argmax(dim=-1) if logits is not None else None
        if tokens is not None:
            self._last_tokens[:len(tokens)].copy_(tokens)
        return tokens

    def _eager_tokens(self, step: StepInputs, carried: np.ndarray | None, prev: Launched | None) -> torch.Tensor:
        """An eager step's sampled rows' argmax (the same logits as `forward`), carried ids from `prev`'s output."""
        input_ids, positions, meta = self._prepare(step)
        if carried is not None:
            src = torch.from_numpy(carried).to(device=self.device, dtype=torch.long)
            input_ids = torch.where(src >= 0, prev.device_tokens[src.clamp(min=0)].to(input_ids.dtype), input_ids)
        rows = torch.tensor(step.sample_rows, dtype=torch.long, device=self.device)
        return self.model(input_ids, positions, self.kv_cache, meta, rows).argmax(dim=-1)

    def _launched(self, rows: list[Sequence], device_tokens: torch.Tensor, tokens: torch.Tensor | None) -> Launched:
        """The step's tokens on their way to the host: an asynchronous copy into a pinned buffer on CUDA."""
        if self._graphs:  # two buffers in turn: the one of two launches ago was read (completed) already
            self._out_turn ^= 1
            host = self._out_host[self._out_turn]
        elif self.device.type == "cuda":
            host = torch.empty(max(len(rows), 1), dtype=torch.long, pin_memory=True)
        else:
            return Launched(rows, device_tokens, tokens if tokens is not None else torch.empty(0, dtype=torch.long),
                            None)
        if tokens is None:  # nothing sampled: nothing to wait for
            return Launched(rows, device_tokens, host, None)
        host[:len(rows)].copy_(tokens[:len(rows)], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return Launched(rows, device_tokens, host, event)
