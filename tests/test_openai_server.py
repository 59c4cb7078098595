"""The OpenAI-compatible service in front of the real tritonserver 2.51 and SmolLM2, driven by the official SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from llm_client import AsyncLLMClient, LLMClient
from llm_client.cli import main as llm_cli
from tests.conftest import ROOT, free_port, start_triton
from tests.server_utils import make_repository, metric, wait_for

pytestmark = pytest.mark.server
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 32}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@contextlib.contextmanager
def serve_openai(grpc_url: str, workers: int = 1):
    """`python -m llm_client.openai_server` on a free port, in front of the tritonserver at `grpc_url`."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llm_client.openai_server", "--triton", grpc_url,
                             "--port", str(port), "--log-level", "warning", "--workers", str(workers)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _get(f"{url}/health")[0] == 200, 30), "the OpenAI service did not come up"
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture(scope="module")
def api(server):
    with serve_openai(server.grpc_url) as url:
        yield url


@pytest.fixture(scope="module")
def client(api):
    return openai.OpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0)


def test_sdk_sync_chat_answers_paris_with_usage(client):
    out = client.chat.completions.create(model="llm", messages=QUESTION, **GREEDY)
    choice = out.choices[0]
    assert "Paris" in choice.message.content and choice.message.role == "assistant"
    assert choice.finish_reason == "stop" and out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    u = out.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 32
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_sdk_streaming_equals_non_streamed_and_ends_with_usage(client):
    whole = client.chat.completions.create(model="llm", messages=QUESTION, **GREEDY)
    chunks = list(client.chat.completions.create(model="llm", messages=QUESTION, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and "Paris" in text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # really streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_sdk_async_chat_and_stream(api):
    async def main():
        aclient = openai.AsyncOpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0)
        whole = await aclient.chat.completions.create(model="llm", messages=QUESTION, **GREEDY)
        stream = await aclient.chat.completions.create(model="llm", messages=QUESTION, stream=True, **GREEDY)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await aclient.close()
        return whole.choices[0].message.content, "".join(parts)

    whole, streamed = asyncio.run(main())
    assert "Paris" in whole and streamed == whole


def test_completions_stream_equals_whole_and_logprobs(client):
    kwargs = {"model": "llm", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
    whole = client.completions.create(logprobs=2, **kwargs)
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs))
    assert "Paris" in whole.choices[0].text and streamed == whole.choices[0].text
    lp = whole.choices[0].logprobs
    assert "".join(lp.tokens) == whole.choices[0].text and len(lp.token_logprobs) == whole.usage.completion_tokens
    assert all(len(top) <= 2 and max(top.values()) <= 0 for top in lp.top_logprobs)
    echoed = client.completions.create(echo=True, **kwargs)
    assert echoed.choices[0].text == kwargs["prompt"] + whole.choices[0].text


def test_sdk_n3_with_a_seed_is_reproducible_and_streams_per_choice(client):
    kwargs = {"model": "llm", "messages": QUESTION, "n": 3, "seed": 42, "temperature": 1.0, "max_tokens": 12}
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert [c.message.content for c in again.choices] == texts
    assert all(c.finish_reason in ("stop", "length") for c in first.choices)
    assert first.usage.completion_tokens <= 36 and first.usage.completion_tokens > 12  # counted over the choices
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    streamed = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
                for i in range(3)]
    assert streamed == texts and chunks[-1].usage == first.usage
    ends = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(e.index for e in ends) == [0, 1, 2]  # one finish chunk per choice
    whole = client.completions.create(model="llm", prompt="The sea is", n=2, seed=3, temperature=1.0, max_tokens=6)
    assert [c.index for c in whole.choices] == [0, 1] and whole.choices[0].text != whole.choices[1].text



def test_llm_client_and_cli_expose_every_choice_like_the_sdk(client, server, capsys):
    """LLMClient (gRPC and HTTP, streamed and unary, sync and async) returns all n choices with per-choice finish
    reasons, the same ones the OpenAI front gives for that seed; `llm generate --n` prints them."""
    kwargs = {"n": 3, "seed": 42, "temperature": 1.0, "max_tokens": 12}
    sdk = client.chat.completions.create(model="llm", messages=QUESTION, **kwargs)
    want = [(c.index, c.message.content, c.finish_reason) for c in sdk.choices]
    grpc_client, http_client = LLMClient(server.grpc_url), LLMClient(server.http_url, protocol="http")
    results = [grpc_client.generate(messages=QUESTION, stream=s, **kwargs) for s in (False, True)]
    results += [http_client.generate(messages=QUESTION, stream=s, **kwargs) for s in (False, True)]
    results.append(asyncio.run(AsyncLLMClient(server.grpc_url).generate(messages=QUESTION, stream=True, **kwargs)))
    for r in results:
        assert [(c.index, c.text, c.finish_reason) for c in r.choices] == want
        assert sum(c.num_output_tokens for c in r.choices) == sdk.usage.completion_tokens
        assert (r.text, r.finish_reason, r.num_input_tokens) == (want[0][1], want[0][2], sdk.usage.prompt_tokens)
    assert len(results[1].chunks) > 3 and all(len(c.texts) == 3 for c in results[1].chunks)
    one = grpc_client.generate(messages=QUESTION, max_tokens=4, temperature=0)
    assert len(one.choices) == 1 and one.choices[0].text == one.text and one.finish_reason == "length"
    assert llm_cli(["generate", "--chat", "--url", server.grpc_url, "--n", "3", "--seed", "42", "--temperature",
                    "1.0", "--max-tokens", "12", QUESTION[0]["content"]]) == 0
    out = capsys.readouterr().out
    for index, text, reason in want:
        assert f"--- choice {index} (finish_reason: {reason}, " in out and text in out

BAD = [
    ("chat", {"temperature": 5}, "temperature"),
    ("chat", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ("chat", {"n": 0}, "n"),
    ("chat", {"stop": 5}, "stop"),
    ("chat", {"top_logprobs": 3}, "top_logprobs"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("chat", {"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ("chat", {"extra_body": {"top_k": -5}}, "top_k"),  # checked by the model: its INVALID_ARGUMENT names it
    ("chat", {"stream": True, "extra_body": {"top_k": -5}}, "top_k"),  # before the stream starts: a real 400
    ("chat", {"max_completion_tokens": 0}, "max_completion_tokens"),
    ("completion", {"best_of": 2}, "best_of"),
    ("completion", {"prompt": ["a", "b"]}, "prompt"),
]


@pytest.mark.parametrize("kind,bad,param", BAD, ids=[f"{k}-{p}" for k, _, p in BAD])
def test_bad_input_gets_400_naming_the_param(client, kind, bad, param):
    if kind == "chat":
        call, kwargs = client.chat.completions.create, {"model": "llm", "messages": QUESTION, "max_tokens": 4}
    else:
        call, kwargs = client.completions.create, {"model": "llm", "prompt": "Hello", "max_tokens": 4}
    with pytest.raises(openai.BadRequestError) as info:  # with stream=True too: a status, not an event
        call(**{**kwargs, **bad})
    err = info.value
    assert err.status_code == 400 and err.param == param, err.body
    assert err.type == "invalid_request_error" and err.message


def test_unknown_model_is_404_and_models_lists_llm(client, api):
    assert [m.id for m in client.models.list()] == ["llm"]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nope", messages=QUESTION)
    assert info.value.param == "model" and info.value.code == "model_not_found"
    status, body = _get(f"{api}/v1/nothing")
    assert status == 404 and json.loads(body)["error"]["message"].startswith("Invalid URL")


def test_metrics_count_requests_by_route_and_status(client, api):
    client.chat.completions.create(model="llm", messages=QUESTION, max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="llm", messages=QUESTION, n=0)
    url = f"{api}/metrics"
    assert metric(url, "openai_requests_total", route="/v1/chat/completions", status="200") >= 1
    # counted once its response is sent: the count may trail the answer a moment
    assert wait_for(lambda: metric(url, "openai_requests_total", route="/v1/chat/completions", status="400") >= 1)
    assert metric(url, "openai_request_duration_seconds_count", route="/v1/chat/completions") >= 2
    assert metric(url, "openai_tokens_total", route="/v1/chat/completions", kind="completion") >= 2


def test_two_worker_processes_answer_and_metrics_add_up_across_them(server):
    """--workers 2: both processes serve the port, and /metrics (answered by either) counts every request once."""
    with serve_openai(server.grpc_url, workers=2) as url:
        two = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        texts = [two.completions.create(model="llm", prompt="The capital of France is", max_tokens=3,
                                        temperature=0).choices[0].text for _ in range(6)]
        assert len(set(texts)) == 1 and texts[0]
        # a request is counted once its response is sent, so the last one's count may trail its answer a moment
        assert wait_for(lambda: metric(f"{url}/metrics", "openai_requests_total", route="/v1/completions",
                                       status="200") == 6, 10)
        for _ in range(3):  # whichever process answers the scrape
            assert metric(f"{url}/metrics", "openai_requests_total", route="/v1/completions", status="200") == 6
            assert metric(f"{url}/metrics", "openai_requests_in_flight", route="/v1/completions") == 0


def test_disconnect_mid_stream_cancels_and_frees_kv_blocks(client, api, server):
    before = metric(server.metrics_url, "llm_request_cancellations_total")
    stream = client.chat.completions.create(model="llm", messages=QUESTION, stream=True, max_tokens=2000,
                                            temperature=0, extra_body={"ignore_eos": True})
    got = 0
    try:
        for chunk in stream:
            got += bool(chunk.choices and chunk.choices[0].delta.content)
            if got == 3:
                break
        # still generating (the gauge is exported every 0.1 s, later on a loaded machine)
        assert wait_for(lambda: metric(server.metrics_url, "llm_kv_cache_blocks", state="used") > 0, 10)
    finally:
        stream.close()  # a failure above must not leave a 2,000-token stream running into the next tests
    t0 = time.monotonic()
    assert wait_for(lambda: metric(server.metrics_url, "llm_request_cancellations_total") == before + 1, 10)
    assert wait_for(lambda: metric(server.metrics_url, "llm_kv_cache_blocks", state="used") == 0, 10)
    assert time.monotonic() - t0 < 10
    assert wait_for(lambda: metric(f"{api}/metrics", "openai_client_disconnects_total") >= 1, 5)


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_a_text_event_is_its_chunk_encoded_byte_for_byte(kind):
    """The per-choice template the front streams text with gives the bytes encoding the whole chunk gives."""
    from llm_client.openai_server.schema import parse_chat, parse_completion
    from llm_client.openai_server.streaming import sse
    from llm_client.openai_server.translate import Answer, new_id, text_chunk, text_event
    from llm_client.openai_server.triton import Piece

    body = {"model": "llm", "n": 2, "stream": True, "stream_options": {"include_usage": kind == "chat"}}
    body.update({"messages": QUESTION} if kind == "chat" else {"prompt": "The capital of France is"})
    call = (parse_chat if kind == "chat" else parse_completion)(body)
    answer = Answer(call, new_id(call.kind))
    for texts in (["Par", 'is "\n'], ["\x01\\ \u2028 é\ud83d", ""], ["\u0000", "x"]):
        piece = Piece(texts)
        for i in range(2):
            chunk = text_chunk(answer, piece, i, 0)
            assert text_event(answer, piece, i, 0) == (sse(chunk) if chunk is not None else "")


@pytest.mark.parametrize("body", [
    {"prompt": "The capital of France is", "max_tokens": 8, "stream": True, "logprobs": 2, "n": 2, "seed": 3},
    {"messages": QUESTION, "temperature": 0.5, "stop": ["\n"], "user": "u"},
    {"messages": [{"role": "user", "content": "\ud83d lone surrogate, \u00e9"}], "max_completion_tokens": 4},
])
def test_the_request_message_is_the_one_tritonclient_builds(body):
    """The front builds its gRPC request straight into protobuf: byte for byte what tritonclient's InferInputs and
    request builder give for the same inputs."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc._utils import _get_inference_request
    from tritonclient.utils import np_to_triton_dtype

    from llm_client.client import FLAGS, build_inputs
    from llm_client.openai_server.schema import parse_chat, parse_completion
    from llm_client.openai_server.triton import build_request

    call = (parse_chat if "messages" in body else parse_completion)({"model": "llm", **body})
    flags = FLAGS + (("return_logprobs",) if call.logprobs is not None else ())
    tensors = []
    for name, value in build_inputs(call.prompt, call.messages, call.stream, call.params, flags,
                                    errors="surrogatepass").items():
        tensors.append(grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype)))
        tensors[-1].set_data_from_numpy(value)
    assert all(v.dtype in (np.bool_, np.object_) for v in build_inputs("x", None, True, {}).values())
    expected = _get_inference_request(model_name="llm", inputs=tensors, model_version="", request_id="cmpl-7",
                                      outputs=None, sequence_id=0, sequence_start=False, sequence_end=False,
                                      priority=0, timeout=None, parameters=None)
    assert build_request(call, "cmpl-7", "llm").SerializeToString() == expected.SerializeToString()


def test_overload_maps_to_503_with_retry_after():
    from llm_client.openai_server.errors import from_triton

    err = from_triton("server overloaded: 1024 requests waiting (max_queue_size)")
    response = err.response()
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    bad = from_triton("top_p: must be in (0, 1], got 1.5")
    assert bad.status == 400 and bad.param == "top_p"
    assert from_triton("text_input: the prompt is empty", {"text_input": "prompt"}).param == "prompt"
    assert from_triton("something broke").status == 500


def test_disconnect_while_waiting_for_a_whole_answer_cancels_it(api, server):
    before = metric(server.metrics_url, "llm_request_cancellations_total")
    body = json.dumps({"model": "llm", "messages": QUESTION, "max_tokens": 2000, "ignore_eos": True}).encode()
    host, port = api.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert wait_for(lambda: metric(server.metrics_url, "llm_kv_cache_blocks", state="used") > 0, 10)
    assert wait_for(lambda: metric(server.metrics_url, "llm_request_cancellations_total") == before + 1, 10)
    assert wait_for(lambda: metric(server.metrics_url, "llm_kv_cache_blocks", state="used") == 0, 10)


@pytest.fixture(scope="module")
def small_api(checkpoint, tmp_path_factory):
    """One sequence at a time and one waiting at most, so a third concurrent request finds the queue full."""

    root = tmp_path_factory.mktemp("openai_small")
    repo = make_repository(root / "repo", checkpoint, max_batch_size=1, max_queue_size=1)
    srv = start_triton(repo, root / "server.log")
    try:
        with serve_openai(srv.grpc_url) as url:
            yield url
    finally:
        srv.stop()


def test_full_queue_gets_503_with_retry_after(small_api):
    client = openai.OpenAI(base_url=f"{small_api}/v1", api_key="unused", max_retries=0)
    refused, served = [], []

    def go():
        try:
            stream = client.chat.completions.create(model="llm", messages=QUESTION, stream=True, max_tokens=64,
                                                    extra_body={"ignore_eos": True})
            served.append(sum(1 for _ in stream))
        except openai.APIStatusError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=go) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert refused and served and len(refused) + len(served) == 5
    for exc in refused:
        assert exc.status_code == 503 and exc.response.headers["retry-after"] == "1", exc.body
        assert exc.code == "server_overloaded" and exc.type == "server_error"


def test_workers_auto_is_one_per_four_usable_cores(tmp_path):
    from llm_client.openai_server.cli import auto_workers, cgroup_cpus, workers

    assert [auto_workers(c, None) for c in (1, 2, 7, 8, 16, 64)] == [1, 1, 1, 2, 4, 8]
    assert auto_workers(16, 2.0) == 1 and auto_workers(16, 8.5) == 2  # a container's CPU limit counts
    limit = tmp_path / "cpu.max"
    limit.write_text("200000 100000\n")
    assert cgroup_cpus(limit) == 2.0
    limit.write_text("max 100000\n")
    assert cgroup_cpus(limit) is None and cgroup_cpus(tmp_path / "absent") is None
    assert workers("3") == 3 and workers("auto") >= 1
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="--workers must be 'auto' or at least 1"):
            workers(bad)


def test_a_scrape_skips_a_worker_file_still_empty_and_a_dead_workers_requests_in_flight(tmp_path):
    """A worker creates its metrics file and sizes it a moment later: a scrape in that moment reads the other
    workers' values and skips the empty file (it failed the whole scrape with struct.error: a 500). A worker that
    died mid-request no longer counts as in flight; what it counted stays counted."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from llm_client.openai_server.metrics import WorkerFilesCollector

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    requests = ("openai_requests", "openai_requests_total", ["route", "status"], ["/v1/models", "200"], "requests")
    in_flight = ("openai_requests_in_flight", "openai_requests_in_flight", ["route"], ["/v1/models"], "in flight")
    for name, key, value in ((f"counter_{dead}", requests, 4.0), (f"gauge_livesum_{dead}", in_flight, 2.0),
                             (f"gauge_livesum_{os.getpid()}", in_flight, 1.0)):
        written = MmapedDict(str(tmp_path / f"{name}.db"))
        written.write_value(mmap_key(*key), value, 0.0)
        written.close()
    (tmp_path / "counter_2.db").touch()
    registry = CollectorRegistry()
    WorkerFilesCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    assert 'openai_requests_total{route="/v1/models",status="200"} 4.0' in text
    assert 'openai_requests_in_flight{route="/v1/models"} 1.0' in text
    assert not (tmp_path / f"gauge_livesum_{dead}.db").exists()
