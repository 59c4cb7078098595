"""A step's inputs from rank 0 to every rank: a small header (the sizes) over each worker's control pipe, then
the packed inputs as one gloo broadcast of a pre-allocated host buffer.

The header travels over the pipe, not a collective, so an idle worker waits on its pipe (where rank 0's exit is
an end of file) and enters a collective only when a step is there: no collective ever waits through idle time.
Workers rebuild the same `StepInputs` rank 0 ran, so every rank addresses its cache through rank 0's block
tables: workers allocate nothing.
"""

from __future__ import annotations

import struct
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from llmserve.engine.graph_inputs import StepInputs

HEADER = struct.Struct("<8q")  # kind, tokens, sequences, sampled rows, table width, payload length, step, spare
STEP, STOP = 1, 2


class StepChannel:
    """The packed layout: ids, positions, slots (per token); query lengths, context lengths (per sequence);
    sampled rows; then the block tables as a [sequences, width] array padded with 0 (as AttentionMetadata pads)."""

    def __init__(self, group, max_tokens: int, max_seqs: int, max_width: int):
        self.group = group
        self.buffer = torch.zeros(3 * max_tokens + 3 * max_seqs + max_seqs * max_width, dtype=torch.int64)
        self.view = self.buffer.numpy()
        self.steps = 0

    def pack(self, step: StepInputs) -> bytes:
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
        self.steps += 1
        return HEADER.pack(STEP, T, B, S, W, o + B * W, self.steps, 0)

    def send(self, step: StepInputs, conns: list[Connection]) -> None:
        """Rank 0: the header to each worker, then the one broadcast."""
        header = self.pack(step)
        for conn in conns:
            conn.send_bytes(header)
        dist.broadcast(self.buffer[:HEADER.unpack(header)[5]], src=0, group=self.group)

    def receive(self, header: bytes) -> StepInputs | None:
        """A worker: the step the header announces (None: stop)."""
        kind, T, B, S, W, n, number, _ = HEADER.unpack(header)
        if kind == STOP:
            return None
        self.steps += 1
        if number != self.steps:
            raise RuntimeError(f"step {number} announced, {self.steps} expected: out of step with rank 0")
        dist.broadcast(self.buffer[:n], src=0, group=self.group)
        return self.unpack(T, B, S, W)

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

