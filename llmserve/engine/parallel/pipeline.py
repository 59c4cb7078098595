"""One step through the pipeline stages, as micro-batches, over point-to-point sends of the hidden states.

Every rank has the whole step (rank 0's broadcast) and cuts it the same way into micro-batches of whole
sequences (a sequence's tokens attend only to its own KV, so micro-batches are independent). Stage k runs
micro-batch i and sends its (hidden state, residual) to stage k+1 without waiting (isend), so it starts on
i+1 while k+1 works on i. The last stage's tensor-parallel rank 0 sends each micro-batch's logits of the sampled
rows to rank 0, which samples. Rank r = stage * tp + tp_rank sends to the same tp_rank of the next stage: after
the row-parallel all-reduce every tensor-parallel rank of a stage holds the full hidden state.

Across steps: rank 0 may `submit` several steps before it `collect`s the first (the engine gives each step
sequences the others do not have), so stage 0 runs step N+1 while the last stage runs step N. Every rank takes
the steps in the order rank 0 sent them, so a step's K/V are written at every stage before the next step reads.
The logits travel in a group of their own (rank 0 and the last stage's first rank): NCCL runs a pair's sends and
receives in order on one stream, and rank 0 sends step N+1's hidden state to stage 1 before it receives step N's
logits, which with two stages come from that same rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from llmserve.engine.graph_inputs import StepInputs
from llmserve.model.attention import AttentionMetadata

Prepared = tuple[torch.Tensor, torch.Tensor, AttentionMetadata]
# pipeline_micro_batches 0 (auto) cuts only steps of at least this many tokens, one micro-batch per stage. A
# smaller step's micro-batches cost more than their overlap saves: each repeats the weight reads and a message's
# latency (CPU/gloo, bench/pipeline_overlap.py: a 16-row decode step took 139 ms in 2 micro-batches, 57 in one).
AUTO_SPLIT_TOKENS = 64


def steps_in_flight(knob: int, stages: int) -> int:
    """How many steps rank 0 keeps in the pipeline (the pipeline_steps_in_flight knob; 0: one per stage)."""
    return knob or stages


def micro_batch_count(tokens: int, knob: int, stages: int) -> int:
    """How many micro-batches a step of `tokens` tokens is cut into (split_step caps it at its sequences)."""
    if knob:
        return knob
    return stages if tokens >= AUTO_SPLIT_TOKENS else 1


@dataclass(frozen=True)
class StageRole:
    """Where a rank sits in the grid of stages x tensor-parallel ranks."""

    rank: int
    tp: int
    stages: int

    @property
    def stage(self) -> int:
        return self.rank // self.tp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.stages - 1

    @property
    def previous(self) -> int:
        return self.rank - self.tp

    @property
    def next(self) -> int:
        return self.rank + self.tp

    @property
    def sends_logits(self) -> bool:
        return self.last and self.tp_rank == 0

    def tp_ranks(self, stage: int) -> list[int]:
        return list(range(stage * self.tp, (stage + 1) * self.tp))


def split_step(step: StepInputs, parts: int) -> list[StepInputs]:
    """Contiguous runs of whole sequences with about equal token counts (at most `parts`, none empty); their
    sampled rows, concatenated, are the step's in order."""
    n = len(step.query_lens)
    parts = max(1, min(parts, n))
    total, bounds, acc = len(step.ids), [0], 0
    for i, q in enumerate(step.query_lens):
        acc += q
        # Close a part once it reaches its share, leaving at least one sequence for each part still to come.
        if len(bounds) < parts and acc * parts >= total * len(bounds) and n - (i + 1) >= parts - len(bounds):
            bounds.append(i + 1)
    bounds += [n] if bounds[-1] != n else []
    return [_sub_step(step, a, b) for a, b in zip(bounds, bounds[1:])]


def _sub_step(step: StepInputs, a: int, b: int) -> StepInputs:
    """Sequences a..b-1 of `step`, their rows renumbered from 0."""
    t0 = sum(step.query_lens[:a])
    t1 = t0 + sum(step.query_lens[a:b])
    rows = [r - t0 for r in step.sample_rows if t0 <= r < t1]
    return StepInputs(step.ids[t0:t1], step.positions[t0:t1], step.slots[t0:t1], step.query_lens[a:b],
                      step.context_lens[a:b], step.tables[a:b], rows)


@dataclass
class InFlight:
    """A step rank 0 submitted: its micro-batches (whose logits or token ids it collects) and its sends still
    pending (a sent tensor must live until its send completes)."""

    parts: list[StepInputs]
    sends: list[tuple[dist.Work, torch.Tensor]]
    argmax: bool  # the last stage sends the sampled rows' token ids, not their logits

    @property
    def sample_rows(self) -> bool:
        return any(p.sample_rows for p in self.parts)


class Pipeline:
    """This rank's part of each step: receive, run its layers, pass on (or, rank 0, collect the logits)."""

    def __init__(self, role: StageRole, hidden_size: int, vocab_size: int, dtype: torch.dtype,
                 device: torch.device, micro_batches: int, in_flight: int = 1,
                 logits_group: dist.ProcessGroup | None = None):
        """micro_batches: the pipeline_micro_batches knob (0: auto, micro_batch_count); in_flight: the steps rank 0
        keeps in the pipeline (steps_in_flight); logits_group: rank 0 and the last stage's first rank."""
        self.role, self.hidden, self.vocab = role, hidden_size, vocab_size
        self.logits_group = logits_group
        self.dtype, self.device = dtype, device
        self.micro_batches = micro_batches
        self.steps_in_flight = in_flight

    def run(self, model, kv_cache: torch.Tensor, step: StepInputs, prepare: Callable[[StepInputs], Prepared],
            argmax: bool = False) -> torch.Tensor | None:
        """Rank 0: the logits of the step's sampled rows (argmax: their token ids) after the whole pipeline; other
        ranks: None."""
        return self.collect(self.submit(model, kv_cache, step, prepare, argmax))

    def submit(self, model, kv_cache: torch.Tensor, step: StepInputs, prepare: Callable[[StepInputs], Prepared],
               argmax: bool = False) -> InFlight:
        """Runs this rank's layers on each micro-batch and sends them on, without waiting for the sends."""
        parts = split_step(step, micro_batch_count(len(step.ids), self.micro_batches, self.role.stages))
        sends = []
        for part in parts:
            ids, positions, meta = prepare(part)
            carried = None if self.role.first else self._receive_hidden(len(part.ids))
            x, residual = model.decode_layers(ids, positions, kv_cache, meta, carried)
            out = self._output(model, x, residual, part, argmax)
            if out is not None:
                group = self.logits_group if self.role.last else None
                sends.append((dist.isend(out, self._destination(), group=group), out))
        return InFlight(parts, sends, argmax)

    def collect(self, flight: InFlight) -> torch.Tensor | None:
        """Rank 0: the submitted step's sampled rows' logits (or token ids), once the last stage sends them; others:
        None."""
        logits = self._collect_logits(flight.parts, flight.argmax) if self.role.rank == 0 else None
        for work, _ in flight.sends:
            work.wait()
        return logits

    def _output(self, model, x: torch.Tensor, residual: torch.Tensor, part: StepInputs,
                argmax: bool) -> torch.Tensor | None:
        """What this stage passes on for `part`: the hidden state to the next stage, or the logits (argmax: the
        token ids) to rank 0."""
        if not self.role.last:
            return torch.stack((x, residual)).contiguous()
        if not self.role.sends_logits or not part.sample_rows:
            return None
        rows = torch.tensor(part.sample_rows, dtype=torch.long, device=self.device)
        logits = model.logits(x, residual, rows)
        return logits.argmax(dim=-1) if argmax else logits.contiguous()

    def _destination(self) -> int:
        return 0 if self.role.last else self.role.next

    def _receive_hidden(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        buf = torch.empty(2, tokens, self.hidden, dtype=self.dtype, device=self.device)
        dist.recv(buf, self.role.previous)
        return buf[0], buf[1]

    def _collect_logits(self, parts: list[StepInputs], argmax: bool) -> torch.Tensor:
        """Rank 0: each micro-batch's logits (argmax: token ids) from the last stage's first rank, in order."""
        source = self.role.tp_ranks(self.role.stages - 1)[0]
        shape, dtype = ((), torch.long) if argmax else ((self.vocab,), torch.float32)
        out = []
        for part in parts:
            if part.sample_rows:
                buf = torch.empty(len(part.sample_rows), *shape, dtype=dtype, device=self.device)
                dist.recv(buf, source, group=self.logits_group)
                out.append(buf)
        return torch.cat(out) if out else torch.empty(0, *shape, dtype=dtype, device=self.device)
