"""TrtllmEngine against the contract double of tensorrt_llm.bindings.executor (no GPU, no TensorRT-LLM)."""

from __future__ import annotations

import datetime

import pytest

from llmserve.config import ServingConfig
from llmserve.engine.api import EngineError, EngineRequest
from llmserve.engine.manifest import Manifest, read_manifest, write_manifest
from llmserve.engine.sampling_params import InvalidRequest, SamplingParams
from llmserve.engine.trtllm import RuntimeInfo, TrtllmEngine, create_trtllm_engine

try:
    from tests.doubles import trtllm_executor_double as tle
except ModuleNotFoundError:  # plain `pytest` (not `python -m pytest`): tests/ itself is on sys.path
    from doubles import trtllm_executor_double as tle

RUNTIME = RuntimeInfo("10.14.1", "1.2.1", (9, 0))
REBUILD = "python -m build_engines build --checkpoint /m --recipe fp16 --output /e --tp 1 --pp 1"
EOS = frozenset({2, 128009})


def build_engine_dir(path, paged_context_fmha: bool = True, tp: int = 1, pp: int = 1):
    write_manifest(Manifest(
        model={"vocab_size": 32000, "kv_bytes_per_token": 524288}, recipe={"name": "fp16"}, tp_size=tp, pp_size=pp,
        tensorrt_version="10.14.1", tensorrt_llm_version="1.2.1", gpu_name="NVIDIA H100", compute_capability="9.0",
        limits={"max_batch_size": 16, "max_input_len": 2048, "max_seq_len": 4096, "max_num_tokens": 4096,
                "use_paged_context_fmha": paged_context_fmha},
        engine_files={}, rebuild_command=REBUILD), path)
    tle.write_engine_config(path, tp, pp, use_paged_context_fmha=paged_context_fmha)
    return path


@pytest.fixture
def engine_dir(tmp_path):
    return build_engine_dir(tmp_path)


def make(engine_dir, runtime=RUNTIME, **cfg) -> TrtllmEngine:
    return TrtllmEngine(engine_dir, ServingConfig.of(engine="tensorrtllm", **cfg), bindings=tle, runtime=runtime)


def req(rid: str, prompt=(5, 6, 7), eos=EOS, **params) -> EngineRequest:
    return EngineRequest(rid, list(prompt), SamplingParams(**params), eos_token_ids=eos)


def run(engine: TrtllmEngine, max_steps: int = 100) -> dict[str, list]:
    """Steps until idle; returns request id -> its outputs in order."""
    seen: dict[str, list] = {}
    for _ in range(max_steps):
        if not engine.has_work():
            break
        for out in engine.step():
            seen.setdefault(out.request_id, []).append(out)
    return seen


def test_executor_is_built_like_nvidias_model_py(engine_dir):
    e = make(engine_dir, enable_kv_cache_reuse=False, kv_cache_free_mem_fraction=0.8, max_batch_size=64,
             max_num_tokens=2048, batch_scheduler_policy="max_utilization", enable_chunked_context=True,
             kv_cache_memory_bytes=1024**3)
    ex = e.executor
    assert (ex.model_path, ex.model_type) == (engine_dir, tle.ModelType.DECODER_ONLY)
    c = ex.config
    assert c.max_beam_width == 1 and c.enable_chunked_context is True
    assert c.scheduler_config.capacity_scheduler_policy is tle.CapacitySchedulerPolicy.MAX_UTILIZATION
    assert c.kv_cache_config.enable_block_reuse is False
    assert c.kv_cache_config.free_gpu_memory_fraction == 0.8
    assert c.kv_cache_config.max_tokens == 2048  # 1 GiB / 512 KiB per token (manifest)
    assert (c.max_batch_size, c.max_num_tokens) == (16, 2048)  # runtime caps never exceed the build limits
    assert (e.vocab_size, e.max_model_len, e.is_leader) == (32000, 4096, True)


def test_every_sampling_field_is_mapped(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1,
                      presence_penalty=0.5, frequency_penalty=0.25, seed=1234, min_tokens=3, logprobs=0,
                      max_tokens=20, eos=frozenset({2})))
    r = e.executor.requests[1]
    s = r.sampling_config
    assert (s.beam_width, s.temperature, s.top_k, s.top_p, s.min_p) == (1, 0.7, 40, 0.9, 0.05)
    assert (s.repetition_penalty, s.presence_penalty, s.frequency_penalty) == (1.1, 0.5, 0.25)
    assert (s.seed, s.min_tokens, s.length_penalty) == (1234, 3, None)
    assert (r.input_token_ids, r.max_tokens, r.streaming) == ([5, 6, 7], 20, True)
    assert r.end_id == 2 and r.stop_words is None  # min_tokens holds back end_id only: see the item 6 tests
    assert r.output_config.return_log_probs is True and r.output_config.exclude_input_from_output is True


def test_defaults_are_left_to_the_executor_and_greedy_is_top_k_1(engine_dir):
    e = make(engine_dir)
    e.add_request(req("greedy", temperature=0.0, top_p=0.5))
    s = e.executor.requests[1].sampling_config
    assert (s.top_k, s.temperature, s.top_p, s.seed, s.min_tokens, s.repetition_penalty) == (1, None, None, None,
                                                                                              None, None)
    assert e.executor.requests[1].output_config.return_log_probs is False


def test_ignore_eos_sends_end_id_minus_one_and_keeps_user_stop_ids(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", ignore_eos=True, stop_token_ids=[13]))
    e.add_request(req("b", ignore_eos=True))
    a, b = e.executor.requests[1], e.executor.requests[2]
    assert (a.end_id, a.stop_words) == (-1, [[13]])
    assert (b.end_id, b.stop_words) == (-1, None)


def test_streaming_outputs_one_token_per_step_until_length(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", max_tokens=4))
    e.add_request(req("b", prompt=(9,), max_tokens=2))
    seen = run(e)
    assert [o.new_token_ids for o in seen["a"]] == [[tle.default_token_fn([5, 6, 7], [0] * i)] for i in range(4)]
    assert [o.finish_reason for o in seen["a"]] == [None, None, None, "length"]
    assert [o.finish_reason for o in seen["b"]] == [None, "length"]
    assert all(o.num_prompt_tokens == 3 for o in seen["a"])
    assert not e.has_work() and e.step() == []
    assert set(e.executor.await_timeouts) == {datetime.timedelta(milliseconds=5)}


def test_eos_stops_without_the_eos_token(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", max_tokens=10))
    e.executor.token_fn = lambda prompt, gen: 2 if len(gen) == 2 else 100 + len(gen)
    seen = run(e)
    assert [o.new_token_ids for o in seen["a"]] == [[100], [101], []]
    assert seen["a"][-1].finish_reason == "stop"


def test_stop_token_id_stops_and_is_stripped_like_the_pytorch_engine(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", stop_token_ids=[13], max_tokens=10))
    e.executor.token_fn = lambda prompt, gen: 13 if len(gen) == 1 else 100
    seen = run(e)
    assert [(o.new_token_ids, o.finish_reason) for o in seen["a"]] == [([100], None), ([], "stop")]


def test_min_tokens_reaches_the_executor(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", min_tokens=3, max_tokens=10, eos=frozenset({2})))
    e.executor.token_fn = lambda prompt, gen: 2  # always EOS: only min_tokens holds it back
    seen = run(e)
    assert sum(len(o.new_token_ids) for o in seen["a"]) == 3 and seen["a"][-1].finish_reason == "stop"


def test_abort_cancels_in_the_executor_and_ends_with_abort(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", max_tokens=50))
    e.add_request(req("b", max_tokens=3))
    first = e.step()
    assert {o.request_id for o in first} == {"a", "b"}
    e.abort("a")
    out = {o.request_id: o for o in e.step()}
    assert (out["a"].new_token_ids, out["a"].finish_reason) == ([], "abort")
    assert out["b"].finish_reason is None
    seen = run(e)
    assert "a" not in seen and seen["b"][-1].finish_reason == "length"
    e.abort("a")  # already gone: no error


def test_finish_is_silent(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", max_tokens=50))
    e.step()
    e.finish("a")
    assert not e.has_work()
    assert e.step() == []  # the executor's CANCELLED response is swallowed
    assert e.executor._active == {}


def test_logprobs_of_the_sampled_token_and_refusal_of_top_n(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", logprobs=0, max_tokens=2))
    seen = run(e)
    lps = [lp for o in seen["a"] for lp in o.logprobs]
    assert [lp.token_id for lp in lps] == [t for o in seen["a"] for t in o.new_token_ids]
    assert [lp.logprob for lp in lps] == [-0.25, -0.26] and all(lp.top == {} for lp in lps)
    with pytest.raises(EngineError, match="logprobs > 0") as exc:
        e.add_request(req("b", logprobs=2))
    assert exc.value.status == "INVALID_ARGUMENT"


def test_prompt_and_max_tokens_respect_the_build_limits(engine_dir):
    e = make(engine_dir)
    with pytest.raises(InvalidRequest, match="the prompt has 2049 tokens; this engine was built for at most 2048"):
        e.add_request(req("long", prompt=[1] * 2049))
    e.add_request(req("a", prompt=[1] * 2000, max_tokens=4000))
    assert e.executor.requests[1].max_tokens == 4096 - 2000
    with pytest.raises(EngineError, match="already running"):
        e.add_request(req("a"))


def test_executor_error_responses_become_error_outputs(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", max_tokens=5))
    e.executor._active[1] = e.executor._queued.pop(1)
    e.executor._advance = lambda rid: (e.executor._active.pop(rid), tle.Response(rid, "boom (x.cpp:1)"))[1]
    (out,) = e.step()
    assert (out.request_id, out.finish_reason, out.new_token_ids) == ("a", "error", [])
    assert "boom" in str(out.error) and not e.has_work()


# -- issue 21 item 3: errors raised while the bindings build a request are that request's INVALID_ARGUMENT -----

def test_the_real_request_constructor_refuses_what_the_double_refuses():
    with pytest.raises(RuntimeError, match=r"Assertion failed: !mInputTokenIds.empty\(\) \(.*requestImpl.h:"):
        tle.Request([], 5)
    with pytest.raises(RuntimeError, match=r"Assertion failed: mMaxNewTokens > 0"):
        tle.Request([1], 0)
    with pytest.raises(RuntimeError, match=r"topP.value\(\) > 0.f && topP.value\(\) <= 1.f"):
        tle.SamplingConfig(top_p=1.5)


@pytest.mark.parametrize("params,field", [
    ({"max_tokens": 0}, "max_tokens"), ({"top_p": 1.5}, "top_p"), ({"temperature": -1.0}, "temperature"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"min_p": 2.0}, "min_p"),
])
def test_bindings_errors_while_building_a_request_are_invalid_argument(engine_dir, params, field):
    e = make(engine_dir)
    with pytest.raises(InvalidRequest) as exc:
        e.add_request(req("bad", **params))
    assert exc.value.field == field and "refused by TensorRT-LLM: [TensorRT-LLM][ERROR] Assertion failed" in str(
        exc.value) and "stack" not in str(exc.value)
    assert e.executor.requests == {} and not e.has_work()
    e.add_request(req("good", max_tokens=2))  # the engine goes on
    assert run(e)["good"][-1].finish_reason == "length"


def test_empty_prompt_is_refused_before_the_executor(engine_dir):
    with pytest.raises(InvalidRequest, match="text_input: the prompt is empty"):
        make(engine_dir).add_request(req("empty", prompt=()))


def test_stats_come_from_iteration_stats(engine_dir):
    e = make(engine_dir)
    assert e.stats().steps == 0
    e.add_request(req("a", max_tokens=5))
    e.add_request(req("b", max_tokens=5))
    e.step()
    s = e.stats()
    assert (s.running, s.waiting, s.steps) == (2, 0, 1)
    assert (s.kv_blocks_total, s.kv_blocks_free, s.kv_block_size) == (1000, 996, 32)
    assert (s.prefix_cache_hit_blocks, s.prefix_cache_query_blocks) == (0, 4)
    assert e.stats().steps == 1  # no new iteration: the last one is kept


@pytest.mark.parametrize("runtime,problem", [
    (RuntimeInfo("10.13.0", "1.2.1", (9, 0)), "TensorRT 10.14.1 at build, 10.13.0 here"),
    (RuntimeInfo("10.14.1", "1.2.1", (8, 0)), "GPU compute capability 9.0 (NVIDIA H100) at build, 8.0 here"),
])
def test_manifest_mismatch_refuses_to_load_and_names_the_rebuild_command(engine_dir, runtime, problem):
    with pytest.raises(EngineError) as exc:
        make(engine_dir, runtime=runtime)
    assert problem in str(exc.value) and str(exc.value).endswith(REBUILD)


def test_a_tensorrt_llm_outside_the_supported_line_is_refused_before_the_manifest(engine_dir):
    with pytest.raises(EngineError, match=r"TensorRT-LLM 1\.1\.0 here; .* written for 1\.2\.x only. Run it in "
                       r"nvcr.io/nvidia/tritonserver:26\.07-trtllm-python-py3"):
        make(engine_dir, runtime=RuntimeInfo("10.13.3.9", "1.1.0", (9, 0)))  # what 25.12's image ships


def test_no_manifest_no_engine(tmp_path):
    with pytest.raises(EngineError, match="no build_manifest.json .*python -m build_engines build"):
        make(tmp_path)


def test_worker_rank_blocks_then_refuses(engine_dir, monkeypatch):
    monkeypatch.setattr(tle.Executor, "default_leader", False)
    with pytest.raises(EngineError, match="worker rank"):
        create_trtllm_engine(ServingConfig.of(engine="tensorrtllm"), engine_dir, bindings=tle, runtime=RUNTIME)
    worker = make(engine_dir)
    with pytest.raises(EngineError, match="cannot take requests"):
        worker.add_request(req("a"))


def test_factory_and_shutdown(engine_dir):
    e = create_trtllm_engine(ServingConfig.of(engine="tensorrtllm"), engine_dir, bindings=tle, runtime=RUNTIME)
    e.shutdown()
    assert e.executor.shut_down


def test_the_double_is_strict_about_the_contract(engine_dir):
    with pytest.raises(TypeError):
        tle.SamplingConfig(topk=1)
    with pytest.raises(TypeError):
        tle.SamplingConfig(1, 40)  # everything after beam_width is keyword-only
    with pytest.raises(TypeError):
        tle.Request([1], 5, True)  # so is everything after max_tokens
    with pytest.raises(TypeError):
        tle.KvCacheConfig(free_gpu_memory_fraction="0.9")
    ex = make(engine_dir).executor
    with pytest.raises(TypeError):
        ex.await_responses(timeout=5)


def test_a_full_executor_queue_is_overload_and_counts_only_unscheduled_requests(engine_dir):
    e = make(engine_dir, max_queue_size=2)
    e.add_request(req("a", max_tokens=50))
    e.add_request(req("b", max_tokens=50))
    with pytest.raises(EngineError, match="queue full: Maximum queue size of 2 has been reached, please try again "
                       r"later \(cpp/tensorrt_llm/executor/executorImpl.cpp:") as exc:
        e.add_request(req("c"))
    assert exc.value.status == "UNAVAILABLE"
    assert {o.request_id for o in e.step()} == {"a", "b"}  # scheduled: no longer in the queue
    e.add_request(req("c"))
    e.add_request(req("d"))
    assert e.stats().waiting == 0 and e.step() and e.stats().running == 4


def test_max_queue_size_zero_or_less_is_unlimited(engine_dir):
    e = make(engine_dir, max_queue_size=1)
    e.executor.config.max_queue_size = 0  # our config refuses < 1; the executor treats <= 0 as unlimited
    for i in range(40):
        e.add_request(req(f"r{i}"))
    assert len(e.executor.requests) == 40


# -- the double's streamed log_probs: all so far (llmRequest.cpp createResult) ----------------------------------

def test_streamed_log_probs_hold_everything_so_far_and_the_adapter_takes_the_new_ones(engine_dir):
    ex = make(engine_dir).executor
    request = tle.Request([1], 4, streaming=True, output_config=tle.OutputConfig(return_log_probs=True))
    result = ex._result(request, [7], [5, 6, 7], False, [])
    assert result.output_token_ids == [[7]] and result.log_probs == [[-0.25, -0.26, -0.27]]
    e = make(engine_dir)
    e.add_request(req("b", logprobs=0, max_tokens=4))
    seen = run(e)
    assert [[lp.logprob for lp in o.logprobs] for o in seen["b"]] == [[-0.25], [-0.26], [-0.27], [-0.28]]


# -- issue 21 item 2: chunked context only with paged context FMHA; otherwise prompts capped at max_num_tokens ----

def test_no_paged_context_fmha_means_no_chunking_and_prompts_capped_at_max_num_tokens(tmp_path, caplog):
    e = make(build_engine_dir(tmp_path, paged_context_fmha=False), enable_chunked_context=True, max_num_tokens=1024)
    assert e.executor.config.enable_chunked_context is False and e.executor.chunked_context is False
    assert "without paged context FMHA" in caplog.text
    with pytest.raises(InvalidRequest, match="the prompt has 1025 tokens; this engine was built for at most 1024"):
        e.add_request(req("long", prompt=[1] * 1025))
    e.add_request(req("ok", prompt=[1] * 1024, max_tokens=2))


def test_with_paged_context_fmha_chunking_keeps_max_input_len(engine_dir):
    e = make(engine_dir, enable_chunked_context=True, max_num_tokens=1024)
    assert e.executor.config.enable_chunked_context is True and e.executor.chunked_context is True
    e.add_request(req("long", prompt=[1] * 2048, max_tokens=2))


def test_the_double_like_the_executor_switches_chunking_off_with_a_warning(tmp_path, caplog):
    build_engine_dir(tmp_path, paged_context_fmha=False)
    config = tle.ExecutorConfig(enable_chunked_context=True)
    ex = tle.Executor(tmp_path, tle.ModelType.DECODER_ONLY, config)  # fixExecutorConfig: no exception
    assert ex.chunked_context is False and "Chunked context is not supported" in caplog.text


def test_old_manifest_without_the_flag_reads_the_engine_config(tmp_path):
    build_engine_dir(tmp_path, paged_context_fmha=False)
    m = read_manifest(tmp_path)
    del m.limits["use_paged_context_fmha"]
    write_manifest(m, tmp_path)
    assert make(tmp_path, enable_chunked_context=True).chunked_context is False


# -- issue 21 item 1 (engine side): the executor refuses an MPI world that is not tp*pp ----------------------------

def test_world_size_mismatch_is_refused_at_construction(tmp_path, monkeypatch):
    build_engine_dir(tmp_path, tp=2)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    with pytest.raises(EngineError, match="MPI worldSize is expected to be equal to tp\\*pp\\*cp"):
        make(tmp_path)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert make(tmp_path).is_leader


# -- issue 21 item 6: min_tokens with ignore_eos (more in tests/test_trtllm_min_tokens.py) -------------------------

def test_min_tokens_with_ignore_eos_does_not_reach_the_penalty_kernel(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", ignore_eos=True, min_tokens=3, max_tokens=5))
    r = e.executor.requests[1]
    assert (r.end_id, r.sampling_config.min_tokens) == (-1, None)
    assert run(e)["a"][-1].finish_reason == "length"  # the double raises ContractViolation otherwise
    with pytest.raises(tle.ContractViolation):
        ex = e.executor
        ex.enqueue_request(tle.Request([1], 5, streaming=True, end_id=-1, sampling_config=tle.SamplingConfig(
            min_tokens=2)))
        ex.await_responses(timeout=datetime.timedelta(milliseconds=1))


def test_without_min_tokens_stop_ids_stay_with_the_executor(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", stop_token_ids=[13]))
    assert e.executor.requests[1].stop_words == [[13], [128009]]
