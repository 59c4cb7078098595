"""End to end through the real tritonserver 2.51 with the Python backend and the embedded SmolLM2."""

import json
import threading
import time
import urllib.request

import pytest

from llm_client import AsyncLLMClient, LLMClient, RequestError, ServerUnreachable
from tests.server_utils import Stream, metric, metrics, wait_for

pytestmark = pytest.mark.server
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 32}


def kv_all_free(server) -> bool:
    used = metric(server.metrics_url, "llm_kv_cache_blocks", state="used")
    free = metric(server.metrics_url, "llm_kv_cache_blocks", state="free")
    return used == 0 and free > 0


def test_grpc_streaming_and_http_generate_answer_paris(server):
    grpc = LLMClient(server.grpc_url)
    streamed = grpc.generate(messages=QUESTION, stream=True, **GREEDY)
    assert "Paris" in streamed.text
    assert len(streamed.chunks) > 3  # really streamed, token by token
    unary = grpc.generate(messages=QUESTION, stream=False, **GREEDY)
    http = LLMClient(server.http_url, protocol="http").generate(messages=QUESTION, **GREEDY)
    http_stream = LLMClient(server.http_url, protocol="http").generate(messages=QUESTION, stream=True, **GREEDY)
    assert streamed.text == unary.text == http.text == http_stream.text
    assert unary.finish_reason == "stop" and unary.num_output_tokens == streamed.num_output_tokens > 0


def test_plain_generate_endpoint_json(server):
    body = {"text_input": "The capital of France is", "max_tokens": 8, "temperature": 0,
            "return_num_input_tokens": True, "return_finish_reason": True}
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/llm/generate", json.dumps(body).encode())
    out = json.loads(urllib.request.urlopen(req).read())
    assert "Paris" in out["text_output"]
    assert not out["text_output"].startswith("The capital")  # the prompt is not echoed by default
    assert out["finish_reason"] in ("length", "stop") and out["num_input_tokens"] > 3


def test_16_concurrent_streams_each_get_exactly_one_final(server):
    stream = Stream(server.grpc_url)
    ids = {f"r{i}" for i in range(16)}
    prompts = ["Count to five.", "Name a color.", "Say hello.", "What is 2+2?"]
    try:
        for i, rid in enumerate(sorted(ids)):
            stream.send(rid, text_input=prompts[i % 4], stream=True,
                        sampling_parameters={"temperature": 0.7, "max_tokens": 8 + i, "seed": i})
        got = stream.collect(ids, linger=1.5)
    finally:
        stream.close()
    assert set(got) == ids
    for rid, responses in got.items():
        finals = [r for r in responses if r[2]]
        assert len(finals) == 1 and responses[-1][2], rid
        assert all(kind == "data" for kind, _, _ in responses)
    assert wait_for(lambda: kv_all_free(server))


def test_seeded_sampling_reproducible(server):
    client = LLMClient(server.grpc_url)
    p = {"temperature": 1.0, "top_p": 0.9, "seed": 42, "max_tokens": 24}
    a = client.generate(messages=QUESTION, **p).text
    b = client.generate(messages=QUESTION, stream=True, **p).text
    c = client.generate(messages=QUESTION, **{**p, "seed": 43}).text
    assert a == b and a != c


def test_stop_string_ends_with_finish_reason_stop(server):
    client = LLMClient(server.grpc_url)
    full = client.generate(messages=QUESTION, **GREEDY).text
    assert " is " in full
    cut = client.generate(messages=QUESTION, stop=[" is "], **GREEDY)
    assert cut.finish_reason == "stop"
    assert cut.text == full.split(" is ")[0]
    streamed = client.generate(messages=QUESTION, stop=[" is "], stream=True, **GREEDY)
    assert streamed.text == cut.text and streamed.finish_reason == "stop"


def test_cancelling_a_stream_frees_its_blocks(server):
    before = metric(server.metrics_url, "llm_request_cancellations_total")
    stream = Stream(server.grpc_url)
    stream.send("long", text_input="Tell me a very long story.", stream=True,
                sampling_parameters={"max_tokens": 2000, "ignore_eos": True, "temperature": 0})
    seen = 0
    while seen < 3:
        result, error = stream.q.get(timeout=60)
        assert error is None
        seen += 1
    assert metric(server.metrics_url, "llm_kv_cache_blocks", state="used") > 0 or seen
    stream.close(cancel=True)
    assert wait_for(lambda: metric(server.metrics_url, "llm_request_cancellations_total") == before + 1, 10)
    assert wait_for(lambda: kv_all_free(server), 10)


@pytest.mark.parametrize("kwargs, field", [
    ({"prompt": "hi", "bogus_key": 1}, "bogus_key"),
    ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "hi", "top_p": 1.5}, "top_p"),
    ({"prompt": "hi", "temperature": "hot"}, "temperature"),
    ({"prompt": ""}, "text_input"),
    ({"prompt": "word " * 9000}, "text_input"),
])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_input_gets_a_per_request_error_naming_the_field(server, kwargs, field, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with pytest.raises(RequestError) as info:
        LLMClient(url, protocol=protocol).generate(**kwargs)
    assert field in str(info.value)
    # The server keeps serving.
    assert "Paris" in LLMClient(server.grpc_url).generate(messages=QUESTION, **GREEDY).text


def test_non_json_sampling_parameters(server):
    stream = Stream(server.grpc_url)
    try:
        stream.send("bad", text_input="hi", sampling_parameters="{not json")
        result, error = stream.q.get(timeout=30)
    finally:
        stream.close()
    assert error is not None and "sampling_parameters" in str(error) and "JSON" in str(error)


def test_asyncio_client(server):
    import asyncio

    async def go():
        client = AsyncLLMClient(server.grpc_url)
        return await asyncio.gather(*(client.generate(messages=QUESTION, stream=True, **GREEDY) for _ in range(3)))

    results = asyncio.run(go())
    assert len({r.text for r in results}) == 1 and "Paris" in results[0].text


def test_unreachable_server_message():
    with pytest.raises(ServerUnreachable, match="llmserve.launch serve"):
        LLMClient("localhost:9", protocol="http").generate("hi")
    with pytest.raises(ServerUnreachable, match="Is it running"):
        LLMClient("localhost:9").generate("hi")


def test_metrics_move_under_load(server):
    url = server.metrics_url
    names = ["llm_time_to_first_token_seconds_count", "llm_time_per_output_token_seconds_count",
             "llm_e2e_request_latency_seconds_count", "llm_prompt_tokens_total", "llm_generation_tokens_total",
             "llm_prefix_cache_queries_total", "llm_response_repetition_ratio_count"]
    before = {n: metric(url, n) for n in names}
    running_seen = []

    kv_used_seen = []

    def watch():
        for _ in range(100):
            running_seen.append(metric(url, "llm_requests_running"))
            kv_used_seen.append(metric(url, "llm_kv_cache_blocks", state="used"))
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    threads = [threading.Thread(target=LLMClient(server.grpc_url).generate,
                                kwargs={"messages": QUESTION, "stream": True, "max_tokens": 24, "temperature": 0})
               for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    t.join()
    after = {n: metric(url, n) for n in names}
    for n in names:
        assert after[n] > before[n], n
    assert max(running_seen) >= 1 and max(kv_used_seen) > 0
    exposed = metrics(url)
    from llmserve.serving.metrics import COUNTERS, GAUGES, HISTOGRAMS

    for family in list(COUNTERS) + list(GAUGES) + [h + "_count" for h in HISTOGRAMS]:
        if family in ("llm_request_failures_total", "llm_request_cancellations_total"):
            continue  # labelled by reason / moved by other tests; present once something failed
        assert any(k == family or k.startswith(family + "{") for k in exposed), family
    assert metric(url, "llm_prefix_cache_hits_total") > 0  # the same chat prompt four times
