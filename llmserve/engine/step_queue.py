"""Several steps in flight through pipeline stages at once (vLLM's batch queue), each over sequences the others
do not have, so that stage 0 runs step N+1 while the last stage runs step N.

A sequence's next decode step needs the token its current step samples, so a step's sequences wait (their
`in_flight` flag) until it is collected; the running sequences are shared out between the steps in flight
(`share`), so with one step per stage every stage has a step to run. Each engine `step` fills the queue up to
its depth, then collects the oldest step: its tokens arrive while the younger steps still run.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from llmserve.engine.api import TokenLogprob
from llmserve.engine.model_runner import ModelRunner
from llmserve.engine.parallel.pipeline import InFlight
from llmserve.engine.sampler import SamplingBatch
from llmserve.engine.scheduler import ScheduledBatch, Scheduler
from llmserve.engine.sequence import Sequence


@dataclass
class Submitted:
    batch: ScheduledBatch
    rows: list[Sequence]  # the sequences it samples, in its sampled rows' order
    flight: InFlight
    sampling: SamplingBatch | None  # built at submission: the sequences do not change while in flight
    started: float  # time.monotonic() at submission


@dataclass
class Collected:
    step: Submitted
    tokens: list[int]
    logprobs: list[TokenLogprob | None]


class StepQueue:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, depth: int):
        self.runner, self.scheduler, self.depth = runner, scheduler, depth
        self.queue: deque[Submitted] = deque()

    def __len__(self) -> int:
        return len(self.queue)

    def share(self) -> int:
        """At most this many sequences a step: the running ones and those the scheduler may admit, shared out
        between the steps in flight."""
        s = self.scheduler
        live = len(s.running) + min(len(s.waiting), max(0, s.config.max_batch_size - len(s.running)))
        return max(1, -(-live // self.depth))

    def fill(self, check: Callable[[ScheduledBatch], None]) -> None:
        """Submits steps until `depth` are in flight or no sequence is left to schedule; `check` sees each
        scheduled step before it is submitted (and may raise)."""
        while len(self.queue) < self.depth:
            batch = self.scheduler.schedule(max_rows=self.share())
            if not batch.seqs:
                return
            check(batch)
            self.submit(batch)

    def submit(self, batch: ScheduledBatch) -> None:
        rows, sampling = self.runner.sampling_of(batch)
        for seq in batch.seqs:
            seq.in_flight = True
        flight = self.runner.submit(batch, sampling)
        self.queue.append(Submitted(batch, rows, flight, sampling, time.monotonic()))

    def collect(self) -> Collected:
        """The oldest step's sampled tokens."""
        step = self.queue.popleft()
        for seq in step.batch.seqs:
            seq.in_flight = False
        tokens, logprobs = self.runner.collect(step.flight, step.sampling)
        return Collected(step, tokens, logprobs)

    def drain(self) -> None:
        """Collects and drops every step in flight (stopping: the workers finish what they were sent)."""
        while self.queue:
            step = self.queue.popleft()
            self.runner.collect(step.flight, None)
