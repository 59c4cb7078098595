"""The serving loop: text in, text deltas out, around any `Engine`.

Callers (the Triton adapter, tests, the benchmark) `submit` requests with a callback from any thread; one
engine thread owns the engine, steps it, detokenizes, matches stop strings and calls the callbacks. A
callback must not block: the adapter's just puts the delta on its response queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from llmserve.engine.api import Engine, EngineError, EngineOutput, EngineRequest, EngineStats, FinishReason
from llmserve.engine.sampling_params import InvalidRequest
from llmserve.serving.api import (
    DRAINING_MESSAGE,
    NOT_SERVING_MESSAGE,
    SHUTTING_DOWN_MESSAGE,
    Callback,
    Delta,
    GenerateRequest,
    Service,
    tokenize_request,
)
from llmserve.serving.metrics import MetricsSink, NullSink, RequestTiming, repetition_ratio, resident_memory_bytes
from llmserve.serving.observer import NoRequestObserver, RequestObserver
from llmserve.serving.stop_strings import StopMatcher
from llmserve.serving.tokenizer import Detokenizer, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class _Choice:
    """One of a request's n answers: its own text state, stop strings and token timing."""

    detok: Detokenizer
    stop: StopMatcher
    output_ids: list[int] = field(default_factory=list)
    last_token: float | None = None
    done: bool = False


@dataclass
class _Active:
    request: GenerateRequest
    callback: Callback
    choices: list[_Choice]
    num_input_tokens: int
    timing: RequestTiming  # the request's: arrival and its first token of any choice

    @property
    def running(self) -> int:
        return sum(not c.done for c in self.choices)


class LLMService(Service):
    """The `Service` with the engine in this process."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, metrics: MetricsSink | None = None,
                 max_prompt_chars: int = 1_000_000, observer: RequestObserver | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.metrics = metrics or NullSink()
        self.max_prompt_chars = max_prompt_chars
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._active: dict[str, _Active] = {}
        self._stats = EngineStats()
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self.observer = observer or NoRequestObserver()
        self._stopping = threading.Event()
        self._draining = False
        self._drain_deadline: float | None = None  # engine thread only
        self.healthy = True

    def start(self) -> LLMService:
        self._thread.start()
        return self

    # -- called from any thread ----------------------------------------------------------------------------
    def submit(self, request: GenerateRequest, callback: Callback) -> None:
        """Tokenizes and queues a request. Raises InvalidRequest for a bad prompt; every later problem
        arrives through the callback as the request's final delta."""
        if self._draining:
            raise EngineError(DRAINING_MESSAGE, status="UNAVAILABLE")
        if self._stopping.is_set() or not self.healthy:
            raise EngineError(NOT_SERVING_MESSAGE, status="UNAVAILABLE")
        if request.prompt_token_ids is None:
            request.prompt_token_ids = tokenize_request(self.tokenizer, request, self.max_prompt_chars)
        self._commands.put(("add", request, callback))

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id, None))

    def drain(self, grace_s: float) -> None:
        """Stops taking requests (UNAVAILABLE, so clients and load balancers go elsewhere); running ones get
        `grace_s` seconds to finish, then each ends with a final UNAVAILABLE error."""
        self._draining = True
        self._commands.put(("drain", time.monotonic() + max(0.0, grace_s), None))

    def stats(self) -> EngineStats:
        return self._stats  # a snapshot replaced by the engine thread after each step

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._commands.put(("stop", None, None))
        self._thread.join(timeout)

    def shutdown(self) -> None:
        """stop, then free the engine (GPU memory, worker processes)."""
        self.stop()
        self.engine.shutdown()
        self.observer.close()

    def resident_memory_bytes(self) -> int:
        """This process's resident memory: the engine runs here."""
        return resident_memory_bytes()

    @property
    def vocab_size(self) -> int:
        return self.engine.vocab_size

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    # -- the engine thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._end_drain_if_due()
                self._take_commands(block=not self.engine.has_work())
                if self._stopping.is_set() or not self.engine.has_work():
                    continue
                wait = getattr(self.engine, "next_wakeup", lambda: 0.0)()
                if wait > 0:  # batching delay: give more requests the chance to join this prefill
                    self._take_commands(block=True, timeout=wait)
                    continue
                try:
                    outputs = self.engine.step()
                except Exception as exc:  # noqa: BLE001 - an engine bug must not leave callers waiting
                    # Engines contain per-request failures themselves; what escapes `step` means the engine
                    # state is unknown (a CUDA error, say). Stop serving rather than serve garbage.
                    log.exception("engine step raised; the engine is marked unhealthy")
                    self.healthy = False
                    self._fail_all(EngineError(f"engine failure: {type(exc).__name__}: {exc}", "UNAVAILABLE"))
                    return
                for out in outputs:
                    self._deliver(out)
                self._update_stats()
        finally:
            self._fail_all(EngineError(SHUTTING_DOWN_MESSAGE, status="UNAVAILABLE"))
            self._update_stats()

    def _update_stats(self) -> None:
        prev, self._stats = self._stats, self.engine.stats()
        # Counted here, once per engine, however many adapters share it (the gauges are set from stats).
        if self._stats.prefix_cache_query_blocks > prev.prefix_cache_query_blocks:
            self.metrics.increment("llm_prefix_cache_queries_total",
                                   self._stats.prefix_cache_query_blocks - prev.prefix_cache_query_blocks)
            self.metrics.increment("llm_prefix_cache_hits_total",
                                   self._stats.prefix_cache_hit_blocks - prev.prefix_cache_hit_blocks)

    def _end_drain_if_due(self) -> None:
        if self._drain_deadline is not None and self._active and time.monotonic() >= self._drain_deadline:
            self._fail_all(EngineError("the server is shutting down: the request did not finish within the "
                                       "drain period", "UNAVAILABLE"))
            self._update_stats()

    def _take_commands(self, block: bool, timeout: float = 0.05) -> None:
        try:
            cmd = self._commands.get(timeout=timeout) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(*cmd)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    def _handle(self, kind: str, arg, callback: Callback | None) -> None:
        if kind == "add" and self._draining:
            callback(Delta(arg.request_id, "", [], 0, FinishReason.ERROR,
                           error=EngineError(DRAINING_MESSAGE, "UNAVAILABLE")))
        elif kind == "drain":
            self._drain_deadline = arg
        elif kind == "add" and not self.healthy:
            callback(Delta(arg.request_id, "", [], 0, FinishReason.ERROR,
                           error=EngineError("the engine is not serving (failed)", "UNAVAILABLE")))
        elif kind == "add":
            self._add(arg, callback)
        elif kind == "abort" and arg in self._active:
            self.engine.abort(arg)

    def _add(self, req: GenerateRequest, callback: Callback) -> None:
        p = req.params
        choices = [_Choice(self.tokenizer.detokenizer(p.skip_special_tokens), StopMatcher(p.stop)) for _ in range(p.n)]
        active = _Active(req, callback, choices, len(req.prompt_token_ids), RequestTiming(req.arrival_time))
        self.observer.taken(req)
        try:
            # The engine's own arrival stamp (now): its queue delay batches what reaches it close together.
            self.engine.add_request(EngineRequest(req.request_id, req.prompt_token_ids, p,
                                                  self.tokenizer.eos_token_ids))
        except (InvalidRequest, EngineError) as exc:
            self._send(active, Delta(req.request_id, "", [], active.num_input_tokens, FinishReason.ERROR, error=exc))
            return
        self._active[req.request_id] = active
        self.metrics.increment("llm_prompt_tokens_total", active.num_input_tokens)

    def _deliver(self, out: EngineOutput) -> None:
        active = self._active.get(out.request_id)
        if active is None or active.choices[out.index].done:
            return
        choice = active.choices[out.index]
        if out.new_token_ids:
            self._observe_tokens(active, choice, len(out.new_token_ids), time.monotonic())
        choice.output_ids.extend(out.new_token_ids)
        text = choice.stop.feed(choice.detok.add(out.new_token_ids))
        reason = out.finish_reason
        if choice.stop.matched is not None and reason is None:
            self.engine.finish(out.request_id, out.index)
            reason = FinishReason.STOP
        if reason is not None:
            text += choice.stop.flush()
            choice.done = True
        if reason in (FinishReason.ABORT, FinishReason.ERROR) and active.running:
            self.engine.finish(out.request_id)  # one choice failing or cancelled ends the request: one final
            for c in active.choices:
                c.done = True
        self._send(active, Delta(out.request_id, text, out.new_token_ids,
                                 out.num_prompt_tokens or active.num_input_tokens, reason, out.logprobs, out.error,
                                 out.index, active.running))

    def _observe_tokens(self, active: _Active, choice: _Choice, n: int, now: float) -> None:
        t = active.timing
        if t.first_token is None:
            self.metrics.observe("llm_time_to_first_token_seconds", now - t.arrival)
            t.first_token = now
        elif choice.last_token is not None:
            # Tokens of one choice that arrive together share the gap since its last delivery.
            for _ in range(n):
                self.metrics.observe("llm_time_per_output_token_seconds", (now - choice.last_token) / n)
        choice.last_token = t.last_token = now
        self.metrics.increment("llm_generation_tokens_total", n)

    def _send(self, active: _Active, delta: Delta) -> None:
        if delta.finished:
            self._active.pop(delta.request_id, None)
            self._record_end(active, delta)
            self.observer.ended(delta.request_id)
        try:
            active.callback(delta)
        except Exception:  # noqa: BLE001 - a broken callback must not stop the engine thread
            log.exception("response callback failed for %s", delta.request_id)

    def _record_end(self, active: _Active, delta: Delta) -> None:
        m = self.metrics
        m.observe("llm_e2e_request_latency_seconds", time.monotonic() - active.timing.arrival)
        m.observe("llm_request_prompt_tokens", active.num_input_tokens)
        m.observe("llm_request_generation_tokens", sum(len(c.output_ids) for c in active.choices))
        if delta.finish_reason == FinishReason.ABORT:
            m.increment("llm_request_cancellations_total")
        elif delta.finish_reason == FinishReason.ERROR:
            reason = "invalid_argument" if isinstance(delta.error, InvalidRequest) else (
                getattr(delta.error, "status", "internal").lower())
            m.increment("llm_request_failures_total", labels={"reason": reason})
        else:
            m.increment("llm_request_success_total", labels={"finish_reason": delta.finish_reason})
            for c in active.choices:
                m.observe("llm_response_repetition_ratio", repetition_ratio(c.output_ids))

    def _fail_all(self, error: EngineError) -> None:
        for rid in list(self._active):
            active = self._active[rid]
            try:
                self.engine.finish(rid)
            except Exception:  # noqa: BLE001
                log.exception("engine.finish failed for %s", rid)
            self._send(active, Delta(rid, "", [], active.num_input_tokens, FinishReason.ERROR, error=error))
