"""Our PyTorch engine: scheduler -> model runner -> sampler, one `step` per iteration.

Async scheduling (ServingConfig.async_scheduling): a step whose sequences are all plain greedy (decode rows,
prefill chunks, or both: a mixed step) is launched and left running; the next `step` schedules and launches
step N+1 (a decode row's input token taken from step N's output on the device), and only then reads step N's
tokens. The engine's and its caller's host work thus overlap the GPU. Each sequence that samples in a launched
step carries a placeholder for its token until it is read (Sequence.num_pending); a sequence that stops at
step N has its step N+1 token thrown away. Step N+1 is chained only when Scheduler.chain_next finds it safe
(nothing to preempt, every sequence argmax-only) and it fits the runner's graphs (its token budget capped to
them); anything else (sampling, logprobs, preemption, fault injection) first reads the launched step and runs
synchronously.

Pipeline stages (pipeline_steps_in_flight, llmserve/engine/step_queue.py) keep several steps in flight instead,
each over sequences the others do not have, sampled in full (any parameters) when each is read.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from llmserve.config import ServingConfig, switch
from llmserve.engine.api import (
    EngineError,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    Overloaded,
    PromptLimits,
)
from llmserve.engine.block_manager import BlockManager
from llmserve.engine.launcher import Launched
from llmserve.engine.observer import NoObserver, StepObserver
from llmserve.engine.parallel.group import RankLost
from llmserve.engine.parallel.workers import build_runner
from llmserve.engine.sampler import SamplingBatch, plain_greedy_params
from llmserve.engine.sampling_params import InvalidRequest
from llmserve.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from llmserve.engine.sequence import Sequence, Status
from llmserve.engine.startup import check_host_memory
from llmserve.engine.step_queue import StepQueue

log = logging.getLogger(__name__)
PLACEHOLDER = -1  # a token launched on the GPU, not read back yet


class TorchEngine:
    def __init__(self, cfg: ServingConfig, checkpoint_dir: Path, observer: StepObserver | None = None):
        self.cfg = cfg
        check_host_memory(cfg)
        self.runner = build_runner(cfg, checkpoint_dir)  # with tensor_parallel_size > 1: rank 0, workers started
        self.vocab_size = self.runner.model.args.vocab_size
        self.max_model_len = self.runner.max_model_len
        self.blocks = BlockManager(self.runner.num_blocks, cfg.cache.kv_block_size, cfg.cache.enable_prefix_caching)
        b = cfg.batching
        self.scheduler = Scheduler(SchedulerConfig(b.max_batch_size, b.max_num_tokens, b.max_queue_delay_us / 1e6,
                                                   b.queue_delay_gap_us / 1e6), self.blocks)
        self.seqs: dict[str | tuple[str, int], Sequence] = {}  # Sequence.key -> the sequence
        self.groups: dict[str, list[Sequence]] = {}  # request id -> its choices still running
        self._held: list[Sequence] = []  # choices 1..n-1 waiting for choice 0 to compute the shared prompt
        self._aborted: list[Sequence] = []
        self._steps = 0
        self._launched: Launched | None = None
        self.async_scheduling = switch(cfg.pytorch.async_scheduling, lambda: self.runner.device.type == "cuda")
        kind, _, arg = cfg.pytorch.fault_injection.partition(":")
        self._fail_token = int(arg) if kind == "fail_on_token" else None
        self._crash_token = int(arg) if kind == "crash_on_token" else None
        depth = self.runner.steps_in_flight if self._fail_token is None else 1  # a failing step runs alone
        self.step_queue = StepQueue(self.runner, self.scheduler, depth) if depth > 1 else None
        self.observer = observer or NoObserver()
        self.observer.started()
        self.prompt_limits = PromptLimits(self.max_model_len,
                                          kv_cache_tokens=self.blocks.num_blocks * self.blocks.block_size,
                                          max_position_embeddings=self.runner.model.args.max_position_embeddings)
        self.startup = self.runner.startup.seconds  # load, kv_allocation, warmup, graph_capture (where they ran)

    # -- requests -------------------------------------------------------------------------------------
    def add_request(self, request: EngineRequest) -> None:
        n = len(request.prompt_token_ids)
        self.prompt_limits.check(n)
        if request.request_id in self.groups:
            raise InvalidRequest("request_id", f"{request.request_id!r} is already in flight")
        if len(self.scheduler.waiting) >= self.cfg.batching.max_queue_size:
            raise Overloaded(f"the queue holds {len(self.scheduler.waiting)} waiting requests "
                             f"(max_queue_size {self.cfg.batching.max_queue_size}); retry later")
        queued_tokens = sum(len(s.tokens) for s in self.scheduler.waiting)
        if queued_tokens + n > self.cfg.batching.max_queued_tokens:
            raise Overloaded(f"{queued_tokens} prompt tokens are waiting (max_queued_tokens "
                             f"{self.cfg.batching.max_queued_tokens}); retry later")
        leader = self._new_sequence(request, 0, None)
        group = [leader] + [self._new_sequence(request, i, leader) for i in range(1, request.params.n)]
        self.groups[request.request_id] = group
        for seq in group:
            self.seqs[seq.key] = seq
        # Choices 1..n-1 wait until choice 0 has computed the prompt's full blocks, then share them (n > 1).
        shares = self.blocks.shared_prompt_blocks(leader) > 0
        for seq in group:
            if seq is leader or not shares:
                self.scheduler.add(seq)
            else:
                self._held.append(seq)

    def _new_sequence(self, request: EngineRequest, index: int, leader: Sequence | None) -> Sequence:
        p, n = request.params, len(request.prompt_token_ids)
        generator = None
        if p.seed is not None and not p.greedy:
            # Choice i draws from seed + i, as vLLM's n does (vllm/v1/engine/parallel_sampling.py).
            generator = torch.Generator(device=self.runner.device)
            generator.manual_seed(p.seed + index)
        return Sequence(request=request, tokens=list(request.prompt_token_ids), num_prompt_tokens=n,
                        max_total_tokens=min(n + p.max_tokens, self.max_model_len), generator=generator,
                        plain_greedy=plain_greedy_params(p) and p.min_tokens == 0, index=index, leader=leader)

    def abort(self, request_id: str) -> None:
        for seq in self.groups.get(request_id, ()):
            if seq not in self._aborted:
                self._aborted.append(seq)

    def finish(self, request_id: str, index: int | None = None) -> None:
        for seq in list(self.groups.get(request_id, ())):
            if index is None or seq.index == index:
                self._forget(seq)

    def _forget(self, seq: Sequence) -> None:
        """Drops a sequence that ends, freeing its blocks (shared prompt blocks stay while a sibling holds them)."""
        self.seqs.pop(seq.key, None)
        group = self.groups.get(seq.request_id, [])
        if seq in group:
            group.remove(seq)
        if not group:
            self.groups.pop(seq.request_id, None)
        if seq in self._held:
            self._held.remove(seq)
        self.scheduler.remove(seq)

    def _release_followers(self) -> None:
        """Queues, at the front, the held choices whose choice 0 has computed the shared prompt blocks (or ended)."""
        ready = [s for s in self._held if s.leader.status is Status.FINISHED
                 or s.leader.num_computed_tokens >= self.blocks.shared_prompt_blocks(s) * self.blocks.block_size]
        if ready:
            self._held = [s for s in self._held if s not in ready]
            self.scheduler.waiting.extendleft(reversed(ready))

    def has_work(self) -> bool:
        return (bool(self._aborted) or bool(self._held) or self._launched is not None or bool(self.step_queue)
                or self.scheduler.has_work() or self._ranks_lost())

    def _ranks_lost(self) -> bool:
        """A lost tensor-parallel rank counts as work: the next step raises it, so the service fails every request
        and reports the engine unhealthy even while idle."""
        return self.runner.tp is not None and self.runner.tp.lost is not None

    def next_wakeup(self) -> float:
        return self.scheduler.next_wakeup()

    # -- the step ----------------------------------------------------------------------------------------
    def step(self) -> list[EngineOutput]:
        if self.runner.tp is not None:
            self.runner.tp.check()  # RankLost escapes: no request can be served any more
        outputs = [self._end(seq, FinishReason.ABORT) for seq in self._aborted if self.seqs.get(seq.key) is seq]
        self._aborted.clear()
        if self._held:
            self._release_followers()
        if self.step_queue is not None:
            return outputs + self._pipelined_step(self.step_queue)
        launched, self._launched = self._launched, None
        batch = None
        if launched is not None:
            budget = self._chain_budget()
            if budget is not None:
                # Queue the next step first, then read this one: the GPU never waits for the host.
                batch = self.scheduler.schedule(max_tokens=budget)
                if batch.seqs and self._fits(batch):
                    self._launched = self._launch(batch, launched)
                    return outputs + self._complete(launched)
            outputs += self._complete(launched)
            if batch is not None:  # scheduled but not launchable after all: runs once the launched step is read
                batch = self._still_running(batch) if batch.seqs else None
        if batch is None:
            batch = self.scheduler.schedule()
        if not batch.seqs:
            return outputs
        self._check_crash(batch)
        if self._launchable(batch):
            self._launched = self._launch(batch, None)
            return outputs
        self._steps += 1
        rows, sampling = self.runner.sampling_of(batch)
        t0 = time.monotonic()
        try:
            tokens, logprobs = self._run(batch, sampling)
            self.observer.eager_step(batch, t0, self.scheduler, self.runner)
        except RankLost:
            raise  # not one sequence's fault: the service fails them all and marks the engine unhealthy
        except Exception:  # noqa: BLE001 - find the culprits, fail only them; the engine keeps serving
            log.exception("engine step failed; re-running its %d sequences one by one", len(batch.seqs))
            return outputs + self._isolate_failure(batch)
        return outputs + self._apply(batch, rows, tokens, logprobs)

    def _check_crash(self, batch: ScheduledBatch) -> None:
        if self._crash_token is not None and any(self._crash_token in s.tokens for s in batch.seqs):
            raise RuntimeError(f"injected engine crash: token {self._crash_token}")

    def _apply(self, batch: ScheduledBatch, rows: list[Sequence], tokens: list[int], logprobs) -> list[EngineOutput]:
        """A step's results: its tokens computed, its sampled tokens accepted (a sequence that ended while the step
        was in the pipeline is skipped), full blocks published."""
        live, outputs = self.seqs, []
        for seq, n in zip(batch.seqs, batch.num_tokens):
            if live.get(seq.key) is seq:
                seq.num_computed_tokens += n
        for seq, token, lp in zip(rows, tokens, logprobs):
            if live.get(seq.key) is seq:
                outputs.append(self._accept(seq, token, lp))
        for seq in batch.seqs:
            if seq.status is Status.RUNNING:
                self.blocks.register_full_blocks(seq)
        return [o for o in outputs if o is not None]

    def _pipelined_step(self, queue: StepQueue) -> list[EngineOutput]:
        """Pipeline stages: tops the steps in flight up (step_queue.py), then reads the oldest."""
        queue.fill(self._check_crash)
        if not queue:
            return []
        done = queue.collect()
        self._steps += 1
        self.observer.eager_step(done.step.batch, done.step.started, self.scheduler, self.runner)
        return self._apply(done.step.batch, done.step.rows, done.tokens, done.logprobs)

    # -- async scheduling -------------------------------------------------------------------------------
    def _launchable(self, batch: ScheduledBatch) -> bool:
        """Whether the step may be launched: every sequence argmax-only, no fault injected, and the runner
        takes it (a decode step in its graphs; a mixed one in its prefill graphs, or anything on a CPU)."""
        if not self.async_scheduling or self._fail_token is not None or not all(s.plain_greedy for s in batch.seqs):
            return False
        return self._fits(batch)

    def _fits(self, batch: ScheduledBatch) -> bool:
        """Whether the runner launches the step (a chained one is argmax-only already: Scheduler.chain_next)."""
        total, rows = batch.total_tokens, len(batch.seqs)
        if total == rows:
            return self.runner.can_launch(rows)
        return self._crash_token is None and self.runner.can_launch_mixed(total, rows)

    def _chain_budget(self) -> int | None:
        """The token budget of the next step when it may be queued behind the launched one (None: it may not):
        the scheduler finds it safe and the runner takes it. A mixed step's budget is capped to what the runner
        launches, and only when its running sequences fit under the cap (new prompts take what is left)."""
        check = self.scheduler.chain_next()
        if check is None:
            return None
        if check.plain_decode:
            return self.cfg.batching.max_num_tokens if check.rows and self.runner.can_launch(check.rows) else None
        cap = self.runner.mixed_token_cap
        if self._crash_token is not None or not cap or check.tokens > cap or not (check.rows or check.admits):
            return None
        return cap

    def _launch(self, batch: ScheduledBatch, prev: Launched | None) -> Launched:
        seqs = batch.seqs
        if prev is not None and prev.seqs == seqs:  # the same rows as the launched step (steady decode): no lookups
            src = [i if s.num_pending else -1 for i, s in enumerate(seqs)]
        else:
            src = [prev.row(s) if prev is not None and s.num_pending else -1 for s in seqs]
        launched = self.runner.launch(batch, src, prev)
        self._steps += 1
        if len(seqs) == batch.total_tokens:  # plain decode, the steady state: every row one token, sampled
            for seq in seqs:
                seq.num_computed_tokens += 1
                seq.tokens.append(PLACEHOLDER)
                seq.num_pending += 1
            return launched
        chunks = launched.chunks
        for seq, n in zip(seqs, batch.num_tokens):
            done = seq.num_computed_tokens + n
            seq.num_computed_tokens = done
            if done == len(seq.tokens):  # it samples (a row of launched.seqs): its token is on its way
                seq.tokens.append(PLACEHOLDER)
                seq.num_pending += 1
            else:  # a prompt chunk with more to come: nothing sampled
                chunks.append(seq)
        return launched

    def _still_running(self, batch: ScheduledBatch) -> ScheduledBatch:
        """A batch scheduled behind a launched step, without the sequences that ended when it was read."""
        live = self.seqs
        keep = [i for i, s in enumerate(batch.seqs) if live.get(s.key) is s and s.status is Status.RUNNING]
        return ScheduledBatch([batch.seqs[i] for i in keep], [batch.num_tokens[i] for i in keep])

    def _complete(self, launched: Launched) -> list[EngineOutput]:
        outputs = []
        live, accept = self.seqs, self._accept
        caching, bs = self.blocks.enable_prefix_caching, self.blocks.block_size
        for seq in launched.chunks:  # prompt chunks: their full blocks published as a synchronous step would
            if caching and live.get(seq.key) is seq and seq.status is Status.RUNNING:
                self.blocks.register_full_blocks(seq)
        for seq, token in zip(launched.seqs, launched.tokens()):
            if live.get(seq.key) is not seq:  # ended meanwhile: its token is thrown away
                continue
            out = accept(seq, token, None)
            if out is not None:
                outputs.append(out)
            # register_full_blocks only once a block has filled (1 step in block_size): skips a call per sequence.
            if (caching and seq.status is Status.RUNNING
                    and seq.num_computed_tokens >= (seq.num_hashed_blocks + 1) * bs):
                self.blocks.register_full_blocks(seq)
        return outputs

    def _run(self, batch: ScheduledBatch, sampling: SamplingBatch | None):
        if self._fail_token is not None:  # fault injection for tests (ServingConfig.fault_injection)
            for seq, n in zip(batch.seqs, batch.num_tokens):
                if self._fail_token in seq.tokens[seq.num_computed_tokens:seq.num_computed_tokens + n]:
                    raise RuntimeError(f"injected fault: token {self._fail_token} in the step")
        return self.runner.run(batch, sampling)

    def _isolate_failure(self, batch: ScheduledBatch) -> list[EngineOutput]:
        """Runs each sequence of a failed step alone: those that fail again end with an error, the others
        carry on as if the step had succeeded (re-writing the same K/V slots is harmless)."""
        outputs = []
        for seq, n in zip(batch.seqs, batch.num_tokens):
            single = ScheduledBatch([seq], [n])
            rows, sampling = self.runner.sampling_of(single)
            try:
                tokens, logprobs = self._run(single, sampling)
            except Exception as exc:  # noqa: BLE001
                error = EngineError(f"engine failure: {type(exc).__name__}: {exc}")
                outputs.append(self._end(seq, FinishReason.ERROR, error))
                continue
            seq.num_computed_tokens += n
            if rows:
                outputs.append(self._accept(seq, tokens[0], logprobs[0]))
        return outputs

    def _accept(self, seq: Sequence, token: int, logprob) -> EngineOutput | None:
        """A sampled token: it fills the sequence's oldest placeholder (async) or is appended."""
        tokens, pending = seq.tokens, seq.num_pending
        index = len(tokens) - pending
        if pending:
            tokens[index] = token
            seq.num_pending = pending - 1
        else:
            tokens.append(token)
        if token in seq.stop_ids:  # EOS (unless ignore_eos) or a stop token id
            self._drop_from(seq, index)  # the stop token itself is not part of the answer
            return self._end(seq, FinishReason.STOP)
        if logprob is not None:
            seq.pending_logprobs.append(logprob)
        if index + 1 >= seq.max_total_tokens:
            return self._end(seq, FinishReason.LENGTH)
        return self._emit(seq, None)

    @staticmethod
    def _drop_from(seq: Sequence, index: int) -> None:
        del seq.tokens[index:]
        seq.num_pending = 0

    def _emit(self, seq: Sequence, finish_reason: FinishReason | None,
              error: EngineError | None = None) -> EngineOutput:
        start = seq.num_prompt_tokens + seq.num_emitted
        new = seq.tokens[start:len(seq.tokens) - seq.num_pending]
        seq.num_emitted += len(new)
        request = seq.request
        lps = None
        if request.params.logprobs is not None or seq.pending_logprobs:  # no new empty list per token otherwise
            lps, seq.pending_logprobs = seq.pending_logprobs, []
        return EngineOutput(request.request_id, new, finish_reason, lps if request.params.logprobs is not None
                            else None, error, seq.num_prompt_tokens, seq.num_cached_tokens, seq.index)

    def _end(self, seq: Sequence, reason: FinishReason, error: EngineError | None = None) -> EngineOutput:
        if seq.num_pending:  # tokens still on their way are not part of the answer
            self._drop_from(seq, len(seq.tokens) - seq.num_pending)
        out = self._emit(seq, reason, error)
        self._forget(seq)
        return out

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.scheduler.running), waiting=len(self.scheduler.waiting),
            kv_blocks_total=self.blocks.num_blocks, kv_blocks_free=self.blocks.num_free,
            kv_block_size=self.blocks.block_size, prefix_cache_hit_blocks=self.blocks.hit_blocks,
            prefix_cache_query_blocks=self.blocks.query_blocks, preemptions=self.scheduler.num_preemptions,
            steps=self._steps)

    def shutdown(self) -> None:
        if self.step_queue is not None and not self._ranks_lost():
            try:
                self.step_queue.drain()  # the workers finish what they were sent before they are told to stop
            except RankLost:
                log.warning("a pipeline stage was lost while the engine stopped")
        self.observer.close()
        self.runner.close()
