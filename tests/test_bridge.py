"""The service in a child process (`engine_process: true`): same deltas, errors, drain and failure handling as
in-process, across a real process boundary."""

import os
import queue
import signal
import threading
import uuid
from pathlib import Path

import pytest

from llmserve.config import ServingConfig
from llmserve.engine.api import EngineError, Overloaded
from llmserve.engine.sampling_params import InvalidRequest, SamplingParams
from llmserve.serving.api import Delta, GenerateRequest, take_deltas
from llmserve.serving.bridge.client import ServiceProcess
from llmserve.serving.factory import build_service, use_engine_process
from llmserve.serving.metrics import resident_memory_bytes
from tests.conftest import MODEL_DIR
from tests.server_utils import wait_for


class Recorder:
    def __init__(self):
        self.calls = []

    def observe(self, name, value):
        self.calls.append(("observe", name))

    def increment(self, name, value=1.0, labels=None):
        self.calls.append(("increment", name))

    def set(self, name, value, labels=None):
        self.calls.append(("set", name))


def collect(q: queue.SimpleQueue, n: int, timeout: float = 60) -> dict[str, list]:
    """Deltas by request until `n` requests have their final one."""
    got: dict[str, list] = {}
    done = 0
    while done < n:
        d = q.get(timeout=timeout)
        got.setdefault(d.request_id, []).append(d)
        done += d.finished
    return got


def text_of(deltas) -> str:
    return "".join(d.text for d in deltas)


@pytest.fixture
def synthetic(checkpoint):
    def make(**knobs):
        cfg = ServingConfig.of(engine="synthetic", engine_process="true", **knobs)
        return build_service(cfg, MODEL_DIR, sink)

    sink = Recorder()
    made = []
    yield lambda **knobs: made.append(make(**knobs)) or made[-1], sink
    for service in made:
        service.shutdown()


def test_requests_stream_through_the_child_with_metrics_and_stats(synthetic):
    make, sink = synthetic
    service = make(synthetic_step_ms=1.0)
    assert isinstance(service, ServiceProcess) and service.process.pid != os.getpid()
    q: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(5):
        service.submit(GenerateRequest(f"r{i}", SamplingParams(max_tokens=3 + i), prompt="Hello world"), q.put)
    got = collect(q, 5)
    for i in range(5):
        deltas = got[f"r{i}"]
        assert sum(len(d.token_ids) for d in deltas) == 3 + i
        assert [d.finished for d in deltas].count(True) == 1 and deltas[-1].finish_reason == "length"
        assert text_of(deltas).startswith("Hello")
    names = {name for _, name in sink.calls}
    assert {"llm_generation_tokens_total", "llm_time_to_first_token_seconds",
            "llm_request_success_total"} <= names
    assert service.stats().steps >= 7 and service.healthy
    # the leak-watch gauge counts the engine's process too
    assert resident_memory_bytes(service.engine_pid) > 10 * 2**20


def test_errors_keep_their_type_field_and_status_across_the_pipe(synthetic):
    make, _ = synthetic
    service = make(synthetic_step_ms=200.0, max_queue_size=1, max_batch_size=1)
    q: queue.SimpleQueue = queue.SimpleQueue()
    with pytest.raises(InvalidRequest, match="text_input"):  # tokenizing happens in the caller's process
        service.submit(GenerateRequest("empty", SamplingParams(), prompt=""), q.put)
    for rid in ("a", "b", "c"):
        service.submit(GenerateRequest(rid, SamplingParams(max_tokens=2), prompt="Hi"), q.put)
    got = collect(q, 3)
    refused = [deltas[-1] for deltas in got.values() if deltas[-1].finish_reason == "error"]
    assert refused, "a queue of one must refuse one of three requests"
    err = refused[0].error
    assert isinstance(err, Overloaded) and err.status == "UNAVAILABLE"
    assert str(err).count("server overloaded") == 1 and "max_queue_size" in str(err)


def test_abort_and_drain(synthetic):
    make, _ = synthetic
    service = make(synthetic_step_ms=5.0)
    q: queue.SimpleQueue = queue.SimpleQueue()
    service.submit(GenerateRequest("long", SamplingParams(max_tokens=100_000), prompt="Hi"), q.put)
    service.submit(GenerateRequest("cut", SamplingParams(max_tokens=100_000), prompt="Hi"), q.put)
    assert q.get(timeout=30).request_id in ("long", "cut")
    service.abort("cut")
    service.drain(0.0)
    with pytest.raises(EngineError, match="draining") as refused:
        service.submit(GenerateRequest("late", SamplingParams(), prompt="Hi"), q.put)
    assert refused.value.status == "UNAVAILABLE"
    got = collect(q, 2)
    assert got["cut"][-1].finish_reason in ("abort", "error")
    assert got["long"][-1].finish_reason == "error" and got["long"][-1].error.status == "UNAVAILABLE"
    assert "drain period" in str(got["long"][-1].error)


def test_a_child_that_dies_fails_what_is_in_flight_and_turns_unhealthy(synthetic):
    make, _ = synthetic
    service = make(synthetic_step_ms=5.0)
    q: queue.SimpleQueue = queue.SimpleQueue()
    for rid in ("x", "y"):
        service.submit(GenerateRequest(rid, SamplingParams(max_tokens=100_000), prompt="Hi"), q.put)
    q.get(timeout=30)
    os.kill(service.process.pid, signal.SIGKILL)
    got = collect(q, 2)
    for rid in ("x", "y"):
        final = got[rid][-1]
        assert final.finish_reason == "error" and final.error.status == "UNAVAILABLE"
        assert "engine process exited" in str(final.error)
    assert not service.healthy
    with pytest.raises(EngineError, match="not serving"):
        service.submit(GenerateRequest("z", SamplingParams(), prompt="Hi"), q.put)


def test_a_child_that_cannot_start_says_why(checkpoint):
    cfg = ServingConfig.of(device="cpu", engine_process="true", kv_cache_memory_bytes=1)
    with pytest.raises(RuntimeError, match="failed to start") as failed:
        build_service(cfg, MODEL_DIR)
    assert "Traceback" in str(failed.value)


def test_the_torch_engine_gives_the_same_greedy_text_in_a_child(checkpoint):
    prompt = "The capital of France is"
    texts = []
    for where in ("false", "true"):
        service = build_service(ServingConfig.of(device="cpu", engine_process=where), MODEL_DIR)
        try:
            q: queue.SimpleQueue = queue.SimpleQueue()
            service.submit(GenerateRequest("g", SamplingParams(max_tokens=12, temperature=0.0), prompt=prompt),
                           q.put)
            texts.append(text_of(collect(q, 1)["g"]))
        finally:
            service.shutdown()
    assert texts[0] == texts[1] and "Paris" in texts[0]


def test_auto_means_a_child_for_the_torch_engine_on_cuda_only():
    assert not use_engine_process(ServingConfig.of(device="cpu"))
    assert use_engine_process(ServingConfig.of(device="cuda:0"))
    assert not use_engine_process(ServingConfig.of(engine="synthetic", device="cuda:0"))
    assert use_engine_process(ServingConfig.of(engine="synthetic", engine_process="true"))
    assert not use_engine_process(ServingConfig.of(device="cuda", engine_process="false"))


@pytest.mark.server
def test_through_tritonserver_with_more_streams_than_one_cancellation_poll_covers(checkpoint, tmp_path):
    """100 streams on the real server (synthetic engine in a child process): the adapter polls at most 64
    requests for cancellation per period, in turn, so a cancelled request among 100 is still found; the
    abort crosses into the child, and the others keep streaming."""
    from tests.conftest import start_triton
    from tests.server_utils import Stream, make_repository, metric, wait_for

    repo = make_repository(tmp_path / "repo", checkpoint, engine="synthetic", synthetic_step_ms="50",
                           max_batch_size="128", engine_process="true")
    srv = start_triton(repo, tmp_path / "server.log")
    # 50 ms steps keep 100 streams light on a loaded 2-core machine; 8000 tokens are cancelled long before the end
    long = {"max_tokens": 8000, "ignore_eos": True}
    keep, cut = Stream(srv.grpc_url), Stream(srv.grpc_url)
    try:
        for i in range(90):
            keep.send(f"k{i}", text_input="Tell me a story.", stream=True, sampling_parameters=long)
        for i in range(10):
            cut.send(f"c{i}", text_input="Tell me a story.", stream=True, sampling_parameters=long)
        assert wait_for(lambda: metric(srv.metrics_url, "llm_requests_running") == 100, 30)
        before = metric(srv.metrics_url, "llm_request_cancellations_total")
        cut.close(cancel=True)
        assert wait_for(lambda: metric(srv.metrics_url, "llm_request_cancellations_total") == before + 10, 20)
        assert wait_for(lambda: metric(srv.metrics_url, "llm_requests_running") == 90, 10)  # a later flush
        keep.close(cancel=True)
        assert wait_for(lambda: metric(srv.metrics_url, "llm_requests_running") == 0, 30)
    finally:
        srv.stop()


def test_take_deltas_takes_what_is_queued_and_sees_the_end_marker():
    q: queue.SimpleQueue = queue.SimpleQueue()
    assert take_deltas(q, timeout=0.01) == ([], False)
    a, b = Delta("a", "x", [1], 1), Delta("b", "y", [2], 1)
    q.put(a)
    q.put(b)
    assert take_deltas(q) == ([a, b], False)
    q.put(a)
    q.put(None)
    q.put(b)  # after the end marker: left for nobody
    assert take_deltas(q) == ([a], True)


# -- one engine process shared by several clients (a model's instances on one device) ---------------------------
def _shared(n: int, **knobs) -> list[ServiceProcess]:
    cfg = ServingConfig.of(engine="synthetic", engine_process="true", **knobs)
    key = f"test-{uuid.uuid4().hex}"
    return [build_service(cfg, MODEL_DIR, share_key=key) for _ in range(n)]


def test_clients_with_one_share_key_use_one_engine_and_keep_their_own_request_ids(checkpoint):
    a, b = _shared(2, synthetic_step_ms=5.0)
    try:
        assert a.engine_pid == b.engine_pid and a.process is not None and b.process is None
        qa, qb = queue.SimpleQueue(), queue.SimpleQueue()
        for service, q in ((a, qa), (b, qb)):  # the same ids from both clients
            service.submit(GenerateRequest("same", SamplingParams(max_tokens=4), prompt="Hello world"), q.put)
            service.submit(GenerateRequest("long", SamplingParams(max_tokens=100_000), prompt="Hi"), q.put)
        for q in (qa, qb):
            same = collect(q, 1)["same"]
            assert sum(len(d.token_ids) for d in same) == 4 and same[-1].finish_reason == "length"
        b.shutdown()  # b leaves: its running request ends with UNAVAILABLE, a's go on
        rest = collect(qb, 1)
        assert rest["long"][-1].finish_reason == "error" and rest["long"][-1].error.status == "UNAVAILABLE"
        assert a.healthy and a.process.poll() is None
        a.submit(GenerateRequest("after", SamplingParams(max_tokens=3), prompt="Hi"), qa.put)
        after = {}
        while "after" not in after or not after["after"][-1].finished:
            d = qa.get(timeout=30)
            after.setdefault(d.request_id, []).append(d)
        assert sum(len(d.token_ids) for d in after["after"]) == 3
        assert "long" in after and not after["long"][-1].finished  # a's long request is still streaming
        # the leak-watch total: the engine's resident memory and its remaining client's (this process)
        assert wait_for(lambda: a.resident_memory_bytes() > resident_memory_bytes(a.engine_pid))
    finally:
        a.shutdown()  # the last client: the engine exits before shutdown returns
    assert a.process.poll() is not None


def test_clients_that_start_at_once_still_share_one_engine(checkpoint):
    cfg = ServingConfig.of(engine="synthetic", engine_process="true")
    key = f"test-{uuid.uuid4().hex}"
    made: list = []
    threads = [threading.Thread(target=lambda: made.append(build_service(cfg, MODEL_DIR, share_key=key)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len(made) == 3 and len({s.engine_pid for s in made}) == 1
        assert sum(s.process is not None for s in made) == 1  # a second starter's engine left at bind
    finally:
        for s in made:
            s.shutdown()


def test_a_shared_engine_that_dies_fails_every_client(checkpoint):
    a, b = _shared(2, synthetic_step_ms=5.0)
    qa, qb = queue.SimpleQueue(), queue.SimpleQueue()
    try:
        a.submit(GenerateRequest("x", SamplingParams(max_tokens=100_000), prompt="Hi"), qa.put)
        b.submit(GenerateRequest("y", SamplingParams(max_tokens=100_000), prompt="Hi"), qb.put)
        qa.get(timeout=30), qb.get(timeout=30)
        os.kill(a.engine_pid, signal.SIGKILL)
        for q, rid in ((qa, "x"), (qb, "y")):
            final = collect(q, 1)[rid][-1]
            assert final.finish_reason == "error" and "engine process exited" in str(final.error)
        assert not a.healthy and not b.healthy
    finally:
        a.shutdown()
        b.shutdown()


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process under `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            out.append((child, cmd))
            todo.append(child)
    return out


@pytest.mark.server
def test_two_triton_instances_share_one_engine_process(checkpoint, tmp_path):
    """instance_group count 2 with engine_process on: two stubs, one engine; every request is answered once,
    and the engine's metric calls are counted once whichever stub reports them."""
    from tests.conftest import start_triton
    from tests.server_utils import Stream, make_repository, metric, wait_for

    repo = make_repository(tmp_path / "repo", checkpoint, instances=2, engine="synthetic",
                           synthetic_step_ms="10", engine_process="true")
    srv = start_triton(repo, tmp_path / "server.log")
    try:
        tree = _descendants(srv.process.pid)
        assert sum("triton_python_backend_stub" in cmd for _, cmd in tree) == 2
        assert sum("llmserve.serving.bridge.server" in cmd for _, cmd in tree) == 1
        before = metric(srv.metrics_url, "llm_request_success_total")
        tokens_before = metric(srv.metrics_url, "llm_generation_tokens_total")
        stream = Stream(srv.grpc_url)
        try:
            ids = [f"r{i}" for i in range(24)]
            for rid in ids:
                stream.send(rid, text_input="Tell me a story.", stream=True,
                            sampling_parameters={"max_tokens": 5, "ignore_eos": True})
            got = stream.collect(set(ids), 60)
        finally:
            stream.close()
        assert all([final for _, _, final in got[rid]].count(True) == 1 for rid in ids), got
        assert wait_for(lambda: metric(srv.metrics_url, "llm_request_success_total") == before + 24, 10)
        assert metric(srv.metrics_url, "llm_generation_tokens_total") == tokens_before + 24 * 5
    finally:
        assert srv.stop() == 0
    assert not any("llmserve.serving.bridge.server" in cmd for _, cmd in _descendants(os.getpid()))


def test_a_frozen_heap_waits_longer_between_full_collections():
    """freeze_heap in a fresh interpreter (it changes the whole process's collector): young and middle thresholds
    kept, full collections every FULL_COLLECTION_SWEEPS middle sweeps, the heap frozen."""
    import subprocess
    import sys

    code = ("import gc; from llmserve.serving.bridge.server import FULL_COLLECTION_SWEEPS, freeze_heap; "
            "before = gc.get_threshold(); freeze_heap(); after = gc.get_threshold(); "
            "print(before[:2] == after[:2], after[2] == FULL_COLLECTION_SWEEPS > before[2], gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "True", "True"]
