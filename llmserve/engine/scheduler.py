"""Iteration-level scheduling: which sequences run this step, and how many tokens each.

Policy, in order:
1. Running sequences continue (one decode token, or the next prefill chunk). When the cache is full the
   most recently admitted sequence is preempted: its blocks are freed and it is recomputed later.
2. Waiting sequences are admitted, oldest first, while batch slots, the step's token budget and free
   blocks last. A long prompt takes only what remains of the budget (chunked prefill) and continues next step.
A sequence whose step is still in the pipeline (`in_flight`) is neither scheduled nor preempted; `max_rows`
caps a step's sequences so that the steps in flight share the running ones.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple

from llmserve.engine.block_manager import BlockManager
from llmserve.engine.sequence import Sequence, Status


@dataclass
class SchedulerConfig:
    max_batch_size: int
    max_num_tokens: int
    max_queue_delay_s: float = 0.0
    queue_delay_gap_s: float = 0.0  # end the delay early once no request arrived for this long (0: never)


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_tokens: list[int]  # new tokens per sequence this step

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)


class ChainCheck(NamedTuple):
    """What the next `schedule` would run, as Scheduler.chain_next sees it before scheduling."""

    rows: int  # running sequences it continues
    tokens: int  # their tokens (one each: plain decode)
    admits: bool  # whether it may admit waiting sequences

    @property
    def plain_decode(self) -> bool:
        return self.tokens == self.rows and not self.admits


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager):
        self.config = config
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free_sequence(seq)
        seq.status = Status.FINISHED

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_sequence(seq)
        seq.num_computed_tokens = 0
        seq.status = Status.WAITING
        seq.preempted += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _victim(self) -> Sequence:
        """The most recently admitted sequence whose step is not in flight (the one growing is such a one)."""
        return next(s for s in reversed(self.running) if not s.in_flight)

    def next_wakeup(self, now: float | None = None) -> float:
        """Seconds until `schedule` would admit the oldest waiting request (for the queue delay).

        The delay gathers a burst into one prefill step: behind Triton a burst reaches the engine one request
        at a time, and each eager step costs its launches however few tokens it has (docs/performance.md has
        the figures). It ends at `max_queue_delay_s` after the oldest arrival, once the waiting prompts fill
        a step, or `queue_delay_gap_s` after the newest arrival (the burst is over)."""
        cfg = self.config
        if self.running or not self.waiting or cfg.max_queue_delay_s <= 0:
            return 0.0
        if len(self.waiting) >= cfg.max_batch_size or sum(s.num_uncomputed for s in self.waiting) >= cfg.max_num_tokens:
            return 0.0
        now = time.monotonic() if now is None else now
        deadline = self.waiting[0].request.arrival_time + cfg.max_queue_delay_s
        if cfg.queue_delay_gap_s > 0:
            deadline = min(deadline, self.waiting[-1].request.arrival_time + cfg.queue_delay_gap_s)
        return max(0.0, deadline - now)

    def chain_next(self) -> ChainCheck | None:
        """Whether the next `schedule` may be launched behind the step on the GPU (async scheduling); None when it
        may not. The engine asks before scheduling, which cannot be undone. Safe: every sequence it may run is
        argmax-only (the running ones and the waiting ones it may admit), a sequence whose token is still on its
        way needs that one token only, and the free blocks hold every running sequence's uncomputed tokens, so
        it preempts none (a preempted sequence would keep its placeholder)."""
        admits = bool(self.waiting) and len(self.running) < self.config.max_batch_size
        if admits and not all(s.plain_greedy for s in islice(self.waiting, self.config.max_batch_size
                                                             - len(self.running))):
            return None
        # Called for every step at every batch size: attributes read directly, no properties or calls per sequence.
        bs = self.blocks.block_size
        rows = tokens = new_blocks = 0
        for seq in self.running:
            n_tokens = len(seq.tokens)
            if n_tokens >= seq.max_total_tokens:  # at_limit
                continue
            n = n_tokens - seq.num_computed_tokens
            if not seq.plain_greedy or (n != 1 and seq.num_pending):
                return None
            rows += 1
            tokens += n
            new_blocks += -(-n_tokens // bs) - len(seq.block_table)
        if new_blocks > self.blocks.num_free:
            return None
        return ChainCheck(rows, tokens, admits)

    def schedule(self, now: float | None = None, max_tokens: int | None = None,
                 max_rows: int | None = None) -> ScheduledBatch:
        """max_tokens: a lower token budget for this step than max_num_tokens (what a launched step may hold);
        max_rows: fewer sequences than max_batch_size (a pipelined step's share)."""
        cfg = self.config
        budget = cfg.max_num_tokens if max_tokens is None else min(cfg.max_num_tokens, max_tokens)
        rows = cfg.max_batch_size if max_rows is None else max_rows
        batch = ScheduledBatch([], [])
        budget = self._continue_running(batch, budget, rows)
        if self.next_wakeup(now) <= 0:
            self._admit_waiting(batch, budget, rows)
        return batch

    def _continue_running(self, batch: ScheduledBatch, budget: int, rows: int) -> int:
        """The running sequences' next tokens into `batch`, growing their blocks (preempting the newest where the
        cache is full); returns the token budget left."""
        seqs, counts = batch.seqs, batch.num_tokens  # locals: this loop runs a step for every running sequence
        blocks, bs = self.blocks, self.blocks.block_size
        for seq in list(self.running):
            if len(seqs) >= rows:
                break
            if seq.status is not Status.RUNNING or seq.in_flight:  # preempted below, or its step not read yet
                continue
            n_tokens = len(seq.tokens)
            n = min(n_tokens - seq.num_computed_tokens, budget)
            if n <= 0 or n_tokens >= seq.max_total_tokens:  # at_limit: its last token is on its way (async)
                continue
            upto = seq.num_computed_tokens + n
            # Most steps a sequence's blocks already hold its next token: no block manager call at all.
            if -(-upto // bs) > len(seq.block_table):
                while not blocks.can_grow(seq, upto):
                    victim = self._victim()
                    self._preempt(victim)
                    if victim is seq:
                        break
                if seq.status is not Status.RUNNING:
                    continue
                blocks.grow(seq, upto)
            seqs.append(seq)
            counts.append(n)
            budget -= n
        return budget

    def _admit_waiting(self, batch: ScheduledBatch, budget: int, rows: int) -> None:
        """Waiting prompts into `batch` in arrival order while the budget, the rows and the cache allow."""
        seqs, counts = batch.seqs, batch.num_tokens
        while (self.waiting and budget > 0 and len(self.running) < self.config.max_batch_size
               and len(seqs) < rows):
            seq = self.waiting[0]
            if not self.blocks.allocate_prompt(seq, budget):
                break
            n = min(seq.num_uncomputed, budget)  # after the prefix cache covered what it could
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            seqs.append(seq)
            counts.append(n)
            budget -= n
