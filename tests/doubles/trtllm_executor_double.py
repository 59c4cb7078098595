"""CONTRACT DOUBLE of `tensorrt_llm.bindings.executor` (TensorRT-LLM 1.2.x). NOT TensorRT-LLM.

Only the API surface llmserve/engine/trtllm.py uses, with class names, constructor keywords (keyword-only
markers and defaults included), method names and result fields as read from the nanobind sources
cpp/tensorrt_llm/nanobind/executor/{bindings,executor,executorConfig,request}.cpp. Unknown or mistyped
arguments raise TypeError as the real bindings do, so an adapter that misspells one fails here too.

Behaviour is a deterministic toy: each `await_responses(timeout=timedelta)` is one iteration giving every
active request one token from `token_fn(prompt, generated)`. It honours max_tokens (LENGTH), end_id (END_ID;
end token left out; masked before min_tokens), stop_words (STOP_WORDS; stop tokens kept), bad_words (masked),
cancel_request (CANCELLED), streaming vs. one final response, and OutputConfig.return_log_probs. Batching, KV
blocks, log-prob values and timing of the real executor are out of scope.

Behaviours taken from the C++ source (NVIDIA/TensorRT-LLM; commit = the search index's stored version of each
file; only executorImpl.cpp @b35ac1b6 is shown to be of the 1.2 line (1.2.0rc2): see docs/tensorrt-llm.md):
- Errors are TllmException (a std::runtime_error, so RuntimeError here) with the text
  "<msg> (<file>:<line>)\n<stack>" (cpp/tensorrt_llm/common/tllmException.cpp @015884d6); TLLM_CHECK prefixes
  "[TensorRT-LLM][ERROR] Assertion failed: " (cpp/include/tensorrt_llm/common/tllmException.h @0c6a62a1).
- Request() rejects an empty prompt and max_tokens < 1 (requestImpl.h validate() @04fa274f);
  SamplingConfig() range-checks its values (cpp/tensorrt_llm/executor/samplingConfig.cpp @3585984b).
- Executor() reads <engine>/config.json (GptJsonConfig::parse), throws when the MPI world size is not
  tp*pp*cp in leader mode, and turns chunked context off with a warning on an engine without paged context
  FMHA (cpp/tensorrt_llm/executor/executorImpl.cpp @b35ac1b6 fixExecutorConfig/initializeWorkers).
- max_queue_size counts only requests not yet scheduled, <= 0 is unlimited, and the message is
  "Maximum queue size of N has been reached, please try again later" (executorImpl.cpp @036a60f7 enqueueRequests).
- Streamed results: output_token_ids hold the new tokens, log_probs everything generated so far
  (cpp/tensorrt_llm/batch_manager/llmRequest.cpp @119c6e60 createResult).
- min_tokens masks only end_id's logit (logits[end_id], so end_id -1 indexes out of bounds: the double raises
  ContractViolation) (cpp/tensorrt_llm/kernels/penaltyKernels.cu @249d93d5 batchApplyPenalty); a stop word ends
  the request whatever min_tokens says (cpp/tensorrt_llm/kernels/stopCriteriaKernels.cu @9b931c0f
  stopWordsCriterion); a single-token bad word is banned at every step (cpp/tensorrt_llm/kernels/banBadWords.cu
  @829d3e2c ban_bad_words, a 0.18 dev version: the only one stored).
"""
from __future__ import annotations

import datetime
import enum
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

try:
    from tests.doubles.trtllm_executor_stats import InflightBatchingStats, IterationStats, KvCacheStats
except ModuleNotFoundError:  # plain `pytest`: tests/ itself is on sys.path
    from doubles.trtllm_executor_stats import InflightBatchingStats, IterationStats, KvCacheStats

__version__ = "1.2.1"  # nanobind bindings.cpp: m.attr("__version__") = tle::version()
log = logging.getLogger(__name__)
MAX_BEAM_WIDTH = 1024  # kernels/beamSearchKernels.h kMaxBeamWidth, as samplingConfig.cpp checkBeamWidth uses it


class ContractViolation(AssertionError):
    """The adapter did something the real executor does not survive (undefined behaviour, not an exception)."""


def _tllm_error(msg: str, file: str) -> RuntimeError:
    """TllmException's text: message, (file:line), stack. The line is not mirrored (0)."""
    return RuntimeError(f"{msg} ({file}:0)\n<stack trace>")


def _check(ok: bool, expr: str, file: str) -> None:
    """TLLM_CHECK(expr): throwRuntimeError(__FILE__, __LINE__, #expr)."""
    if not ok:
        raise _tllm_error(f"[TensorRT-LLM][ERROR] Assertion failed: {expr}", file)


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
        self._range_checks()

    def _range_checks(self) -> None:
        """samplingConfig.cpp check* functions, with the C++ expressions as the messages name them."""
        f = "cpp/tensorrt_llm/executor/samplingConfig.cpp"
        _check(0 < self.beam_width <= MAX_BEAM_WIDTH, "beamWidth > 0 && beamWidth <= kMaxBeamWidth", f)
        for name, cxx, ok in (
                ("top_k", "topK.value() >= 0", lambda v: v >= 0),
                ("top_p", "topP.value() > 0.f && topP.value() <= 1.f", lambda v: 0 < v <= 1),
                ("temperature", "temperature.value() >= 0.f", lambda v: v >= 0),
                ("min_tokens", "minTokens.value() >= 0", lambda v: v >= 0),
                ("repetition_penalty", "repetitionpenalty.value() > 0.f", lambda v: v > 0),
                ("length_penalty", "lengthPenalty.value() >= 0.f", lambda v: v >= 0),
                ("num_return_sequences", "numReturnSequences.value() > 0", lambda v: v > 0),
                ("min_p", "minP.value() >= 0.f && minP.value() <= 1.0f", lambda v: 0 <= v <= 1)):
            value = getattr(self, name)
            if value is not None:
                _check(ok(value), cxx, f)


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
        for name, words in (("stop_words", stop_words), ("bad_words", bad_words)):
            _expect(name, words, list)
            if words is not None and not all(isinstance(w, list) and all(isinstance(t, int) for t in w)
                                             for w in words):
                raise TypeError(f"incompatible function arguments: {name}={words!r} (list[list[int]])")
        self.sampling_config = sampling_config or SamplingConfig()
        self.output_config = output_config or OutputConfig()
        # requestImpl.h Request::Impl::validate(), run by the constructor
        _check(bool(input_token_ids), "!mInputTokenIds.empty()", "cpp/tensorrt_llm/executor/requestImpl.h")
        _check(max_tokens > 0, "mMaxNewTokens > 0", "cpp/tensorrt_llm/executor/requestImpl.h")


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


def default_token_fn(prompt: list[int], generated: list[int], vocab_size: int = 32000) -> int:
    return (sum(prompt) + 31 * len(generated) + 7) % vocab_size


def write_engine_config(engine_dir: str | os.PathLike, tp_size: int = 1, pp_size: int = 1,
                        use_paged_context_fmha: bool = True, max_num_tokens: int = 4096) -> None:
    """The parts of trtllm-build's config.json that GptJsonConfig::parse reads and the double uses."""
    config = {"pretrained_config": {"mapping": {"world_size": tp_size * pp_size, "tp_size": tp_size,
                                                "pp_size": pp_size, "cp_size": 1}},
              "build_config": {"max_num_tokens": max_num_tokens,
                               "plugin_config": {"use_paged_context_fmha": use_paged_context_fmha}}}
    with open(os.path.join(engine_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)


@dataclass
class _Active:
    request: Request
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False


class Executor:  # executor.cpp (the model_path constructor only)
    default_leader = True  # tests flip this to play a non-leader MPI rank
    IMPL = "cpp/tensorrt_llm/executor/executorImpl.cpp"

    def __init__(self, model_path, model_type, executor_config):
        _expect("model_path", model_path, str, os.PathLike, optional=False)
        _expect("model_type", model_type, ModelType, optional=False)
        _expect("executor_config", executor_config, ExecutorConfig, optional=False)
        self.model_path, self.model_type, self.config = model_path, model_type, executor_config
        self.engine_config = self._parse_engine_config(model_path)
        self._check_world_size()
        self.chunked_context = self._fix_chunked_context()
        self.leader = Executor.default_leader
        self.token_fn: Callable[[list[int], list[int]], int] = default_token_fn
        self.requests: dict[int, Request] = {}  # everything enqueued, for assertions
        self.await_timeouts: list[datetime.timedelta | None] = []
        self.shut_down = False
        self._queued: dict[int, _Active] = {}  # enqueued, not yet scheduled: what max_queue_size counts
        self._active: dict[int, _Active] = {}
        self._next_id, self._iter = 1, 0
        self._stats: list[IterationStats] = []

    @staticmethod
    def _parse_engine_config(model_path) -> dict:
        """Executor::Impl(modelPath, ...): GptJsonConfig::parse(modelPath / "config.json") throws without it."""
        path = os.path.join(model_path, "config.json")
        if not os.path.isfile(path):
            raise _tllm_error(f"[TensorRT-LLM][ERROR] Cannot open {path}", "cpp/tensorrt_llm/runtime/gptJsonConfig.cpp")
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def _check_world_size(self) -> None:
        """initializeWorkers, leader mode without participant ids: MPI world size must be tp*pp*cp."""
        m = self.engine_config["pretrained_config"]["mapping"]
        tp, pp, cp = m.get("tp_size", 1), m.get("pp_size", 1), m.get("cp_size", 1)
        world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))  # what mpirun tells each rank
        if world != tp * pp * cp:
            raise _tllm_error("[TensorRT-LLM][ERROR] Assertion failed: With communicationMode kLEADER, MPI worldSize "
                              "is expected to be equal to tp*pp*cp when participantIds are not specified", self.IMPL)

    def _fix_chunked_context(self) -> bool:
        """createModel -> fixExecutorConfig: no exception; chunking is switched off with a warning."""
        paged = self.engine_config["build_config"]["plugin_config"].get("use_paged_context_fmha", False)
        if self.config.enable_chunked_context and not paged:
            log.warning("[TensorRT-LLM][WARNING] Chunked context is not supported for this configuration and will "
                        "be disabled. Related configs: RNNBased: 0, KVCacheEnabled: 1, PagedContextFMHA: 0")
            return False
        return bool(self.config.enable_chunked_context)

    def can_enqueue_requests(self) -> bool:
        return self.leader and not self.shut_down

    def enqueue_request(self, request: Request) -> int:
        _expect("request", request, Request, optional=False)
        if self.shut_down:
            raise _tllm_error("[TensorRT-LLM][ERROR] Assertion failed: Shutdown called, cannot enqueue requests",
                              self.IMPL)
        if not self.leader:
            raise _tllm_error("[TensorRT-LLM][ERROR] Assertion failed: Cannot enqueue requests on a non-leader rank",
                              self.IMPL)
        limit = self.config.max_queue_size
        if limit is not None and limit > 0 and len(self._queued) + 1 > limit:
            raise _tllm_error(f"Maximum queue size of {limit} has been reached, please try again later", self.IMPL)
        rid, self._next_id = self._next_id, self._next_id + 1
        self.requests[rid] = request
        self._queued[rid] = _Active(request)
        return rid

    def cancel_request(self, id: int) -> None:  # noqa: A002 - the binding's keyword is `id`
        state = self._active.get(id) or self._queued.get(id)
        if state is not None:
            state.cancelled = True

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
        self._schedule()
        responses = [r for rid in sorted(self._active) if (r := self._advance(rid)) is not None]
        n = len(self._active)
        kv = KvCacheStats(max_num_blocks=1000, free_num_blocks=1000 - 2 * n, used_num_blocks=2 * n,
                          tokens_per_block=32, reused_blocks=0, missed_blocks=2 * len(self.requests))
        self._stats.append(IterationStats(iter=self._iter, num_active_requests=n, kv_cache_stats=kv,
                                          num_queued_requests=len(self._queued),
                                          inflight_batching_stats=InflightBatchingStats(num_scheduled_requests=n)))
        return responses

    def _schedule(self) -> None:
        """fetchNewRequests: queued requests become active up to max_batch_size."""
        room = (self.config.max_batch_size or 1 << 30) - len(self._active)
        for rid in sorted(self._queued)[:max(room, 0)]:
            self._active[rid] = self._queued.pop(rid)

    def _advance(self, rid: int) -> Response | None:
        state = self._active[rid]
        req, gen = state.request, state.generated
        if state.cancelled:
            return self._finish(rid, [], FinishReason.CANCELLED)
        token = self._sample(req, gen)
        if token == req.end_id:
            return self._finish(rid, [], FinishReason.END_ID)
        gen.append(token)
        if any(w and gen[-len(w):] == w for w in req.stop_words or []):
            return self._finish(rid, [token], FinishReason.STOP_WORDS)
        if len(gen) >= req.max_tokens:
            return self._finish(rid, [token], FinishReason.LENGTH)
        if not req.streaming:
            return None
        return Response(rid, self._result(req, [token], gen, False, []), req.client_id)

    def _sample(self, req: Request, gen: list[int]) -> int:
        """A masked logit (-inf) moves the toy's pick to the next id that is not masked."""
        token = self.token_fn(req.input_token_ids, gen)
        masked = {w[0] for w in req.bad_words or [] if len(w) == 1}  # banBadWords.cu: at every step
        min_tokens = req.sampling_config.min_tokens or 0
        if min_tokens > 0 and len(gen) < min_tokens:
            if req.end_id is None or req.end_id < 0:
                raise ContractViolation("min_tokens with end_id -1: penaltyKernels.cu writes outLogitsPtr[endIds[slot]]"
                                        " = outLogitsPtr[-1], out of bounds")
            masked.add(req.end_id)  # penaltyKernels.cu: only end_id's logit; stop words are not held back
        while token in masked:
            token = (token + 1) % 32000
        return token

    def _finish(self, rid: int, new: list[int], reason: FinishReason) -> Response:
        state = self._active.pop(rid)
        req = state.request
        if req.streaming:
            tokens = new
        else:  # one response with everything; the prompt too unless exclude_input_from_output
            prompt = [] if req.output_config.exclude_input_from_output else list(req.input_token_ids)
            tokens = prompt + state.generated
        return Response(rid, self._result(req, tokens, state.generated, True, [reason]), req.client_id)

    @staticmethod
    def _result(req: Request, tokens: list[int], generated: list[int], final: bool,
                reasons: list[FinishReason]) -> Result:
        # llmRequest.cpp createResult: outputTokenIds from the last sent position, logProbs = getLogProbs(), i.e.
        # one value per token generated so far, streamed or not.
        lps = [[-0.25 - 0.01 * i for i in range(len(generated))]] if req.output_config.return_log_probs else None
        return Result(is_final=final, output_token_ids=[tokens], log_probs=lps,
                      cum_log_probs=[sum(lps[0])] if lps else None, finish_reasons=reasons or
                      [FinishReason.NOT_FINISHED], is_sequence_final=final)
