"""Nothing lost under overload, faults, cancellation and shutdown (against the real server)."""

import http.client
import json
import threading
import time

import pytest

from llm_client import LLMClient, RequestError
from llmserve.launch.tritonserver import ServerError, TritonServer
from tests.conftest import free_port, start_triton
from tests.server_utils import Stream, make_repository, metric, wait_for

pytestmark = pytest.mark.server
LONG = {"max_tokens": 48, "ignore_eos": True, "temperature": 0}
FAULT_WORD = " Xylophone"


@pytest.fixture(scope="module")
def fault_token(tokenizer):
    return tokenizer.backend.encode(FAULT_WORD, add_special_tokens=False).ids[0]


@pytest.fixture(scope="module")
def small_server(checkpoint, fault_token, tmp_path_factory):
    """Two sequences at a time, two waiting at most, a fault that fires on one token, and prompts logged."""
    root = tmp_path_factory.mktemp("small")
    repo = make_repository(root / "repo", checkpoint, max_batch_size=2, max_queue_size=2,
                           fault_injection=f"fail_on_token:{fault_token}", log_prompts="true")
    srv = start_triton(repo, root / "server.log")
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
    # metric calls reach tritonserver every 0.1 s (the adapter's housekeeping thread): wait for the flush
    assert wait_for(lambda: metric(small_server.metrics_url, "llm_request_failures_total", reason="internal") >= 1)
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


def test_a_test_server_that_loses_its_port_starts_again_on_fresh_ports(checkpoint, tmp_path, monkeypatch):
    """free_port() lets each port go before tritonserver binds it, so the other xdist worker can take one in between
    (a start failed so once): start_triton tries fresh ports. Here the first port is held by a listener."""
    import socket

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    first = [port]
    monkeypatch.setitem(start_triton.__globals__, "free_port", lambda: first.pop() if first else free_port())
    repo = make_repository(tmp_path / "repo", checkpoint, engine="synthetic")
    try:
        srv = start_triton(repo, tmp_path / "server.log", timeout=120)
    finally:
        held.close()
    try:
        assert not first and srv.http_port != port and srv.ready()
    finally:
        srv.stop()


@pytest.mark.parametrize("how", ["stop", "wrap-sigterm"])
def test_shutdown_with_requests_in_flight_gives_each_a_final_error(checkpoint, tmp_path, how):
    """`TritonServer.stop`, `serve` on Ctrl-C / SIGTERM and `wrap` on SIGTERM (the GPU containers' entry point)
    drain the model before tritonserver hears of it: with no grace period, every running request ends with a
    final UNAVAILABLE error that reaches its client, and the server then exits cleanly instead of waiting
    for --exit-timeout-secs and aborting."""
    import signal
    import subprocess
    import sys

    from llmserve.launch.tritonserver import server_env

    repo = make_repository(tmp_path / "repo", checkpoint)
    srv = TritonServer(repo, free_port(), free_port(), free_port(), log_path=tmp_path / "server.log",
                       extra_args=("--exit-timeout-secs=30",))
    if how == "stop":
        srv.start()

        def stop():
            return srv.stop(timeout=20, drain_s=0)
    else:
        log = open(tmp_path / "server.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "llmserve.launch", "wrap", "--drain-seconds", "0", "--",
                                 *srv.command()], env=server_env(), stdout=log, stderr=subprocess.STDOUT)
        assert wait_for(srv.ready, 120)

        def stop():
            proc.send_signal(signal.SIGTERM)
            return proc.wait(30)
    try:
        stream = Stream(srv.grpc_url)
        ids = {"s0", "s1", "s2"}
        for rid in sorted(ids):
            stream.send(rid, text_input="Tell me a very long story.", stream=True,
                        sampling_parameters={"max_tokens": 4000, "ignore_eos": True})
        assert wait_for(lambda: metric(srv.metrics_url, "llm_requests_running") == 3, 30)
        t0 = time.monotonic()
        result = {}
        stopper = threading.Thread(target=lambda: result.update(code=stop()))
        stopper.start()
        got = stream.collect(ids, timeout=15, linger=0.2)
        stream.close()
        stopper.join()
        code, elapsed = result["code"], time.monotonic() - t0
        # One final error each (gRPC stream errors carry no request id); after them, the stream itself ends.
        errors = [r[1] for r in got.get("?", []) if "shutting down" in r[1] and "drain period" in r[1]]
        assert len(errors) == len(ids), got
        assert all(not any(r[2] for r in got[rid]) for rid in ids)  # and no other final
        assert code == 0 and elapsed < 15, (code, elapsed)
    finally:  # a failed assertion must not leave the server serving its 4000-token requests
        if how == "stop":
            srv.stop(timeout=20)
        elif proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def test_drain_lets_running_requests_finish_and_refuses_new_ones(checkpoint, tmp_path):
    """The preStop path: `python -m llmserve.launch drain --drain-seconds N` on a running server. Requests already
    running finish normally inside the grace period; a new one gets UNAVAILABLE so a client or load balancer
    goes elsewhere; the command returns once the model has drained."""
    import subprocess
    import sys

    repo = make_repository(tmp_path / "repo", checkpoint)
    srv = start_triton(repo, tmp_path / "server.log")
    try:
        stream = Stream(srv.grpc_url)
        ids = {"d0", "d1"}
        for rid in sorted(ids):
            stream.send(rid, text_input="Count to twenty.", stream=True,
                        sampling_parameters={"max_tokens": 24, "ignore_eos": True, "temperature": 0})
        assert wait_for(lambda: metric(srv.metrics_url, "llm_requests_running") == 2, 30)
        drain = subprocess.Popen([sys.executable, "-m", "llmserve.launch", "drain", "--drain-seconds", "120",
                                  "--control-dir", str(srv.control_dir)], stdout=subprocess.PIPE, text=True)
        got = stream.collect(ids, timeout=120, linger=0.2)
        assert all(got[rid] and got[rid][-1][0] == "data" and got[rid][-1][2] for rid in ids), got
        out, _ = drain.communicate(timeout=30)
        assert drain.returncode == 0 and "drained" in out
        with pytest.raises(RequestError) as exc:
            LLMClient(srv.grpc_url, retries=0).generate("Hello", max_tokens=2)
        assert "shutting down (draining)" in str(exc.value) and exc.value.retryable
        stream.close()
    finally:
        t0 = time.monotonic()
        code = srv.stop(timeout=20, drain_s=0)
    assert code == 0 and time.monotonic() - t0 < 15


def test_prompt_text_stays_out_of_the_log(server):
    marker = "PURPLE-ELEPHANT-4471"
    LLMClient(server.grpc_url).generate(f"Repeat {marker}", max_tokens=4)
    with pytest.raises(RequestError):
        LLMClient(server.grpc_url).generate(f"{marker}", max_tokens=-1)
    log = server.log_path.read_text(errors="replace")
    assert marker not in log


def test_log_prompts_puts_the_prompt_in_the_log(small_server):
    marker = "ORANGE-GIRAFFE-9023"
    LLMClient(small_server.grpc_url, retries=12, backoff_s=0.2).generate(f"Repeat {marker}", max_tokens=2)
    assert wait_for(lambda: marker in small_server.log_path.read_text(errors="replace"))


@pytest.mark.parametrize("engine_process", ["false", "true"])
def test_a_dead_engine_unloads_the_model_so_readiness_tells_the_truth(checkpoint, fault_token, tmp_path,
                                                                     engine_process):
    import urllib.error
    import urllib.request

    repo = make_repository(tmp_path / "repo", checkpoint, fault_injection=f"crash_on_token:{fault_token}",
                           engine_process=engine_process)
    srv = start_triton(repo, tmp_path / "server.log")
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
