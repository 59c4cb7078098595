"""Host-side inputs of a step: the flat lists an eager step turns into tensors, and the pinned buffers the
CUDA graphs take theirs from (one asynchronous copy per step into the graphs' static device inputs)."""

from __future__ import annotations

import mmap
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from llmserve.engine.sequence import Sequence


@dataclass
class StepInputs:
    """One step's tokens, sequence after sequence, and what attention needs to know of each sequence."""

    ids: list[int]
    positions: list[int]
    slots: list[int]  # cache slot of each token
    query_lens: list[int]  # new tokens per sequence
    context_lens: list[int]  # tokens in the cache after the step, per sequence
    tables: list[list[int]]  # block table per sequence
    sample_rows: list[int]  # rows whose logits are sampled (a sequence's last token, once its prompt is done)

    @classmethod
    def of(cls, seqs: list[Sequence], num_tokens: list[int], block_size: int) -> StepInputs:
        step = cls([], [], [], list(num_tokens), [], [], [])
        bs = block_size
        for seq, n in zip(seqs, num_tokens):
            start = seq.num_computed_tokens
            table = seq.block_table
            step.ids.extend(seq.tokens[start:start + n])
            step.positions.extend(range(start, start + n))
            step.slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            step.context_lens.append(start + n)
            step.tables.append(table)
            if start + n == len(seq.tokens):
                step.sample_rows.append(len(step.ids) - 1)
        return step


def pinned_int32(n: int) -> tuple[torch.Tensor, np.ndarray]:
    """An int32 host buffer in page-locked memory, so the step's input copy is asynchronous: registered with
    CUDA directly, else from torch's pinned allocator (plain memory without CUDA). Returns (tensor, numpy view)."""
    if not torch.cuda.is_available():
        t = torch.zeros(n, dtype=torch.int32)
        return t, t.numpy()
    # Pages of its own (anonymous mmap, zeroed): registration is per page, so a heap buffer sharing a page
    # with another registered one would fail, and the failure resurfaces at the next kernel launch.
    arr = np.frombuffer(mmap.mmap(-1, max(4 * n, 1)), dtype=np.int32, count=n)
    try:
        cudart = torch.cuda.cudart()
        rc = cudart.cudaHostRegister(arr.ctypes.data, arr.nbytes, 0)
        ok = int(getattr(rc, "value", rc)) == 0
    except (RuntimeError, AttributeError, TypeError):
        ok = False
    if ok:
        # Unregistered before the pages go: a later runner in the process (benchmarks) may map the same range.
        weakref.finalize(arr, cudart.cudaHostUnregister, arr.ctypes.data)
        return torch.from_numpy(arr), arr
    t = torch.empty(n, dtype=torch.int32, pin_memory=True)
    return t, t.numpy()


class TableRows:
    """Block tables in a [rows, width] host array. A row keeps its last table and is rewritten only when a
    different sequence (or a grown table) takes it: from one step to the next most rows hold the same table,
    and writing 256 rows of up to 256 blocks each step would cost the host about a millisecond.

    A row remembers the table list it holds and that list's length then: a sequence's table only grows in place
    while it holds its blocks, and is replaced by a new list otherwise (Sequence.block_table), so the same list
    at the same length is the same table, and the same list grown needs only its new tail written. Holding the
    list keeps its id from being reused by another."""

    def __init__(self, bt: np.ndarray):
        self.bt = bt
        self.rows: list[tuple[list[int], int] | None] = [None] * bt.shape[0]

    def write(self, i: int, table: list[int]) -> None:
        held = self.rows[i]
        n = len(table)
        if held is not None and held[0] is table:
            if held[1] == n:
                return
            self.bt[i, held[1]:n] = table[held[1]:]  # grown: the new blocks only
        else:
            self.bt[i, :n] = table
        self.rows[i] = (table, n)

    def forget(self, i: int) -> None:
        self.rows[i] = None


class DecodeInputs:
    """One pinned host copy of the decode graphs' inputs (ModelRunner.capture_graphs keeps two, used in turn)."""

    def __init__(self, n: int, max_b: int, width: int, scratch_block: int, block_size: int):
        self.tensor, h = pinned_int32(n)
        self.ids, self.pos, self.slot, self.ctx, self.src = (h[i * max_b:(i + 1) * max_b] for i in range(5))
        self.tables = TableRows(h[5 * max_b:].reshape(max_b, width))
        self.scratch_block, self.block_size = scratch_block, block_size
        h[:] = 0
        for i in range(max_b):
            self._pad(i)

    def _pad(self, i: int) -> None:
        """Padding rows: the scratch slot, a one-token context, no source row."""
        self.ids[i] = self.pos[i] = 0
        self.slot[i] = self.scratch_block * self.block_size
        self.ctx[i] = 1
        self.src[i] = -1
        self.tables.bt[i, 0] = self.scratch_block
        self.tables.forget(i)

    def fill(self, seqs: list[Sequence], src_rows: list[int], S: int) -> None:
        B, bs = len(seqs), self.block_size
        p_list = [s.num_computed_tokens for s in seqs]
        pos = self.pos[:B]
        pos[:] = p_list
        np.add(pos, 1, out=self.ctx[:B])
        # Where the token is still on the device the list holds a placeholder; the graph takes src's instead.
        self.ids[:B] = [s.tokens[p] for s, p in zip(seqs, p_list)]
        self.src[:B] = src_rows
        write = self.tables.write
        for i, seq in enumerate(seqs):
            write(i, seq.block_table)
        # Slots from the tables just written, in one vectorized gather rather than a Python index per sequence.
        np.add(self.tables.bt[np.arange(B), pos // bs] * bs, pos % bs, out=self.slot[:B])
        rows = self.tables.rows
        for i in range(B, S):
            if rows[i] is not None:
                self._pad(i)
