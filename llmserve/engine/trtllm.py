"""The TensorRT-LLM engine: our Engine protocol over `tensorrt_llm.bindings.executor.Executor` (TRT-LLM 1.2.x).

Written against the TRT-LLM source, following NVIDIA's own Triton Python model
(triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/1/model.py, "model.py" below) and the bindings
(cpp/tensorrt_llm/nanobind/executor/{executor,executorConfig,request,bindings}.cpp). It has run only
against tests/doubles/trtllm_executor_double.py, never against a real Executor.

Token-level like every engine: stop *strings* are matched on text by llmserve/serving/service.py, which calls
`finish()` when one matches; here only token ids stop generation (end_id and stop_words).
"""

from __future__ import annotations

import datetime
import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from llmserve.config import ServingConfig
from llmserve.engine.api import (
    EngineError,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    Overloaded,
    PromptLimits,
    TokenLogprob,
)
from llmserve.engine.manifest import (
    ManifestError,
    check_manifest,
    check_supported_runtime,
    paged_context_fmha,
    read_manifest,
    running_versions,
    verify_engine_files,
)
from llmserve.engine.sampling_params import InvalidRequest

log = logging.getLogger(__name__)


@dataclass
class RuntimeInfo:
    tensorrt_version: str
    tensorrt_llm_version: str
    compute_capability: tuple[int, int]


def detect_runtime() -> RuntimeInfo:
    import torch  # a TensorRT-LLM dependency, present wherever the real bindings are

    if not torch.cuda.is_available():
        raise EngineError("the TensorRT-LLM engine needs a CUDA GPU and none is visible to this process")
    trt, trtllm = running_versions()
    return RuntimeInfo(trt, trtllm, torch.cuda.get_device_capability())


@dataclass
class _Live:
    request_id: str
    prompt_len: int
    want_logprobs: bool
    stop_ids: frozenset[int]  # ids sent as single-token stop_words, plus end_id: never part of the answer
    end_id: int
    silent: bool = False  # finish() was called: drop whatever still arrives
    pending: list[int] = field(default_factory=list)


# Words in the bindings' assertion texts (requestImpl.h validate, samplingConfig.cpp check*) -> our field names.
_FIELDS = (("mInputTokenIds", "text_input"), ("mMaxNewTokens", "max_tokens"), ("beamWidth", "beam_width"),
           ("topK", "top_k"), ("topPMin", "top_p"), ("topP", "top_p"), ("temperature", "temperature"),
           ("minTokens", "min_tokens"), ("repetitionpenalty", "repetition_penalty"), ("minP", "min_p"),
           ("numReturnSequences", "n"), ("endId", "stop_token_ids"))


def _held_back_end_id(eos: list[int], stop_token_ids: Any) -> int:
    """The one id min_tokens can hold back, sent as end_id; -1 when there is none to hold back.

    The executor's min-length penalty masks only logits[end_id] (penaltyKernels.cu batchApplyPenalty), a
    single-token stop word ends the request whatever min_tokens says (stopCriteriaKernels.cu
    stopWordsCriterion), and a single-token bad word is banned for the whole answer (banBadWords.cu): none
    holds a second id back until min_tokens only, so two or more are refused rather than answered differently.
    """
    held = sorted(set(eos) | set(stop_token_ids))
    if len(held) > 1:
        raise InvalidRequest("min_tokens", f"min_tokens > 0 needs every stop id held back until min_tokens, and "
                             f"the TensorRT-LLM engine can hold back only one; this request has {len(held)} "
                             f"({held}: the tokenizer's EOS ids {eos} and stop_token_ids "
                             f"{sorted(stop_token_ids)}). Send min_tokens=0, or at most one EOS/stop id "
                             f"(ignore_eos with one stop_token_id), or use the pytorch engine")
    return held[0] if held else -1


def _invalid_from_bindings(e: Exception) -> InvalidRequest:
    """The bindings raise RuntimeError (TllmException) or TypeError (nanobind) while a request is built; it is
    that request's fault, so it becomes its INVALID_ARGUMENT instead of ending the engine thread."""
    text = str(e).split("\n", 1)[0]  # TllmException appends the C++ stack after the first line
    name = next((ours for word, ours in _FIELDS if word in text), "sampling_parameters")
    return InvalidRequest(name, f"refused by TensorRT-LLM: {text}")


class TrtllmEngine:
    """Iteration-level adapter; one thread drives it (see llmserve.engine.api.Engine)."""

    def __init__(self, engine_dir: str | Path, cfg: ServingConfig, bindings: ModuleType | None = None,
                 runtime: RuntimeInfo | None = None, await_timeout_ms: int = 5, verify_checksums: bool = False):
        self._tle = bindings or importlib.import_module("tensorrt_llm.bindings.executor")
        self.engine_dir = Path(engine_dir)
        try:
            self.manifest = read_manifest(self.engine_dir)
            rt = runtime or detect_runtime()
            check_supported_runtime(rt.tensorrt_llm_version)
            check_manifest(self.manifest, rt.tensorrt_version, rt.tensorrt_llm_version, rt.compute_capability)
            if verify_checksums:
                verify_engine_files(self.manifest, self.engine_dir)
        except ManifestError as e:
            raise EngineError(str(e)) from None
        limits = self.manifest.limits
        self.vocab_size: int = int(self.manifest.model["vocab_size"])
        self.max_model_len: int = min(cfg.max_model_len or limits["max_seq_len"], limits["max_seq_len"])
        self.max_num_tokens: int = min(cfg.batching.max_num_tokens, limits["max_num_tokens"])
        self.chunked_context: bool = self._chunking(cfg)
        # Without chunking a prompt is one context step, capped by the runtime max_num_tokens
        # (trtGptModelInflightBatching.cpp: maxContextLength = maxNumTokens with context FMHA).
        cap = limits["max_input_len"] if self.chunked_context else min(limits["max_input_len"], self.max_num_tokens)
        self.prompt_limits = PromptLimits(self.max_model_len, max_input_len=cap)
        self._timeout = datetime.timedelta(milliseconds=await_timeout_ms)
        # model.py: Executor(gpt_model_path, trtllm.ModelType.DECODER_ONLY, executor_config)
        try:
            self.executor = self._tle.Executor(self.engine_dir, self._tle.ModelType.DECODER_ONLY,
                                               self._executor_config(cfg, limits))
        except RuntimeError as e:  # e.g. MPI world size != tp*pp (executorImpl.cpp initializeWorkers)
            raise EngineError(f"TensorRT-LLM could not start the engine in {self.engine_dir}: "
                              f"{str(e).splitlines()[0]}") from None
        # model.py: with TP/PP > 1 under MPI (leader mode) only rank 0 can enqueue; the others serve as workers.
        self.is_leader: bool = bool(self.executor.can_enqueue_requests())
        self._live: dict[int, _Live] = {}  # executor id -> state
        self._ids: dict[str, int] = {}  # our request id -> executor id
        self._last_stats: Any = None

    def _executor_config(self, cfg: ServingConfig, limits: dict[str, Any]) -> Any:
        tle = self._tle
        kv: dict[str, Any] = {"enable_block_reuse": cfg.trtllm.enable_kv_cache_reuse,
                              "free_gpu_memory_fraction": cfg.cache.kv_cache_free_mem_fraction}
        per_token = self.manifest.model.get("kv_bytes_per_token")
        if cfg.cache.kv_cache_memory_bytes and per_token:
            kv["max_tokens"] = int(cfg.cache.kv_cache_memory_bytes // per_token)  # KvCacheConfig caps tokens, not bytes
        policies = {"max_utilization": tle.CapacitySchedulerPolicy.MAX_UTILIZATION,
                    "guaranteed_no_evict": tle.CapacitySchedulerPolicy.GUARANTEED_NO_EVICT}
        policy = policies[cfg.trtllm.batch_scheduler_policy]
        b = cfg.batching
        # model.py get_executor_config; runtime batch/token caps may only shrink the engine's build limits.
        return tle.ExecutorConfig(
            max_beam_width=1, scheduler_config=tle.SchedulerConfig(capacity_scheduler_policy=policy),
            kv_cache_config=tle.KvCacheConfig(**kv), enable_chunked_context=self.chunked_context,
            max_batch_size=min(b.max_batch_size, limits["max_batch_size"]),
            max_num_tokens=self.max_num_tokens, max_queue_size=b.max_queue_size)

    def _chunking(self, cfg: ServingConfig) -> bool:
        """Chunked context only where the engine has paged context FMHA: the executor would otherwise switch it
        off itself with a warning (executorImpl.cpp fixExecutorConfig), and our prompt cap would be wrong."""
        paged = paged_context_fmha(self.manifest, self.engine_dir)
        if cfg.trtllm.enable_chunked_context and not paged:
            log.warning("enable_chunked_context ignored: engine %s was built without paged context FMHA; prompts "
                        "are capped at max_num_tokens (rebuild with --use-paged-context-fmha to chunk)",
                        self.engine_dir)
        return bool(cfg.trtllm.enable_chunked_context and paged)

    def wait_as_worker(self) -> None:
        """Non-leader MPI ranks: block until the leader shuts down (model.py initialize does the same)."""
        self.executor.shutdown()

    # -- requests ---------------------------------------------------------------------------------------

    def add_request(self, request: EngineRequest) -> None:
        if not self.is_leader:
            raise EngineError("this MPI rank is a TensorRT-LLM worker and cannot take requests", status="UNAVAILABLE")
        if request.request_id in self._ids:
            raise EngineError(f"request id {request.request_id!r} is already running", status="INVALID_ARGUMENT")
        p, n_prompt = request.params, len(request.prompt_token_ids)
        if p.n > 1:
            # The executor has numReturnSequences, but finish() (a stop string on one choice) could only cancel
            # all of them (Executor.cancel_request), and nothing here has run against a real Executor.
            raise InvalidRequest("n", "only 1 is supported on the TensorRT-LLM engine (engine: tensorrtllm); "
                                 "the pytorch engine serves n > 1")
        if p.logprobs:
            # The executor returns only the sampled token's log-probability (Result.log_probs); refuse rather
            # than answer top-n requests with nothing.
            raise EngineError("logprobs > 0 (top alternatives) is not available on the TensorRT-LLM engine; "
                              "use logprobs=0", status="INVALID_ARGUMENT")
        self.prompt_limits.check(n_prompt)
        end_id, stop_words = self._end_and_stop_ids(request)
        try:
            trt_request = self._tle.Request(
                input_token_ids=list(request.prompt_token_ids),
                max_tokens=min(p.max_tokens, self.max_model_len - n_prompt),  # LLM API _deduce_max_tokens clamps too
                streaming=True, sampling_config=self._sampling_config(p, end_id),
                # exclude_input_from_output as model.py sets it; logprobs only for the sampled token
                output_config=self._tle.OutputConfig(return_log_probs=p.logprobs is not None,
                                                     exclude_input_from_output=True),
                end_id=end_id, stop_words=[[t] for t in stop_words] or None)
        except (RuntimeError, TypeError, ValueError) as e:
            raise _invalid_from_bindings(e) from None
        try:
            trt_id = self.executor.enqueue_request(trt_request)
        except RuntimeError as e:  # the executor throws when ExecutorConfig.max_queue_size is reached
            if "queue size" in str(e).lower():
                raise Overloaded(f"TensorRT-LLM queue full: {e}") from None
            raise EngineError(f"TensorRT-LLM refused the request: {e}") from None
        self._ids[request.request_id] = trt_id
        self._live[trt_id] = _Live(request.request_id, n_prompt, p.logprobs is not None,
                                   frozenset(stop_words) | {end_id}, end_id)

    @staticmethod
    def _end_and_stop_ids(request: EngineRequest) -> tuple[int, list[int]]:
        """Request takes one end_id; other EOS ids and stop_token_ids become single-token stop_words.

        ignore_eos: end_id -1, as tensorrt_llm/executor/base_worker.py does for the LLM API. With min_tokens
        every stop id must be held back until min_tokens (our PyTorch engine bans them all), and the executor
        holds back only end_id: see _held_back_end_id.
        """
        p = request.params
        eos = [] if p.ignore_eos else sorted(request.eos_token_ids)
        if p.min_tokens > 0:
            return _held_back_end_id(eos, p.stop_token_ids), []
        end_id = eos[0] if eos else -1
        stop = sorted((set(eos[1:]) | set(p.stop_token_ids)) - {end_id})
        return end_id, stop

    def _sampling_config(self, p: Any, end_id: int) -> Any:
        # Like model.py get_sampling_config_from_request: pass only what is set, the rest keeps the
        # executor's defaults. Greedy is sent as top_k=1, not temperature=0: the bindings we read do not say
        # how the sampler treats a zero temperature, top-1 is unambiguous.
        kw: dict[str, Any] = {"top_k": 1} if p.greedy else {"temperature": p.temperature, "top_p": p.top_p}
        if not p.greedy and p.top_k > 0:
            kw["top_k"] = p.top_k
        if not p.greedy and p.min_p > 0:
            kw["min_p"] = p.min_p
        if p.repetition_penalty != 1.0:
            kw["repetition_penalty"] = p.repetition_penalty
        if p.presence_penalty != 0.0:
            kw["presence_penalty"] = p.presence_penalty
        if p.frequency_penalty != 0.0:
            kw["frequency_penalty"] = p.frequency_penalty
        if p.seed is not None:
            kw["seed"] = p.seed
        if p.min_tokens > 0 and end_id >= 0:
            # With end_id -1 (ignore_eos) the penalty kernel would mask logits[-1]; there is no EOS to hold back.
            kw["min_tokens"] = p.min_tokens
        return self._tle.SamplingConfig(beam_width=1, **kw)

    def abort(self, request_id: str) -> None:
        trt_id = self._ids.get(request_id)
        if trt_id is not None:
            self.executor.cancel_request(trt_id)  # the final response (CANCELLED) comes from a later step

    def finish(self, request_id: str, index: int | None = None) -> None:  # one choice per request here
        trt_id = self._ids.pop(request_id, None)
        if trt_id is not None and trt_id in self._live:
            self._live[trt_id].silent = True
            self.executor.cancel_request(trt_id)

    def has_work(self) -> bool:
        return any(not s.silent for s in self._live.values())

    # -- iteration ----------------------------------------------------------------------------------------

    def step(self) -> list[EngineOutput]:
        if not self._live:
            return []
        # model.py awaiter_loop: await_responses(timeout=timedelta) returns every ready response.
        merged: dict[str, EngineOutput] = {}
        for response in self.executor.await_responses(timeout=self._timeout):
            out = self._convert(response)
            if out is None:
                continue
            prev = merged.get(out.request_id)
            if prev is not None:  # several responses for one request in one wait: one output per step
                out.new_token_ids = prev.new_token_ids + out.new_token_ids
                if prev.logprobs is not None:
                    out.logprobs = prev.logprobs + (out.logprobs or [])
            merged[out.request_id] = out
        return list(merged.values())

    def _convert(self, response: Any) -> EngineOutput | None:
        state = self._live.get(response.request_id)
        if state is None:
            return None
        if response.has_error():
            self._forget(response.request_id)
            if state.silent:
                return None
            return EngineOutput(state.request_id, [], FinishReason.ERROR, error=EngineError(response.error_msg),
                                num_prompt_tokens=state.prompt_len)
        result = response.result
        tokens = list(result.output_token_ids[0])  # beam 0; streaming: only the new tokens
        reason = None
        if result.is_final:
            self._forget(response.request_id)
            reason = self._finish_reason(result.finish_reasons[0] if result.finish_reasons else None)
        if state.silent:
            return None
        logprobs = None
        if state.want_logprobs and result.log_probs:
            # llmRequest.cpp createResult: log_probs hold every token generated so far, tokens only the new
            # ones; the new tokens' values are the tail.
            lps = list(result.log_probs[0])[-len(tokens):] if tokens else []
            logprobs = [TokenLogprob(t, float(lp)) for t, lp in zip(tokens, lps, strict=False)]
        if reason is FinishReason.STOP and tokens and tokens[-1] in state.stop_ids:
            tokens = tokens[:-1]  # like our PyTorch engine, the stop token itself is not part of the answer
            logprobs = logprobs[:-1] if logprobs else logprobs
        return EngineOutput(state.request_id, tokens, reason, logprobs, num_prompt_tokens=state.prompt_len)

    def _finish_reason(self, reason: Any) -> FinishReason:
        fr = self._tle.FinishReason
        if reason == fr.LENGTH:
            return FinishReason.LENGTH
        if reason in (fr.CANCELLED, fr.TIMED_OUT):
            return FinishReason.ABORT
        return FinishReason.STOP  # END_ID, STOP_WORDS (and NOT_FINISHED on a final result, which should not happen)

    def _forget(self, trt_id: int) -> None:
        state = self._live.pop(trt_id, None)
        if state is not None and self._ids.get(state.request_id) == trt_id:
            del self._ids[state.request_id]

    # -- stats / lifecycle --------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        # model.py metrics_loop: get_latest_iteration_stats() returns the iterations since the last call.
        latest = self.executor.get_latest_iteration_stats()
        if latest:
            self._last_stats = latest[-1]
        s = self._last_stats
        if s is None:
            return EngineStats()
        ifb, kv = s.inflight_batching_stats, s.kv_cache_stats
        scheduled = ifb.num_scheduled_requests if ifb is not None else s.num_active_requests
        out = EngineStats(running=scheduled, waiting=s.num_queued_requests + s.num_active_requests - scheduled,
                          steps=s.iter)
        if kv is not None:
            out.kv_blocks_total, out.kv_blocks_free = kv.max_num_blocks, kv.free_num_blocks
            out.kv_block_size = kv.tokens_per_block
            out.prefix_cache_hit_blocks = kv.reused_blocks
            out.prefix_cache_query_blocks = kv.reused_blocks + kv.missed_blocks
        return out

    def shutdown(self) -> None:
        self.executor.shutdown()


def create_trtllm_engine(cfg: ServingConfig, engine_dir: Path, bindings: ModuleType | None = None, *,
                         runtime: RuntimeInfo | None = None) -> TrtllmEngine:
    """Chosen when ServingConfig.engine == "tensorrtllm" (llmserve/serving/factory.py).

    On a non-leader MPI rank (TP*PP > 1) this blocks until the leader shuts down and then raises, like
    model.py's initialize: the worker's tritonserver must never finish loading, or it would try to open the
    same ports as rank 0 (see llmserve/launch/mpi.py).
    """
    engine = TrtllmEngine(engine_dir, cfg, bindings=bindings, runtime=runtime)
    if not engine.is_leader:
        engine.wait_as_worker()
        raise EngineError("TensorRT-LLM worker rank: the leader (rank 0) has shut down", status="UNAVAILABLE")
    log.info("TensorRT-LLM engine %s: recipe %s, tp=%d pp=%d, leader=%s", engine_dir,
             engine.manifest.recipe.get("name"), engine.manifest.tp_size, engine.manifest.pp_size, engine.is_leader)
    return engine
