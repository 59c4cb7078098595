"""n > 1: several choices of one prompt, the prompt computed once, each choice on its own seeded stream.

Engine level on the real SmolLM2 checkpoint, then through the real tritonserver (vllm_backend's output shape).
"""

from __future__ import annotations

import threading

import pytest
import tritonclient.grpc as grpcclient

from llmserve.config import ServingConfig
from llmserve.engine.api import EngineRequest, FinishReason
from llmserve.engine.sampling_params import InvalidRequest, SamplingParams, parse_sampling_params
from llmserve.engine.synthetic import SyntheticEngine
from llmserve.engine.torch_engine import TorchEngine
from llmserve.engine.trtllm import TrtllmEngine
from llmserve.serving.api import GenerateRequest
from llmserve.serving.service import LLMService
from tests.conftest import SMALL_BLOCK
from tests.server_utils import infer_inputs

BLOCK_BYTES = 737280  # one 16-token KV block of SmolLM2-135M in float32
SAMPLED = {"temperature": 1.0, "top_p": 0.95}


def run(engine, requests) -> tuple[dict, dict]:
    """Tokens and finish reasons per (request id, choice)."""
    out: dict = {}
    reasons: dict = {}
    for r in requests:
        engine.add_request(r)
    while engine.has_work():
        for o in engine.step():
            out.setdefault((o.request_id, o.index), []).extend(o.new_token_ids)
            if o.finish_reason:
                reasons[(o.request_id, o.index)] = o.finish_reason
    return out, reasons


def request(rid, ids, n=3, **kw) -> EngineRequest:
    return EngineRequest(rid, ids, SamplingParams(n=n, **kw), frozenset({2}))


def prompt_tokens_computed(engine) -> list[int]:
    """Wraps the scheduler: counts, per scheduled step, the prompt positions each sequence computes."""
    counted: list[int] = []
    schedule = engine.scheduler.schedule

    def counting(*args, **kwargs):
        batch = schedule(*args, **kwargs)
        for seq, n in zip(batch.seqs, batch.num_tokens):
            counted.append(max(0, min(seq.num_computed_tokens + n, seq.num_prompt_tokens) - seq.num_computed_tokens))
        return batch

    engine.scheduler.schedule = counting
    return counted


@pytest.fixture(scope="module")
def engine(checkpoint):
    return TorchEngine(ServingConfig.of(), checkpoint)


def test_params_n_best_of_and_beam_search():
    assert parse_sampling_params({"n": "3"}).n == 3
    assert parse_sampling_params({"num_return_sequences": 2}).n == 2  # TensorRT-LLM's name
    for raw, field in [({"n": 0}, "n"), ({"n": 129}, "n"), ({"best_of": 2}, "best_of"),
                       ({"use_beam_search": True}, "use_beam_search"), ({"beam_width": 4}, "beam_width")]:
        with pytest.raises(InvalidRequest) as info:
            parse_sampling_params(raw)
        assert info.value.field == field


def test_seeded_choices_are_reproducible_differ_and_follow_seed_plus_index(engine, chat_ids):
    p = dict(SAMPLED, seed=7, max_tokens=6, ignore_eos=True)
    first, _ = run(engine, [request("a", chat_ids, **p)])
    again, _ = run(engine, [request("b", chat_ids, **p)])
    choices = [first[("a", i)] for i in range(3)]
    assert choices == [again[("b", i)] for i in range(3)]
    assert len({tuple(c) for c in choices}) > 1
    # Choice i draws from seed + i, as vLLM's n does: the same tokens as n=1 with that seed.
    alone, _ = run(engine, [request(f"s{i}", chat_ids, n=1, **{**p, "seed": 7 + i}) for i in range(3)])
    assert [alone[(f"s{i}", 0)] for i in range(3)] == choices
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total


@pytest.mark.parametrize("mode", ["false", "true"])
def test_prompt_is_computed_once_and_its_blocks_shared(checkpoint, chat_ids, mode):
    # Prefix caching off: the sharing is the group's own, not the cache's. Greedy decode steps run async with "true".
    engine = TorchEngine(ServingConfig.of(enable_prefix_caching="false", kv_block_size=SMALL_BLOCK,
                                          async_scheduling=mode), checkpoint)
    counted = prompt_tokens_computed(engine)
    engine.add_request(request("g", chat_ids, max_tokens=3, temperature=0.0, ignore_eos=True))
    out, refs = {}, 0
    while engine.has_work():
        for o in engine.step():
            out.setdefault(o.index, []).extend(o.new_token_ids)
        refs = max(refs, max(engine.blocks.ref_count))
    P, shared = len(chat_ids), (len(chat_ids) - 1) // SMALL_BLOCK * SMALL_BLOCK
    # Choice 0 computes the whole prompt; choices 1 and 2 only what follows the shared full blocks.
    assert sum(counted) == P + 2 * (P - shared) < 3 * P
    assert refs == 3  # a prompt block held by all three choices
    assert out[0] == out[1] == out[2] and len(out[0]) == 3  # greedy n > 1: identical choices (vLLM allows it)
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total


@pytest.mark.parametrize("knobs", [{}, {"max_num_tokens": 8, "kv_block_size": SMALL_BLOCK}])
def test_abort_ends_every_choice_and_frees_every_block(checkpoint, engine, chat_ids, knobs):
    # With max_num_tokens 8 the abort comes while choice 0 still prefills and choices 1, 2 wait for it.
    engine = TorchEngine(ServingConfig.of(**knobs), checkpoint) if knobs else engine
    engine.add_request(request("a", chat_ids, max_tokens=200, ignore_eos=True, **SAMPLED))
    engine.step()
    engine.step()
    assert engine.stats().kv_blocks_free < engine.stats().kv_blocks_total
    engine.abort("a")
    outs = engine.step()
    assert sorted((o.index, o.finish_reason) for o in outs) == [(i, FinishReason.ABORT) for i in range(3)]
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total
    assert not engine.has_work() and not engine.seqs


def test_finishing_one_choice_leaves_the_others_running(engine, chat_ids):
    engine.add_request(request("f", chat_ids, max_tokens=5, ignore_eos=True, seed=3, **SAMPLED))
    for _ in range(2):
        engine.step()
    engine.finish("f", 1)  # a stop string matched on choice 1's text
    out, reasons = run(engine, [])
    assert set(reasons) == {("f", 0), ("f", 2)} and ("f", 1) not in engine.seqs
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total


def test_a_preempted_group_gives_the_same_tokens(checkpoint, engine, chat_ids):
    # 37 prompt tokens + 13 fed back: four 16-token blocks per choice, two of them shared: 8 for the group, 6 here.
    p = dict(SAMPLED, seed=11, max_tokens=14, ignore_eos=True)
    roomy, _ = run(engine, [request("p", chat_ids, **p)])
    tight = TorchEngine(ServingConfig.of(kv_cache_memory_bytes=6 * BLOCK_BYTES), checkpoint)
    squeezed, reasons = run(tight, [request("p", chat_ids, **p)])
    assert tight.stats().preemptions > 0
    assert squeezed == roomy and set(reasons.values()) == {FinishReason.LENGTH}
    assert tight.stats().kv_blocks_free == tight.stats().kv_blocks_total


def test_service_keeps_per_choice_stop_strings_and_sends_one_final(tokenizer):
    # The synthetic engine cycles through the prompt's ids, choice i starting i tokens later.
    service = LLMService(SyntheticEngine(50000, 2048, 8, 0.0, 64), tokenizer).start()
    ids = tokenizer.encode(" red green blue red green blue")
    stop_at = tokenizer.decode(ids[2:3])  # choice 0 reaches it at its third token, choice 2 at its first
    deltas, done = [], threading.Event()

    def callback(delta):
        deltas.append(delta)
        if delta.finished:
            done.set()

    service.submit(GenerateRequest("r", SamplingParams(n=3, max_tokens=6, stop=[stop_at]), prompt_token_ids=ids),
                   callback)
    assert done.wait(10)
    service.shutdown()
    assert [d.finished for d in deltas].count(True) == 1 and deltas[-1].finished
    assert {d.index: d.finish_reason for d in deltas if d.finish_reason} == {i: FinishReason.STOP for i in range(3)}
    texts = ["".join(d.text for d in deltas if d.index == i) for i in range(3)]
    assert texts == [tokenizer.decode(ids[:2]), tokenizer.decode(ids[1:2]), ""]


def test_the_tensorrt_llm_engine_refuses_n_by_name():
    engine = TrtllmEngine.__new__(TrtllmEngine)  # the check comes before the executor is touched
    engine.is_leader, engine._ids = True, {}
    with pytest.raises(InvalidRequest) as info:
        engine.add_request(request("t", [1, 2, 3]))
    assert info.value.field == "n"


# -- through the real tritonserver ---------------------------------------------------------------------------
def _infer(server, stream: bool, params: dict) -> list:
    """Every response of one gRPC request: (text_output, finish_reason, num_output_tokens) per response."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results: list = []
    done = threading.Event()

    def callback(result, error):
        results.append(error if error is not None else result)
        if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
            done.set()

    client.start_stream(callback=callback)
    client.async_stream_infer("llm", infer_inputs(
        text_input="Name a fruit.", stream=stream, sampling_parameters=params, return_finish_reason=True,
        return_num_output_tokens=True, return_num_input_tokens=True), enable_empty_final_response=True)
    assert done.wait(120)
    client.stop_stream()
    client.close()
    for r in results:
        if isinstance(r, Exception):
            raise r
    return [_outputs(r) for r in results if r.get_response().outputs]


def _outputs(result) -> tuple:
    def strings(name):
        value = result.as_numpy(name)
        return None if value is None else [v.decode() for v in value.reshape(-1)]

    return strings("text_output"), strings("finish_reason"), result.as_numpy("num_output_tokens").tolist()


@pytest.mark.server
def test_triton_returns_n_entries_as_vllm_backend_does(server):
    params = {"n": 3, "seed": 5, "max_tokens": 6, "ignore_eos": True, **SAMPLED}
    (whole,) = _infer(server, False, params)
    texts, reasons, n_out = whole
    assert len(texts) == 3 and reasons == ["length"] * 3 and n_out == [6, 6, 6]
    assert len(set(texts)) > 1 and _infer(server, False, params)[0][0] == texts
    streamed = _infer(server, True, params)
    assert all(len(r[0]) == 3 and len(r[2]) == 3 for r in streamed)
    assert ["".join(r[0][i] for r in streamed) for i in range(3)] == texts
    assert streamed[-1][1] == ["length"] * 3 and sum(sum(r[2]) for r in streamed) == 18


@pytest.mark.server
def test_triton_per_choice_finish_reasons(server):
    # Choice 0 of a greedy and max_tokens=40 answer stops on EOS; we read per-choice reasons in one response.
    params = {"n": 2, "max_tokens": 40, "temperature": 0}
    texts, reasons, _ = _infer(server, False, params)[0]
    assert texts[0] == texts[1] and reasons[0] == reasons[1] and reasons[0] in ("stop", "length")
    streamed = _infer(server, True, {"n": 2, "seed": 1, "max_tokens": 12, **SAMPLED})
    ended = [r[1] for r in streamed if r[1] is not None]
    assert ended and all(len(x) == 2 for x in ended) and "None" not in ended[-1]


@pytest.mark.server
@pytest.mark.parametrize("params, field", [({"best_of": 2}, "best_of"), ({"use_beam_search": True}, "use_beam_search"),
                                           ({"n": 0}, "n")])
def test_triton_refuses_best_of_and_beam_search_by_name(server, params, field):
    with pytest.raises(Exception) as info:
        _infer(server, False, {"max_tokens": 4, **params})
    assert f"{field}:" in str(info.value)

