"""The response cache (llmserve/serving/response_cache.py): its store's bounds, the service in front of a real
`LLMService` (synthetic engine, the embedded tokenizer), and the real stack: tritonserver + SmolLM2 with the
cache on, where a repeated deterministic request is answered from it, identically and faster."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from llmserve.config import ConfigError, ServingConfig
from llmserve.engine.api import EngineError, FinishReason
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.synthetic import SyntheticEngine
from llmserve.serving.api import Delta, GenerateRequest
from llmserve.serving.bridge.client import ServiceProcess
from llmserve.serving.factory import build_service
from llmserve.serving.response_cache import HITS, MISSES, CachingService, ResponseStore, cache_identity
from llmserve.serving.service import LLMService
from tests.conftest import MODEL_DIR, start_triton
from tests.server_utils import infer_inputs, make_repository, metric, wait_for

GREEDY = SamplingParams(temperature=0.0, max_tokens=8)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Counts:
    """A MetricsSink that keeps the counters."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()

    def increment(self, name, value=1.0, labels=None):
        self.counts[name] += value

    def observe(self, name, value):
        pass

    def set(self, name, value, labels=None):
        pass


# -- the store ------------------------------------------------------------------------------------------------
def test_store_evicts_the_least_recently_used_past_the_entry_bound():
    store = ResponseStore(max_entries=2, max_bytes=1000, ttl_s=60)
    store.put("a", b"1")
    store.put("b", b"2")
    assert store.get("a") == b"1"  # a is now the most recently used
    store.put("c", b"3")
    assert (store.get("a"), store.get("b"), store.get("c")) == (b"1", None, b"3")
    assert len(store) == 2


def test_store_keeps_its_byte_bound_and_refuses_an_answer_larger_than_it():
    store = ResponseStore(max_entries=100, max_bytes=10, ttl_s=60)
    store.put("a", b"x" * 6)
    store.put("b", b"y" * 4)
    assert store.size_bytes == 10
    store.put("c", b"z" * 3)  # 13 > 10: the least recently used (a) goes
    assert store.get("a") is None and store.get("b") == b"y" * 4 and store.size_bytes == 7
    assert store.put("big", b"w" * 11) is False and store.get("big") is None
    store.put("b", b"v" * 2)  # replacing an entry counts its new size only
    assert store.size_bytes == 5


def test_store_forgets_an_answer_once_its_ttl_has_passed():
    clock = Clock()
    store = ResponseStore(max_entries=10, max_bytes=100, ttl_s=5, timer=clock)
    store.put("a", b"1")
    clock.now = 3
    store.put("b", b"2")
    clock.now = 4.9
    assert store.get("a") == b"1"  # a lookup does not extend the TTL
    clock.now = 5
    assert store.get("a") is None and store.get("b") == b"2"
    clock.now = 8
    assert len(store) == 0 and store.size_bytes == 0
    store.put("a", b"1")  # a new store starts a new TTL
    clock.now = 12.9
    assert store.get("a") == b"1"


# -- the service ----------------------------------------------------------------------------------------------
@pytest.fixture
def cached(tokenizer):
    """A CachingService over an LLMService on the synthetic engine (its tokens: the prompt's, in turn)."""
    engine = SyntheticEngine(tokenizer.backend.get_vocab_size(), 8192, 8, 5.0, 64)
    counts = Counts()
    service = CachingService(LLMService(engine, tokenizer).start(), ResponseStore(16, 1 << 20, 60), "id", counts)
    yield service, engine, counts.counts
    service.shutdown()


def run(service, rid: str, params: SamplingParams = GREEDY, prompt: str = "Say hello to the world.",
        abort_after: int | None = None) -> list[Delta]:
    """The request's deltas up to its final one (`abort_after`: abort it once that many have come)."""
    q: queue.SimpleQueue = queue.SimpleQueue()
    service.submit(GenerateRequest(rid, dataclasses.replace(params), prompt=prompt), q.put)
    deltas = []
    while not deltas or not deltas[-1].finished:
        deltas.append(q.get(timeout=30))
        if len(deltas) == abort_after:
            service.abort(rid)
    time.sleep(0.05)
    assert q.empty(), "a delta after the final one"
    assert all(d.request_id == rid for d in deltas)
    return deltas


def same(a: list[Delta], b: list[Delta]) -> bool:
    return [dataclasses.replace(d, request_id="") for d in a] == [dataclasses.replace(d, request_id="") for d in b]


def test_a_repeated_greedy_request_is_replayed_without_the_engine(cached):
    service, engine, counts = cached
    first = run(service, "a")
    steps = engine.steps
    again = run(service, "b")
    assert len(first) == 8 and first[-1].finish_reason == FinishReason.LENGTH
    assert same(first, again)  # text, token ids, counts and finish reason of every delta
    assert engine.steps == steps  # the engine never saw it
    assert (counts[HITS], counts[MISSES]) == (1, 1)


def test_every_parameter_and_the_prompt_are_part_of_the_key(cached):
    service, _, counts = cached
    run(service, "a")
    run(service, "b", dataclasses.replace(GREEDY, max_tokens=9))
    run(service, "c", dataclasses.replace(GREEDY, stop=["zzz"]))
    run(service, "d", dataclasses.replace(GREEDY, logprobs=0))
    run(service, "e", prompt="Say hello to the moon.")
    assert (counts[HITS], counts[MISSES]) == (0, 5)
    run(service, "f", dataclasses.replace(GREEDY, stop=["zzz"]))
    assert (counts[HITS], counts[MISSES]) == (1, 5)


def test_sampled_requests_are_cached_only_with_a_seed(cached):
    service, engine, counts = cached
    sampled = SamplingParams(temperature=0.8, max_tokens=6)
    run(service, "a", sampled)
    steps = engine.steps
    run(service, "b", sampled)
    assert engine.steps > steps and counts[HITS] == counts[MISSES] == 0  # never looked up, never stored
    seeded = dataclasses.replace(sampled, seed=7)
    first = run(service, "c", seeded)
    assert same(first, run(service, "d", seeded))
    assert (counts[HITS], counts[MISSES]) == (1, 1)
    run(service, "e", dataclasses.replace(seeded, seed=8))
    assert (counts[HITS], counts[MISSES]) == (1, 2)


def test_several_choices_are_recorded_and_replayed_as_one_answer(cached):
    service, engine, counts = cached
    params = SamplingParams(temperature=0.7, seed=5, max_tokens=8, n=3)
    first = run(service, "a", params)
    steps = engine.steps
    assert {d.index for d in first} == {0, 1, 2} and sum(d.finished for d in first) == 1
    assert same(first, run(service, "b", params)) and engine.steps == steps
    assert (counts[HITS], counts[MISSES]) == (1, 1)


def test_a_cancelled_answer_is_not_stored(cached):
    service, _, counts = cached
    long = dataclasses.replace(GREEDY, max_tokens=100)
    cut = run(service, "a", long, abort_after=3)
    assert cut[-1].finish_reason == FinishReason.ABORT
    whole = run(service, "b", long)
    assert whole[-1].finish_reason == FinishReason.LENGTH and len(whole) == 100
    assert (counts[HITS], counts[MISSES]) == (0, 2)
    assert same(whole, run(service, "c", long)) and counts[HITS] == 1


def test_a_replay_cancelled_on_the_way_ends_once_with_abort(cached):
    service, _, counts = cached
    long = dataclasses.replace(GREEDY, max_tokens=100)
    whole = run(service, "a", long)
    cut = run(service, "b", long, abort_after=1)
    assert counts[HITS] == 1
    assert len(cut) < len(whole) and cut[-1].finish_reason == FinishReason.ABORT
    assert sum(d.finished for d in cut) == 1
    assert same(cut[:-1], whole[:len(cut) - 1])
    assert same(whole, run(service, "c", long))  # the entry itself is untouched


def test_draining_refuses_hits_too_and_shutdown_ends_replays_with_unavailable(cached):
    service, _, _ = cached
    long = dataclasses.replace(GREEDY, max_tokens=100)
    run(service, "a", long)
    q: queue.SimpleQueue = queue.SimpleQueue()
    service.submit(GenerateRequest("b", dataclasses.replace(long), prompt="Say hello to the world."), q.put)
    service.shutdown()
    deltas = [q.get(timeout=5)]
    while not deltas[-1].finished:
        deltas.append(q.get(timeout=5))
    assert isinstance(deltas[-1].error, EngineError) and deltas[-1].error.status == "UNAVAILABLE"
    assert len(deltas) < 100
    with pytest.raises(EngineError, match="not serving"):
        service.submit(GenerateRequest("c", long, prompt="Say hello to the world."), q.put)


def test_draining_refuses_a_request_that_would_hit(cached):
    service, _, _ = cached
    run(service, "a")
    service.drain(10)
    with pytest.raises(EngineError, match="draining"):
        service.submit(GenerateRequest("b", dataclasses.replace(GREEDY), prompt="Say hello to the world."),
                       lambda d: None)


# -- configuration and identity --------------------------------------------------------------------------------
@pytest.mark.parametrize("knobs, field", [({"response_cache_max_entries": -1}, "response_cache_max_entries"),
                                          ({"response_cache_max_bytes": 0}, "response_cache_max_bytes"),
                                          ({"response_cache_ttl_s": 0}, "response_cache_ttl_s"),
                                          ({"response_cache_ttl_s": "long"}, "response_cache_ttl_s")])
def test_the_knobs_are_checked(knobs, field):
    with pytest.raises(ConfigError, match=field):
        ServingConfig.of(**knobs)


def test_the_factory_puts_the_cache_in_front_only_when_it_is_on():
    off = build_service(ServingConfig.of(engine="synthetic", device="cpu"), MODEL_DIR)
    on = build_service(ServingConfig.of(engine="synthetic", device="cpu", response_cache_max_entries=4), MODEL_DIR)
    try:
        assert isinstance(off, LLMService) and isinstance(on, CachingService)
        assert (on.store.max_entries, on.store.max_bytes, on.store.ttl_s) == (4, 64 << 20, 300.0)
    finally:
        off.shutdown()
        on.shutdown()


@pytest.mark.slow
def test_in_front_of_an_engine_process_a_repeat_is_a_hit_with_the_same_deltas():
    """The deltas cross the engine process's pipe (pickled) before the cache records them."""
    cfg = ServingConfig.of(engine="synthetic", device="cpu", engine_process="true", synthetic_step_ms=5,
                           response_cache_max_entries=4)
    counts = Counts()
    service = build_service(cfg, MODEL_DIR, counts)
    try:
        assert isinstance(service, CachingService) and isinstance(service.inner, ServiceProcess)
        first = run(service, "a")
        assert same(first, run(service, "b"))
        assert (counts.counts[HITS], counts.counts[MISSES]) == (1, 1)
    finally:
        service.shutdown()


def test_the_identity_follows_the_checkpoints_files_and_the_knobs(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 1}')
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 16)
    cfg = ServingConfig()
    base = cache_identity(cfg, [tmp_path])
    assert cache_identity(cfg, [tmp_path]) == base
    (tmp_path / "config.json").write_text('{"hidden_size": 2}')  # same size, other content
    changed = cache_identity(cfg, [tmp_path])
    assert changed != base
    os.utime(weights, ns=(0, 10**9))  # a weight file rewritten (by its size and time)
    assert cache_identity(cfg, [tmp_path]) not in (base, changed)
    assert cache_identity(cfg.replace(dtype="bfloat16"), [tmp_path]) != cache_identity(cfg, [tmp_path])


# -- the real stack -------------------------------------------------------------------------------------------
QUESTION = json.dumps([{"role": "user", "content": "What is the capital of France?"}])
FLAGS = {f: True for f in ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens",
                           "return_logprobs", "return_cumulative_logprob")}
OUTPUTS = ("text_output", "finish_reason", "num_input_tokens", "num_output_tokens", "logprobs", "cumulative_logprob")


def ask(url: str, stream: bool, params: dict) -> tuple[list[dict], float]:
    """Every response of one gRPC request with all its outputs, and the seconds to the final one."""
    client = grpcclient.InferenceServerClient(url)
    q: queue.SimpleQueue = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    t0 = time.monotonic()
    client.async_stream_infer("llm", infer_inputs(messages=QUESTION, stream=np.array([stream]),
                                                  sampling_parameters=params, **FLAGS))
    responses = []
    while True:
        result, error = q.get(timeout=120)
        assert error is None, error
        responses.append({name: _output(result, name) for name in OUTPUTS})
        if result.get_response().parameters["triton_final_response"].bool_param:
            elapsed = time.monotonic() - t0
            client.stop_stream()
            client.close()
            return responses, elapsed


def _output(result, name: str):
    array = result.as_numpy(name)
    if array is None:
        return None
    value = array.reshape(-1)[0]
    if name == "logprobs":
        return json.loads(value)
    return value.decode() if isinstance(value, bytes) else value.item()


def whole(chunks: list[dict]) -> dict:
    """The answer of a response stream, whatever its chunks."""
    return {"text": "".join(c["text_output"] for c in chunks), "tokens": sum(c["num_output_tokens"] for c in chunks),
            "logprobs": [e for c in chunks for e in c["logprobs"]], "finish_reason": chunks[-1]["finish_reason"],
            "num_input_tokens": {c["num_input_tokens"] for c in chunks}}


def ends(chunks: list[dict]) -> list[tuple[int, int]]:
    """Where each chunk ends, in characters and tokens."""
    out, chars, tokens = [], 0, 0
    for c in chunks:
        chars, tokens = chars + len(c["text_output"]), tokens + c["num_output_tokens"]
        out.append((chars, tokens))
    return out


@pytest.mark.server
def test_through_tritonserver_a_repeat_is_answered_from_the_cache_identically_and_faster(checkpoint, tmp_path):
    repo = make_repository(tmp_path / "repo", checkpoint, response_cache_max_entries=8)
    srv = start_triton(repo, tmp_path / "server.log", timeout=300)

    def counted(hits: int, misses: int) -> bool:
        return (metric(srv.metrics_url, HITS), metric(srv.metrics_url, MISSES)) == (hits, misses)

    try:
        greedy = {"temperature": 0, "max_tokens": 24}
        first, first_s = ask(srv.grpc_url, True, greedy)
        assert wait_for(lambda: counted(0, 1))
        again, again_s = ask(srv.grpc_url, True, greedy)
        assert wait_for(lambda: counted(1, 1))
        assert "Paris" in whole(first)["text"] and len(first) > 3 and len(again) > 3
        assert whole(again) == whole(first)  # text, token count, logprobs, finish reason, prompt tokens
        assert again[-1]["cumulative_logprob"] == pytest.approx(first[-1]["cumulative_logprob"], rel=1e-6)
        # Chunk for chunk, except that the adapter joins neighbouring deltas when its response thread is behind
        # (as for any request): each chunk of the repeat ends where one of the first's did.
        assert set(ends(again)) <= set(ends(first)), (again, first)
        assert again_s < first_s / 3, (again_s, first_s)
        # A unary request shares the entry: the same answer, framed as one response.
        (unary,), _ = ask(srv.grpc_url, False, greedy)
        assert wait_for(lambda: counted(2, 1))
        assert whole([unary]) == whole(first)
        assert unary["cumulative_logprob"] == pytest.approx(first[-1]["cumulative_logprob"], rel=1e-6)
        # Sampled without a seed: never from the cache, not counted; with one: cached.
        for _ in range(2):
            ask(srv.grpc_url, True, {"temperature": 0.9, "max_tokens": 6})
        time.sleep(0.3)  # past a metrics flush
        assert counted(2, 1)
        seeded = {"temperature": 0.9, "max_tokens": 6, "seed": 11}
        assert whole(ask(srv.grpc_url, True, seeded)[0]) == whole(ask(srv.grpc_url, True, seeded)[0])
        assert wait_for(lambda: counted(3, 2))
    finally:
        srv.stop()
