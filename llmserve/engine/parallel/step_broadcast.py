"""A step's inputs from rank 0 to every rank: a small header (the sizes) over each worker's control pipe, then
the packed inputs as one gloo broadcast of a pre-allocated host buffer.

The header travels over the pipe, not a collective, so an idle worker waits on its pipe (where rank 0's exit is
an end of file) and enters a collective only when a step is there: no collective ever waits through idle time.
Workers rebuild the same `StepInputs` rank 0 ran, so every rank addresses its cache through rank 0's block
tables: workers allocate nothing.

Three kinds of message:
- STEP: a step as `StepInputs`, which a worker runs as rank 0 does (a prefill graph or eagerly). Flags: CARRIED
  (per-token source rows follow: decode rows whose input token is the previous launched step's argmax, on the
  device), LAUNCHED (rank 0 launched it: every rank takes the sampled rows' argmax into its own copy of it) and
  ARGMAX (pipeline stages: every sampled row is plain greedy, so the last stage sends rank 0 the token ids instead
  of the logits, a few bytes a row instead of 4 x the vocabulary).
- DECODE: a decode graph's step: its padded rows and rank 0's filled graph inputs, broadcast as they are, which
  the worker copies into its own graph's inputs (llmserve/engine/launcher.py).
- STOP.

With pipeline stages rank 0 keeps several steps in flight: it sends step N+1 while the last stage still runs
step N, so its broadcast must not wait for every rank to join it. Rank 0 then sends asynchronously from a ring of
buffers, one per step in flight, each reused once its broadcast has completed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from multiprocessing.connection import Connection

import numpy as np
import torch
import torch.distributed as dist

from llmserve.engine.graph_inputs import StepInputs

HEADER = struct.Struct("<8q")  # kind, tokens, sequences, sampled rows, table width, payload length, step, flags
STEP, STOP, DECODE = 1, 2, 3
CARRIED, LAUNCHED, ARGMAX = 1, 2, 4  # a STEP's flags

Header = tuple[int, int, int, int, int, int, int, int]


class StepChannel:
    """The packed layout: ids, positions, slots (per token); query lengths, context lengths (per sequence);
    sampled rows; then the block tables as a [sequences, width] array padded with 0 (as AttentionMetadata pads);
    then, with CARRIED, the source rows (per token)."""

    def __init__(self, group, max_tokens: int, max_seqs: int, max_width: int, slots: int = 1):
        """slots: rank 0's buffers, one per step it may send before the first is received everywhere."""
        self.group = group
        size = 4 * max_tokens + 3 * max_seqs + max_seqs * max_width
        self.buffers = [torch.zeros(size, dtype=torch.int64) for _ in range(slots)]
        self.views = [b.numpy() for b in self.buffers]
        self.works: list[dist.Work | None] = [None] * slots  # each slot's asynchronous broadcast
        self.slot = 0
        self.buffer, self.view = self.buffers[0], self.views[0]
        self.steps = 0

    def pack(self, step: StepInputs, carried: np.ndarray | None = None, launched: bool = False,
             argmax: bool = False) -> bytes:
        """Fills the buffer with `step`; returns the header that tells the workers its sizes."""
        T, B, S = len(step.ids), len(step.query_lens), len(step.sample_rows)
        W = max(len(t) for t in step.tables)
        buf, o = self.view, 0
        for part in (step.ids, step.positions, step.slots, step.query_lens, step.context_lens, step.sample_rows):
            buf[o:o + len(part)] = part
            o += len(part)
        tables = buf[o:o + B * W].reshape(B, W)
        tables[:] = 0
        for i, t in enumerate(step.tables):
            tables[i, :len(t)] = t
        o += B * W
        if carried is not None:
            buf[o:o + T] = carried
            o += T
        flags = (CARRIED if carried is not None else 0) | (LAUNCHED if launched else 0) | (ARGMAX if argmax else 0)
        return HEADER.pack(STEP, T, B, S, W, o, self._next(), flags)

    def _next(self) -> int:
        self.steps += 1
        return self.steps

    def send(self, step: StepInputs, conns: list[Connection], carried: np.ndarray | None = None,
             launched: bool = False, wait: bool = True, argmax: bool = False) -> None:
        """Rank 0: the header to each worker, then the one broadcast (wait=False: returns before the workers
        have joined it; the buffer is kept until they have)."""
        self._turn()
        header = self.pack(step, carried, launched, argmax)
        self._announce(header, conns, self.buffer[:HEADER.unpack(header)[5]], wait)

    def _turn(self) -> None:
        """Rank 0: the next buffer of the ring, once its last broadcast has completed."""
        self.slot = (self.slot + 1) % len(self.buffers)
        work, self.works[self.slot] = self.works[self.slot], None
        if work is not None:
            work.wait()
        self.buffer, self.view = self.buffers[self.slot], self.views[self.slot]

    def send_decode(self, rows: int, inputs: torch.Tensor, conns: list[Connection]) -> None:
        """Rank 0: a decode graph's padded rows, then its filled host inputs (int32) as they are."""
        self._announce(HEADER.pack(DECODE, 0, rows, 0, 0, len(inputs), self._next(), 0), conns, inputs)

    def _announce(self, header: bytes, conns: list[Connection], payload: torch.Tensor, wait: bool = True) -> None:
        for conn in conns:
            conn.send_bytes(header)
        work = dist.broadcast(payload, src=0, group=self.group, async_op=not wait)
        if not wait:
            self.works[self.slot] = work

    def open(self, header: bytes) -> Header:
        """A worker: the announced message's fields, once checked to be the next one rank 0 sent."""
        fields = HEADER.unpack(header)
        if fields[0] != STOP:
            number = fields[6]
            if number != self._next():
                raise RuntimeError(f"step {number} announced, {self.steps} expected: out of step with rank 0")
        return fields

    def receive(self, fields: Header) -> tuple[StepInputs, np.ndarray | None, bool, bool]:
        """A worker: a STEP's inputs, its carried source rows (None: none), whether it was launched and whether its
        sampled rows are argmax only."""
        _, T, B, S, W, n, _, flags = fields
        dist.broadcast(self.buffer[:n], src=0, group=self.group)
        carried = self.view[n - T:n].astype(np.int32) if flags & CARRIED else None
        return self.unpack(T, B, S, W), carried, bool(flags & LAUNCHED), bool(flags & ARGMAX)

    def receiver(self) -> Callable[[torch.Tensor], None]:
        """A worker: what fills a DECODE message's inputs into the worker's own host buffer."""
        return lambda inputs: dist.broadcast(inputs, src=0, group=self.group)

    def unpack(self, T: int, B: int, S: int, W: int) -> StepInputs:
        parts, o = [], 0
        for size in (T, T, T, B, B, S):
            parts.append(self.view[o:o + size].tolist())
            o += size
        tables = self.view[o:o + B * W].reshape(B, W).tolist()
        ids, positions, slots, query_lens, context_lens, sample_rows = parts
        return StepInputs(ids, positions, slots, query_lens, context_lens, tables, sample_rows)


def stop_header() -> bytes:
    return HEADER.pack(STOP, 0, 0, 0, 0, 0, 0, 0)
