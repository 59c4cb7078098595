"""CONTRACT DOUBLE of `tensorrt_llm.bindings.executor` (TensorRT-LLM 1.2.x). NOT TensorRT-LLM.

Only the API surface llmserve/engine/trtllm.py uses, with class names, constructor keywords (keyword-only
markers and defaults included), method names and result fields as read from the nanobind sources
cpp/tensorrt_llm/nanobind/executor/{bindings,executor,executorConfig,request}.cpp. Unknown or mistyped
arguments raise TypeError as the real bindings do, so an adapter that misspells one fails here too.

Behaviour is a deterministic toy: each `await_responses(timeout=timedelta)` is one iteration giving every
active request one token from `token_fn(prompt, generated)`. It honours max_tokens (LENGTH), end_id (END_ID;
end token left out; masked before min_tokens), stop_words (STOP_WORDS; stop tokens kept), cancel_request
(CANCELLED), streaming vs. one final response, and OutputConfig.return_log_probs. Batching, KV blocks,
log-prob values and timing of the real executor are out of scope.
"""
from __future__ import annotations

import datetime
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field

__version__ = "1.2.1"  # nanobind bindings.cpp: m.attr("__version__") = tle::version()


# Enums with the value names of bindings.cpp / request.cpp / executorConfig.cpp
ModelType = enum.Enum("ModelType", "DECODER_ONLY ENCODER_ONLY ENCODER_DECODER")
CapacitySchedulerPolicy = enum.Enum("CapacitySchedulerPolicy", "MAX_UTILIZATION GUARANTEED_NO_EVICT STATIC_BATCH")
BatchingType = enum.Enum("BatchingType", "STATIC INFLIGHT")
FinishReason = enum.Enum("FinishReason", "NOT_FINISHED END_ID STOP_WORDS LENGTH TIMED_OUT CANCELLED")


def _expect(name: str, value: object, *types: type, optional: bool = True) -> None:
    """nanobind refuses mistyped arguments ("incompatible function arguments"); so does the double."""
    if value is None and optional:
        return
    if isinstance(value, bool) and bool not in types:
        raise TypeError(f"incompatible function arguments: {name}={value!r}")
    if not isinstance(value, types):
        raise TypeError(f"incompatible function arguments: {name}={value!r}, expected {types}")


def _keep(obj: object, args: dict) -> None:
    """The real classes expose their constructor arguments as properties of the same names."""
    for name, value in args.items():
        if name != "self":
            setattr(obj, name, value)


class KvCacheConfig:  # executorConfig.cpp
    def __init__(self, enable_block_reuse=True, max_tokens=None, max_attention_window=None, sink_token_length=None,
                 free_gpu_memory_fraction=None, host_cache_size=None, onboard_blocks=True,
                 cross_kv_cache_fraction=None, secondary_offload_min_priority=None, event_buffer_max_size=0, *,
                 enable_partial_reuse=True, copy_on_partial_reuse=True, use_uvm=False, runtime_defaults=None):
        _keep(self, locals())
        _expect("enable_block_reuse", enable_block_reuse, bool, optional=False)
        _expect("max_tokens", max_tokens, int)
        _expect("free_gpu_memory_fraction", free_gpu_memory_fraction, float, int)


class SchedulerConfig:  # executorConfig.cpp
    def __init__(self, capacity_scheduler_policy=CapacitySchedulerPolicy.GUARANTEED_NO_EVICT,
                 context_chunking_policy=None, dynamic_batch_config=None):
        _keep(self, locals())
        _expect("capacity_scheduler_policy", capacity_scheduler_policy, CapacitySchedulerPolicy, optional=False)


class ExecutorConfig:  # executorConfig.cpp (leading keywords; the rest of the real list is not mirrored)
    def __init__(self, max_beam_width=1, scheduler_config=None, kv_cache_config=None, enable_chunked_context=False,
                 normalize_log_probs=True, iter_stats_max_iterations=1000, request_stats_max_iterations=0,
                 batching_type=BatchingType.INFLIGHT, max_batch_size=None, max_num_tokens=None,
                 parallel_config=None, peft_cache_config=None, logits_post_processor_config=None,
                 decoding_config=None, use_gpu_direct_storage=False, gpu_weights_percent=1.0, max_queue_size=None):
        _keep(self, locals())
        _expect("max_beam_width", max_beam_width, int, optional=False)
        _expect("scheduler_config", scheduler_config, SchedulerConfig)
        _expect("kv_cache_config", kv_cache_config, KvCacheConfig)
        _expect("enable_chunked_context", enable_chunked_context, bool, optional=False)
        for name, value in (("max_batch_size", max_batch_size), ("max_num_tokens", max_num_tokens),
                            ("max_queue_size", max_queue_size)):
            _expect(name, value, int)
        self.scheduler_config = scheduler_config or SchedulerConfig()
        self.kv_cache_config = kv_cache_config or KvCacheConfig()


class SamplingConfig:  # request.cpp: beam_width positional, everything else keyword-only
    def __init__(self, beam_width=1, *, top_k=None, top_p=None, top_p_min=None, top_p_reset_ids=None,
                 top_p_decay=None, seed=None, temperature=None, min_tokens=None, beam_search_diversity_rate=None,
                 repetition_penalty=None, presence_penalty=None, frequency_penalty=None, length_penalty=None,
                 early_stopping=None, no_repeat_ngram_size=None, num_return_sequences=None, min_p=None,
                 beam_width_array=None):
        _keep(self, locals())
        _expect("beam_width", beam_width, int, optional=False)
        for name in ("top_k", "seed", "min_tokens", "num_return_sequences"):
            _expect(name, locals()[name], int)
        for name in ("top_p", "temperature", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_p"):
            _expect(name, locals()[name], float, int)


class OutputConfig:  # request.cpp: all positional-or-keyword
    def __init__(self, return_log_probs=False, return_context_logits=False, return_generation_logits=False,
                 exclude_input_from_output=False, return_encoder_output=False, return_perf_metrics=False,
                 additional_model_outputs=None):
        _keep(self, locals())
        _expect("return_log_probs", return_log_probs, bool, optional=False)
        _expect("exclude_input_from_output", exclude_input_from_output, bool, optional=False)


class Request:  # request.cpp: input_token_ids, max_tokens positional; the rest keyword-only (subset mirrored)
    def __init__(self, input_token_ids, max_tokens, *, streaming=False, sampling_config=None, output_config=None,
                 end_id=None, pad_id=None, position_ids=None, bad_words=None, stop_words=None, embedding_bias=None,
                 lora_config=None, client_id=None, return_all_generated_tokens=False, priority=0.5,
                 num_return_sequences=1, guided_decoding_params=None, allotted_time_ms=None):
        _keep(self, locals())
        _expect("input_token_ids", input_token_ids, list, optional=False)
        _expect("max_tokens", max_tokens, int, optional=False)
        _expect("streaming", streaming, bool, optional=False)
        _expect("sampling_config", sampling_config, SamplingConfig)
        _expect("output_config", output_config, OutputConfig)
        _expect("end_id", end_id, int)
        _expect("stop_words", stop_words, list)
        if stop_words is not None and not all(isinstance(w, list) and all(isinstance(t, int) for t in w)
                                              for w in stop_words):
            raise TypeError(f"incompatible function arguments: stop_words={stop_words!r} (list[list[int]])")
        self.sampling_config = sampling_config or SamplingConfig()
        self.output_config = output_config or OutputConfig()


@dataclass
class Result:  # request.cpp Result fields used by adapters
    is_final: bool = False
    output_token_ids: list[list[int]] = field(default_factory=list)
    cum_log_probs: list[float] | None = None
    log_probs: list[list[float]] | None = None
    finish_reasons: list[FinishReason] = field(default_factory=list)
    sequence_index: int = 0
    is_sequence_final: bool = False


class Response:  # request.cpp: Response(request_id, error_msg | result, client_id=None)
    def __init__(self, request_id: int, error_msg_or_result: str | Result, client_id: int | None = None):
        self.request_id, self.client_id = request_id, client_id
        self._payload = error_msg_or_result

    def has_error(self) -> bool:
        return isinstance(self._payload, str)

    @property
    def error_msg(self) -> str:
        if not self.has_error():
            raise RuntimeError("Cannot get the error message for a response without error")
        return self._payload  # type: ignore[return-value]

    @property
    def result(self) -> Result:
        if self.has_error():
            raise RuntimeError(f"Cannot get the result for a response with an error ({self._payload})")
        return self._payload  # type: ignore[return-value]


@dataclass
class KvCacheStats:  # bindings.cpp
    max_num_blocks: int = 0
    free_num_blocks: int = 0
    used_num_blocks: int = 0
    tokens_per_block: int = 0
    reused_blocks: int = 0
    missed_blocks: int = 0


@dataclass
class InflightBatchingStats:  # bindings.cpp (subset)
    num_scheduled_requests: int = 0
    num_context_requests: int = 0
    num_gen_requests: int = 0
    num_paused_requests: int = 0


@dataclass
class IterationStats:  # bindings.cpp (subset)
    iter: int = 0
    num_active_requests: int = 0
    num_queued_requests: int = 0
    max_num_active_requests: int = 0
    kv_cache_stats: KvCacheStats | None = None
    static_batching_stats: object = None
    inflight_batching_stats: InflightBatchingStats | None = None


def default_token_fn(prompt: list[int], generated: list[int], vocab_size: int = 32000) -> int:
    return (sum(prompt) + 31 * len(generated) + 7) % vocab_size


@dataclass
class _Active:
    request: Request
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False


class Executor:  # executor.cpp (the model_path constructor only)
    default_leader = True  # tests flip this to play a non-leader MPI rank

    def __init__(self, model_path, model_type, executor_config):
        _expect("model_path", model_path, str, os.PathLike, optional=False)
        _expect("model_type", model_type, ModelType, optional=False)
        _expect("executor_config", executor_config, ExecutorConfig, optional=False)
        if not os.path.isdir(model_path):
            raise RuntimeError(f"[TensorRT-LLM][ERROR] engine directory not found: {model_path}")
        self.model_path, self.model_type, self.config = model_path, model_type, executor_config
        self.leader = Executor.default_leader
        self.token_fn: Callable[[list[int], list[int]], int] = default_token_fn
        self.requests: dict[int, Request] = {}  # everything enqueued, for assertions
        self.await_timeouts: list[datetime.timedelta | None] = []
        self.shut_down = False
        self._active: dict[int, _Active] = {}
        self._next_id, self._iter = 1, 0
        self._stats: list[IterationStats] = []

    def can_enqueue_requests(self) -> bool:
        return self.leader and not self.shut_down

    def enqueue_request(self, request: Request) -> int:
        _expect("request", request, Request, optional=False)
        if not self.can_enqueue_requests():
            raise RuntimeError("[TensorRT-LLM][ERROR] cannot enqueue requests on this executor")
        if self.config.max_queue_size is not None and len(self._active) >= self.config.max_queue_size:
            raise RuntimeError(f"Maximum queue size of {self.config.max_queue_size} has been reached, please try again")
        rid, self._next_id = self._next_id, self._next_id + 1
        self.requests[rid] = request
        self._active[rid] = _Active(request)
        return rid

    def enqueue_requests(self, requests: list[Request]) -> list[int]:
        return [self.enqueue_request(r) for r in requests]

    def cancel_request(self, id: int) -> None:  # noqa: A002 - the binding's keyword is `id`
        if id in self._active:
            self._active[id].cancelled = True

    def get_latest_iteration_stats(self) -> list[IterationStats]:
        out, self._stats = self._stats, []
        return out

    def shutdown(self) -> None:
        self.shut_down = True

    def await_responses(self, timeout: datetime.timedelta | None = None) -> list[Response]:
        if timeout is not None and not isinstance(timeout, datetime.timedelta):
            raise TypeError(f"incompatible function arguments: timeout={timeout!r} (datetime.timedelta)")
        self.await_timeouts.append(timeout)
        self._iter += 1
        responses = [r for rid in sorted(self._active) if (r := self._advance(rid)) is not None]
        n = len(self._active)
        kv = KvCacheStats(max_num_blocks=1000, free_num_blocks=1000 - 2 * n, used_num_blocks=2 * n,
                          tokens_per_block=32, reused_blocks=0, missed_blocks=2 * len(self.requests))
        self._stats.append(IterationStats(iter=self._iter, num_active_requests=n, kv_cache_stats=kv,
                                          inflight_batching_stats=InflightBatchingStats(num_scheduled_requests=n)))
        return responses

    def _advance(self, rid: int) -> Response | None:
        state = self._active[rid]
        req, gen = state.request, state.generated
        if not req.input_token_ids or req.max_tokens < 1 or req.sampling_config.beam_width != 1:
            del self._active[rid]
            return Response(rid, "[TensorRT-LLM][ERROR] invalid request (empty input, max_tokens < 1 or beams)")
        if state.cancelled:
            return self._finish(rid, [], FinishReason.CANCELLED)
        token = self.token_fn(req.input_token_ids, gen)
        min_tokens = req.sampling_config.min_tokens or 0
        if token == req.end_id and len(gen) < min_tokens:
            token = (token + 1) % 32000  # the real sampler masks end_id's logit until min_tokens
        if token == req.end_id:
            return self._finish(rid, [], FinishReason.END_ID)
        gen.append(token)
        if any(w and gen[-len(w):] == w for w in req.stop_words or []):
            return self._finish(rid, [token], FinishReason.STOP_WORDS)
        if len(gen) >= req.max_tokens:
            return self._finish(rid, [token], FinishReason.LENGTH)
        if not req.streaming:
            return None
        return Response(rid, self._result(req, [token], False, []), req.client_id)

    def _finish(self, rid: int, new: list[int], reason: FinishReason) -> Response:
        state = self._active.pop(rid)
        req = state.request
        if req.streaming:
            tokens = new
        else:  # one response with everything; the prompt too unless exclude_input_from_output
            prompt = [] if req.output_config.exclude_input_from_output else list(req.input_token_ids)
            tokens = prompt + state.generated
        return Response(rid, self._result(req, tokens, True, [reason]), req.client_id)

    @staticmethod
    def _result(req: Request, tokens: list[int], final: bool, reasons: list[FinishReason]) -> Result:
        lps = [[-0.25] * len(tokens)] if req.output_config.return_log_probs else None
        return Result(is_final=final, output_token_ids=[tokens], log_probs=lps,
                      cum_log_probs=[sum(lps[0])] if lps else None, finish_reasons=reasons or
                      [FinishReason.NOT_FINISHED], is_sequence_final=final)
