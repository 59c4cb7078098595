"""Issue 21 item 6: min_tokens on the TensorRT-LLM path answers exactly as the PyTorch engine, or is refused.

The PyTorch engine bans every EOS id and stop_token_id until min_tokens (torch_engine.sampling_batch). The
executor holds back only end_id (penaltyKernels.cu), ends on a stop word whatever min_tokens says
(stopCriteriaKernels.cu) and bans a single-token bad word at every step (banBadWords.cu); the contract double
does the same, and these tests show why the adapter sends the one held-back id as end_id and refuses more.
"""

from __future__ import annotations

import pytest

from llmserve.engine.sampling_params import InvalidRequest

try:
    from tests.doubles import trtllm_executor_double as tle
    from tests.test_trtllm_engine import build_engine_dir, make, req, run
except ModuleNotFoundError:  # plain `pytest` (not `python -m pytest`): tests/ itself is on sys.path
    from doubles import trtllm_executor_double as tle
    from test_trtllm_engine import build_engine_dir, make, req, run


@pytest.fixture
def engine_dir(tmp_path):
    return build_engine_dir(tmp_path)


def run_double(engine_dir, token_fn, **request_kw) -> tuple[list[int], tle.FinishReason]:
    """One request straight into the double, unstreamed: (tokens, finish reason)."""
    ex = tle.Executor(engine_dir, tle.ModelType.DECODER_ONLY, tle.ExecutorConfig())
    ex.token_fn = token_fn
    ex.enqueue_request(tle.Request([5], 10, output_config=tle.OutputConfig(exclude_input_from_output=True),
                                   **request_kw))
    for _ in range(20):
        if out := ex.await_responses():
            return out[0].result.output_token_ids[0], out[0].result.finish_reasons[0]
    raise AssertionError("the double never finished")


def test_the_executor_holds_back_only_end_id_so_no_second_id_can_be_held_back(engine_dir):
    second_eos = lambda prompt, gen: 7 if len(gen) in (0, 4) else 100  # noqa: E731  (7: a second EOS id)
    # as a stop word, the second EOS ends the answer at once: min_tokens=3 is not honoured
    tokens, reason = run_double(engine_dir, second_eos, end_id=2, stop_words=[[7]],
                                sampling_config=tle.SamplingConfig(min_tokens=3))
    assert (tokens, reason) == ([7], tle.FinishReason.STOP_WORDS)
    # as a bad word it is held back, but for the whole answer: it can no longer end it after min_tokens
    tokens, reason = run_double(engine_dir, second_eos, end_id=2, bad_words=[[7]],
                                sampling_config=tle.SamplingConfig(min_tokens=3))
    assert 7 not in tokens and reason == tle.FinishReason.LENGTH
    # as end_id it is held back until min_tokens and ends the answer after it: what the PyTorch engine does
    tokens, reason = run_double(engine_dir, second_eos, end_id=7, sampling_config=tle.SamplingConfig(min_tokens=3))
    assert (tokens, reason) == ([8, 100, 100, 100], tle.FinishReason.END_ID)  # 7 masked at step 0, ends at 4


@pytest.mark.parametrize("params", [
    {"eos": frozenset({2, 128009})},  # a tokenizer with two EOS ids (Llama 3 instruct)
    {"eos": frozenset({2}), "stop_token_ids": [13]},  # one EOS and a stop id
    {"eos": frozenset(), "ignore_eos": True, "stop_token_ids": [13, 14]},
])
def test_min_tokens_with_two_ids_to_hold_back_is_refused_by_name(engine_dir, params):
    e = make(engine_dir)
    with pytest.raises(InvalidRequest) as exc:
        e.add_request(req("a", min_tokens=3, max_tokens=10, **params))
    assert exc.value.field == "min_tokens" and "can hold back only one" in exc.value.reason
    assert "pytorch engine" in exc.value.reason and e.executor.requests == {}
    e.add_request(req("b", max_tokens=2, **params))  # without min_tokens the same request is served
    assert run(e)["b"][-1].finish_reason == "length"


def test_one_id_to_hold_back_goes_as_end_id_banned_until_min_tokens_then_stopping(engine_dir):
    e = make(engine_dir)
    e.add_request(req("a", ignore_eos=True, stop_token_ids=[13], min_tokens=3, max_tokens=10))
    r = e.executor.requests[1]
    assert (r.end_id, r.stop_words, r.sampling_config.min_tokens) == (13, None, 3)
    e.executor.token_fn = lambda prompt, gen: 13  # the stop id is always the favourite
    seen = run(e)
    out = [t for o in seen["a"] for t in o.new_token_ids]
    assert out == [14, 14, 14] and seen["a"][-1].finish_reason == "stop"  # banned for 3 tokens, then it stops

