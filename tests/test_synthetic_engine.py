"""The model-free engine behind `python -m bench.adapter` (engine: synthetic)."""

import queue

import pytest

from llmserve.config import ConfigError, ServingConfig
from llmserve.engine.api import EngineRequest, Overloaded
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.synthetic import SyntheticEngine
from llmserve.serving.api import GenerateRequest
from llmserve.serving.factory import build_service
from tests.conftest import MODEL_DIR


def req(rid, ids, n):
    return EngineRequest(rid, ids, SamplingParams(max_tokens=n))


def test_tokens_cycle_the_prompt_for_exactly_max_tokens_and_batches_are_capped():
    e = SyntheticEngine(vocab_size=100, max_model_len=64, max_batch_size=2, step_ms=0, max_queue_size=8)
    for rid, n in (("a", 5), ("b", 3), ("c", 2)):
        e.add_request(req(rid, [7, 8], n))
    got, reasons, widest = {}, {}, 0
    while e.has_work():
        outs = e.step()
        widest = max(widest, len(outs))
        for o in outs:
            got.setdefault(o.request_id, []).extend(o.new_token_ids)
            if o.finish_reason:
                reasons[o.request_id] = o.finish_reason
    assert got == {"a": [7, 8, 7, 8, 7], "b": [7, 8, 7], "c": [7, 8]}
    assert set(reasons.values()) == {"length"} and widest == 2 and e.stats().steps == 5


def test_abort_and_a_full_queue():
    e = SyntheticEngine(vocab_size=100, max_model_len=64, max_batch_size=4, step_ms=0, max_queue_size=1)
    e.add_request(req("a", [1], 10))
    with pytest.raises(Overloaded):
        e.add_request(req("b", [1], 10))
    e.step()
    e.abort("a")
    (final,) = e.step()  # the engine contract: an abort's final output comes from the next step
    assert final.request_id == "a" and final.finish_reason == "abort" and final.new_token_ids == []
    assert not e.has_work()


def test_the_service_serves_text_through_it(checkpoint):
    cfg = ServingConfig.of(engine="synthetic", synthetic_step_ms=0.0)
    service = build_service(cfg, MODEL_DIR)
    try:
        deltas: queue.SimpleQueue = queue.SimpleQueue()
        service.submit(GenerateRequest("x", SamplingParams(max_tokens=4), prompt="Hello world"), deltas.put)
        text, last = "", None
        while last is None or not last.finished:
            last = deltas.get(timeout=10)
            text += last.text
        assert last.finish_reason == "length" and text.strip().startswith("Hello")
    finally:
        service.stop()
    with pytest.raises(ConfigError):
        ServingConfig.of(engine="imaginary")
