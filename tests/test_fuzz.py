"""Bad input, fuzzed with hypothesis through gRPC and HTTP (1,050 cases): each gets an error naming the
field, and the server stays ready and correct afterwards."""

import http.client
import json
import math
import queue

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_client import LLMClient
from tests.server_utils import Stream, infer_inputs

pytestmark = pytest.mark.server
NUMERIC = {  # field -> invalid values
    "max_tokens": st.one_of(st.integers(max_value=0), st.integers(min_value=10_000, max_value=2**62)),
    "min_tokens": st.integers(max_value=-1),
    "temperature": st.one_of(st.floats(max_value=-1e-6, allow_nan=False), st.floats(min_value=100.5)),
    "top_k": st.integers(max_value=-2),
    "top_p": st.one_of(st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=1.0001)),
    "min_p": st.one_of(st.floats(max_value=-1e-6, allow_nan=False), st.floats(min_value=1.0001)),
    "repetition_penalty": st.one_of(st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=10.01)),
    "presence_penalty": st.one_of(st.floats(max_value=-2.01, allow_nan=False), st.floats(min_value=2.01)),
    "frequency_penalty": st.one_of(st.floats(max_value=-2.01, allow_nan=False), st.floats(min_value=2.01)),
    "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63, max_value=2**70)),
    "logprobs": st.one_of(st.integers(max_value=-1), st.integers(min_value=21, max_value=10**9)),
}
WRONG_TYPE = st.one_of(st.text(alphabet="abcxyz!?", min_size=1), st.lists(st.integers(), max_size=3),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.just(float("nan")),
                       st.just(float("inf")))
KNOWN = {"max_tokens", "min_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed",
         "presence_penalty", "frequency_penalty", "stop", "stop_token_ids", "ignore_eos", "logprobs",
         "skip_special_tokens", "min_length", "random_seed", "stop_words", "max_new_tokens", "runtime_top_k",
         "runtime_top_p", "n", "best_of", "lora_name", "beam_width", "num_return_sequences", "end_id", "pad_id",
         "use_beam_search", "length_penalty", "detokenize"}


@st.composite
def bad_request(draw, grpc: bool):
    """Returns (inputs as python values, the field the error must name)."""
    base = {"text_input": draw(st.sampled_from(["hi", "What is 2+2?", "Grüße 世界"]))}
    kinds = ["numeric", "wrong_type", "unknown_key", "not_json", "empty_prompt", "long_prompt", "many_stops",
             "long_stop", "stop_ids", "conflict", "n", "stream_echo", "messages", "both"]
    if grpc:
        kinds += ["bad_utf8", "wrong_dtype", "wrong_shape"]
    kind = draw(st.sampled_from(kinds))
    params: dict = {}
    if kind == "numeric":
        field = draw(st.sampled_from(sorted(NUMERIC)))
        params[field] = draw(NUMERIC[field])
    elif kind == "wrong_type":
        field = draw(st.sampled_from(["max_tokens", "temperature", "top_p", "seed", "ignore_eos", "top_k"]))
        value = draw(WRONG_TYPE)
        if field in ("max_tokens", "top_k", "seed") and isinstance(value, str) and value.lstrip("-").isdigit():
            value = value + "x"
        params[field] = value
    elif kind == "unknown_key":
        field = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
            lambda k: k not in KNOWN))
        params[field] = draw(st.integers())
    elif kind == "not_json":
        field = "sampling_parameters"
        base["sampling_parameters"] = draw(st.sampled_from(["{", "[1,2]", "42", "{'a': 1}", "nul", "{\"a\":}"]))
    elif kind == "empty_prompt":
        field, base["text_input"] = "text_input", draw(st.sampled_from(["", " ", "\n\t "]))
    elif kind == "long_prompt":
        field = "text_input"
        base["text_input"] = draw(st.sampled_from(["word " * 9000, "x" * 1_100_000]))
    elif kind == "many_stops":
        field = "stop"
        params["stop"] = [f"s{i}" for i in range(draw(st.integers(17, 500)))]
    elif kind == "long_stop":
        field = "stop"
        params["stop"] = ["y" * draw(st.integers(257, 5000))]
    elif kind == "stop_ids":
        field = "stop_token_ids"
        params["stop_token_ids"] = [draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=49152)))]
    elif kind == "conflict":
        field = draw(st.sampled_from(["max_tokens", "min_tokens"]))
        if field == "max_tokens":
            base["max_tokens"] = np.array([draw(st.integers(1, 50))], dtype=np.int32)
            params["max_tokens"] = int(base["max_tokens"][0]) + draw(st.integers(1, 50))
        else:
            params.update(min_tokens=draw(st.integers(0, 5)), min_length=draw(st.integers(0, 5)))
    elif kind == "n":
        field = draw(st.sampled_from(["n", "best_of", "beam_width"]))  # n up to 128 is served: beyond is refused
        params[field] = draw(st.integers(129, 10**6) if field == "n" else st.integers(2, 64))
    elif kind == "stream_echo":
        field = "exclude_input_in_output"
        base.update(stream=np.array([True]), exclude_input_in_output=np.array([False]))
    elif kind == "messages":
        field = "messages"
        del base["text_input"]
        base["messages"] = draw(st.sampled_from(["[", "{}", "[]", "[1]", '[{"role": "user"}]',
                                                 '[{"role": 1, "content": "x"}]', '"hello"']))
    elif kind == "both":
        field = "text_input"
        base["messages"] = '[{"role": "user", "content": "hi"}]'
    elif kind == "bad_utf8":
        field = "text_input"
        base["text_input"] = np.array([draw(st.sampled_from([b"\xff\xfe", b"ok\xc3", b"\xed\xa0\x80x"]))],
                                      dtype=np.object_)
    elif kind == "wrong_dtype":
        field = draw(st.sampled_from(["max_tokens", "temperature", "stream", "seed"]))
        dtype = draw(st.sampled_from([np.float64, np.int64, np.object_] if field != "temperature"
                                     else [np.int64, np.int32, np.object_]))
        base[field] = np.array([b"7" if dtype is np.object_ else 7], dtype=dtype)
    elif kind == "wrong_shape":
        field = draw(st.sampled_from(["text_input", "max_tokens", "stream"]))
        n = draw(st.integers(2, 5))
        base[field] = {"text_input": np.array([b"hi"] * n, dtype=np.object_),
                       "max_tokens": np.ones(n, dtype=np.int32), "stream": np.zeros(n, dtype=bool)}[field]
    if params and "sampling_parameters" not in base:
        base["sampling_parameters"] = json.dumps(params)
    return base, field


def _check(message: str, field: str) -> None:
    assert field in message, (field, message)


@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(case=bad_request(grpc=True))
def test_fuzz_grpc(grpc_stream, case):
    inputs, field = case
    grpc_stream.send("fuzz", **{k: v if not isinstance(v, str) else v for k, v in inputs.items()})
    result, error = grpc_stream.q.get(timeout=60)
    assert error is not None, f"accepted a bad request: {field}"
    _check(str(error), field)
    _drain(grpc_stream)


@settings(max_examples=450, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(case=bad_request(grpc=False))
def test_fuzz_http(http_conn, case):
    inputs, field = case
    body = {k: (v.tolist()[0] if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}
    http_conn.request("POST", "/v2/models/llm/generate", json.dumps(body, allow_nan=True),
                      {"Content-Type": "application/json"})
    resp = http_conn.getresponse()
    payload = json.loads(resp.read())
    assert resp.status >= 400 and "error" in payload, (field, payload)
    _check(payload["error"], field)


def test_server_ready_and_correct_after_fuzzing(server):
    # Runs after the fuzz tests (file order): the server still answers, greedily and correctly.
    out = LLMClient(server.grpc_url).generate(messages=[{"role": "user", "content": "What is the capital of France?"}],
                                              temperature=0, max_tokens=32)
    assert "Paris" in out.text and server.ready()
    assert math.isfinite(len(out.text))


@pytest.fixture(scope="module")
def grpc_stream(server):
    """One stream for every gRPC case, closed after them."""
    stream = Stream(server.grpc_url)
    yield stream
    stream.close()


@pytest.fixture(scope="module")
def http_conn(server):
    """One keep-alive connection for every HTTP case, closed after them: tritonserver waits its whole exit timeout
    for an open HTTP connection before it stops."""
    host, port = server.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    yield conn
    conn.close()


def _drain(stream: Stream) -> None:
    while True:
        try:
            stream.q.get_nowait()
        except queue.Empty:
            return


def test_infer_inputs_helper_roundtrip():
    tensors = infer_inputs(text_input="hi", stream=True)
    assert [t.name() for t in tensors] == ["text_input", "stream"]
