import pytest

from llmserve.engine.sampling_params import (
    InvalidRequest,
    SamplingParams,
    defaults_from_generation_config,
    parse_sampling_params,
)


def test_strings_are_coerced_like_vllm_backend_clients_send_them():
    p = parse_sampling_params({"temperature": "0.5", "max_tokens": "12", "top_k": 7, "ignore_eos": "true"})
    assert (p.temperature, p.max_tokens, p.top_k, p.ignore_eos) == (0.5, 12, 7, True)


def test_aliases_from_trtllm_and_genai_perf():
    p = parse_sampling_params({"min_length": 3, "random_seed": 9, "stop_words": ["##"]})
    assert (p.min_tokens, p.seed, p.stop) == (3, 9, ["##"])


@pytest.mark.parametrize("raw, field", [
    ({"temprature": 0.5}, "temprature"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"top_p": 1.5}, "top_p"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k": 2.5}, "top_k"),
    ({"seed": -3}, "seed"),
    ({"stop": [1, 2]}, "stop"),
    ({"stop": ["x"] * 100}, "stop"),
    ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
    ({"n": 0}, "n"),
    ({"best_of": 2}, "best_of"),
    ({"logprobs": 50}, "logprobs"),
    ({"min_length": 2, "min_tokens": 3}, "min_tokens"),
    ({"ignore_eos": "maybe"}, "ignore_eos"),
])
def test_bad_values_name_the_field(raw, field):
    with pytest.raises(InvalidRequest) as info:
        parse_sampling_params(raw)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_max_tokens_capped_by_context():
    with pytest.raises(InvalidRequest, match="max_tokens"):
        parse_sampling_params({"max_tokens": 10_000}, max_model_len=8192)


def test_stop_token_ids_checked_against_vocabulary():
    with pytest.raises(InvalidRequest, match="stop_token_ids"):
        parse_sampling_params({"stop_token_ids": [5, 60000]}, vocab_size=49152)


def test_defaults_come_from_generation_config():
    greedy = defaults_from_generation_config({"eos_token_id": 2})
    assert greedy.greedy and greedy.max_tokens == SamplingParams().max_tokens
    sampled = defaults_from_generation_config({"do_sample": True, "temperature": 0.6, "top_p": 0.9})
    assert (sampled.temperature, sampled.top_p) == (0.6, 0.9)
    # A request overrides the model default and leaves the rest alone.
    p = parse_sampling_params({"temperature": 0.2}, defaults=sampled)
    assert (p.temperature, p.top_p) == (0.2, 0.9)
