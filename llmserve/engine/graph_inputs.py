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
    and writing 256 rows of up to 256 blocks each step would cost the host about a millisecond."""

    def __init__(self, bt: np.ndarray):
        self.bt = bt
        self.rows: list[list[int] | None] = [None] * bt.shape[0]

    def write(self, i: int, table: list[int]) -> None:
        if self.rows[i] != table:
            self.bt[i, :len(table)] = table
            self.rows[i] = list(table)

    def forget(self, i: int) -> None:
        self.rows[i] = None
