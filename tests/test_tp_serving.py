"""Tensor-parallel serving on the CPU over gloo: rank 0 in this process, workers it starts (issue 19, step 1).

The model is a tiny random Llama with SmolLM2's tokenizer (SmolLM2-135M's 9 heads do not split in two); its
weights are spread wide so greedy decoding has no near-ties for the shards' summation order to flip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import OrderedDict
from pathlib import Path

import psutil
import pytest
import torch

from llmserve.config import ConfigError, ServingConfig
from llmserve.engine.api import EngineRequest, FinishReason
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.torch_engine import TorchEngine
from llmserve.serving.api import GenerateRequest
from llmserve.serving.service import LLMService
from llmserve.serving.tokenizer import Tokenizer
from tests.conftest import ROOT

PROMPTS = [[5, 17, 99, 3, 42, 7, 8], [11, 12, 13], list(range(20, 60)), list(range(20, 50)) + [7, 7]]
KNOBS = dict(device="cpu", dtype="float32", kv_block_size=4, max_num_tokens=16, kv_cache_memory_bytes=1 << 22)
WORKER_MODULE = "llmserve.engine.parallel.worker"


def tiny_llama(checkpoint: Path | None, path: Path, layers: int, hidden: int = 64) -> Path:
    """A random Llama of `layers` layers (4 heads, 2 KV heads), its weights spread wide so that greedy decoding has
    no near-ties, beside the tokenizer files of `checkpoint` (SmolLM2's; None: none, for engines fed token ids)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja") if checkpoint else ():
        if (checkpoint / name).exists():
            shutil.copy(checkpoint / name, path / name)
    return path


def check_cancel_frees_kv_on_every_rank(single: TorchEngine, engine: TorchEngine) -> None:
    """A cancelled stream's blocks all return; the same prompt again takes its prefix from the freed blocks'
    cached K/V on every rank, and another prompt takes blocks that held the cancelled K/V and must overwrite
    them on every rank: both answer as the single-process engine does."""
    prompt = list(range(100, 140))
    engine.add_request(greedy("long", prompt, n=500))
    got = []
    while len(got) < 5:
        got += [t for o in engine.step() for t in o.new_token_ids]
    engine.abort("long")
    ends = [o for o in engine.step() if o.request_id == "long"]
    assert ends and ends[-1].finish_reason == FinishReason.ABORT
    assert not engine.has_work() and engine.blocks.num_free == engine.blocks.num_blocks
    after = [greedy("again", prompt), greedy("other", list(range(300, 345)))]
    assert run(engine, after) == run(single, [greedy("again", prompt), greedy("other", list(range(300, 345)))])
    assert engine.blocks.hit_blocks > 0


@pytest.fixture(scope="module")
def tiny(checkpoint, tmp_path_factory):
    return tiny_llama(checkpoint, tmp_path_factory.mktemp("tp") / "tiny", 2)


def greedy(rid: str, ids: list[int], n: int = 12) -> EngineRequest:
    return EngineRequest(rid, ids, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))


def run(engine: TorchEngine, requests: list[EngineRequest]) -> dict[str, list[int]]:
    out = {r.request_id: [] for r in requests}
    for r in requests:
        engine.add_request(r)
    while engine.has_work():
        for o in engine.step():
            out[o.request_id] += o.new_token_ids
    return out


def worker_procs(marker: str) -> list[psutil.Process]:
    """Live worker processes whose command line mentions `marker` (zombies count as gone)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if WORKER_MODULE in cmd and marker in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def wait_until(predicate, timeout: float) -> float:
    """Seconds until `predicate()` held; fails the test past `timeout`."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def single(tiny):
    engine = TorchEngine(ServingConfig.of(**KNOBS), tiny)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="class")
def tp2(tiny):
    """Class-scoped: a process holds one tensor-parallel engine at a time (torch.distributed's default group)."""
    engine = TorchEngine(ServingConfig.of(**KNOBS, tensor_parallel_size=2), tiny)
    yield engine
    engine.shutdown()


class TestTwoRanks:
    def test_tp2_greedy_tokens_equal_the_single_process_engine(self, single, tp2):
        assert tp2.runner.kv_cache.shape[-2] == single.runner.kv_cache.shape[-2] // 2  # rank 0 caches its KV heads
        # Rank 0's block manager hands out blocks in reverse: were any rank addressing its cache by anything but
        # rank 0's tables, its K/V would land elsewhere and the tokens would differ.
        tp2.blocks.free = OrderedDict((b, None) for b in reversed(tp2.blocks.free))
        reqs = [greedy(str(i), p) for i, p in enumerate(PROMPTS)]  # 40-token prompts: chunked prefill over 3 steps
        expected = run(single, reqs)
        assert run(tp2, [greedy(str(i), p) for i, p in enumerate(PROMPTS)]) == expected
        assert all(len(t) == 12 for t in expected.values())


    def test_a_cancelled_stream_frees_its_kv_and_its_blocks_serve_the_next_request(self, single, tp2):
        check_cancel_frees_kv_on_every_rank(single, tp2)

    def test_last_an_idle_engine_whose_worker_dies_turns_unhealthy(self, tiny, tp2):
        """Last in the class: it ends the class's engine. No request runs, yet the service learns of it."""
        service = LLMService(tp2, Tokenizer(tiny)).start()
        try:
            assert service.healthy
            os.kill(tp2.runner.tp.pids[0], signal.SIGKILL)
            wait_until(lambda: not service.healthy, 10)
        finally:
            service.shutdown()
        assert not worker_procs(str(tiny))


def test_a_killed_worker_fails_in_flight_requests_unavailable_and_the_engine_unhealthy(tiny):
    engine = TorchEngine(ServingConfig.of(**KNOBS, tensor_parallel_size=2), tiny)
    service = LLMService(engine, Tokenizer(tiny)).start()
    deltas, final = [], threading.Event()

    def callback(delta):
        deltas.append(delta)
        if delta.finished:
            final.set()

    try:
        params = SamplingParams(temperature=0, max_tokens=4000, ignore_eos=True)
        service.submit(GenerateRequest("r", params, prompt_token_ids=[5, 6, 7]), callback)
        wait_until(lambda: len(deltas) >= 3, 30)
        (pid,) = engine.runner.tp.pids
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert final.wait(10), "no final response within 10 s of the kill"
        assert time.monotonic() - killed < 10 and not service.healthy
        last = deltas[-1]
        assert last.finish_reason == FinishReason.ERROR and last.error.status == "UNAVAILABLE"
        assert "tensor-parallel group lost" in str(last.error)
        assert sum(d.finished for d in deltas) == 1
    finally:
        service.shutdown()
    assert not worker_procs(str(tiny))


def test_workers_exit_with_their_parent(tiny):
    """Rank 0's process killed outright (no shutdown, no pipe closed by us): its workers exit on their own."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from llmserve.config import ServingConfig
        from llmserve.engine.torch_engine import TorchEngine
        engine = TorchEngine(ServingConfig.of(**{KNOBS!r}, tensor_parallel_size=2), Path(sys.argv[1]))
        print(*engine.runner.tp.pids, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tiny)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        pids = [int(x) for x in proc.stdout.readline().split()]
        assert pids and all(psutil.pid_exists(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                               for p in pids), 5)


def test_a_layout_that_cannot_be_served_is_refused_naming_the_knob(tiny):
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        ServingConfig.of(tensor_parallel_size=0)
    with pytest.raises(ConfigError, match="tensor_parallel_size: 3 does not divide"):
        TorchEngine(ServingConfig.of(**KNOBS, tensor_parallel_size=3), tiny)
    assert not worker_procs(str(tiny))


@pytest.mark.server
def test_through_tritonserver_16_streams_each_get_one_final_and_a_killed_worker_unloads_the_model(tiny, tmp_path):
    from tests.conftest import start_triton
    from tests.server_utils import Stream, make_repository, wait_for

    repo = make_repository(tmp_path / "repo", tiny, tensor_parallel_size=2, device="cpu", kv_block_size=4)
    srv = start_triton(repo, tmp_path / "server.log", timeout=180)
    marker = str(repo)
    try:
        assert len(worker_procs(marker)) == 1
        stream = Stream(srv.grpc_url)
        ids = {f"s{i}" for i in range(16)}
        for rid in sorted(ids):
            stream.send(rid, text_input=f"Tell me about the number {rid[1:]}.", stream=True,
                        sampling_parameters={"max_tokens": 16, "ignore_eos": True, "temperature": 0})
        got = stream.collect(ids, timeout=120)
        for rid in ids:
            assert [r for r in got[rid] if r[0] == "error"] == [], got[rid]
            assert sum(final for _, _, final in got[rid]) == 1
            assert "".join(piece or "" for kind, piece, _ in got[rid])
        # A worker killed under a running stream: that stream ends with UNAVAILABLE and the model unloads.
        stream.send("long", text_input="Count.", stream=True,
                    sampling_parameters={"max_tokens": 3000, "ignore_eos": True, "temperature": 0})
        assert wait_for(lambda: not stream.q.empty(), 30)
        worker_procs(marker)[0].kill()
        killed = time.monotonic()
        got = stream.collect({"long"}, timeout=10, linger=0)
        errors = [r for r in got.get("long", []) + got.get("?", []) if r[0] == "error"]
        # A gRPC stream's error carries no status code to the client; the service-level test above checks that
        # it is UNAVAILABLE.
        assert errors and "tensor-parallel group lost" in errors[-1][1]
        assert wait_for(lambda: not srv.ready(), 10 - (time.monotonic() - killed))
        stream.close()
    finally:
        srv.stop()
    assert wait_for(lambda: not worker_procs(marker), 5)


@pytest.mark.server
@pytest.mark.slow
def test_two_replicas_of_tp2_in_one_tritonserver_serve_side_by_side(tiny, tmp_path):
    """Item 3 on the CPU: two model instances (each a stub with its own engine here, as a KIND_GPU instance per
    GPU is on a GPU machine), each rank 0 of its own TP2 group. Both groups are up at once, every request gets one
    final, the same greedy prompt gets the same text from whichever replica, and stopping leaves no worker."""
    from llmserve.launch.layout import check_repository
    from tests.conftest import start_triton
    from tests.server_utils import Stream, make_repository

    repo = make_repository(tmp_path / "repo", tiny, instances=2, tensor_parallel_size=2, device="cpu",
                           kv_block_size=4)
    assert check_repository(repo, 0) == ["llm: engine pytorch, no GPU layout to check"]
    srv = start_triton(repo, tmp_path / "server.log", timeout=240)
    marker = str(repo)
    try:
        workers = worker_procs(marker)
        assert len(workers) == 2 and len({w.ppid() for w in workers}) == 2  # one group per replica
        stream = Stream(srv.grpc_url)
        ids = {f"r{i}" for i in range(12)}
        for rid in sorted(ids):
            stream.send(rid, text_input=f"Tell me about the number {int(rid[1:]) % 3}.", stream=True,
                        sampling_parameters={"max_tokens": 12, "ignore_eos": True, "temperature": 0})
        got = stream.collect(ids, timeout=180)
        stream.close()
        texts: dict[int, set[str]] = {}
        for rid in ids:
            assert [r for r in got[rid] if r[0] == "error"] == [], got[rid]
            assert sum(final for _, _, final in got[rid]) == 1
            texts.setdefault(int(rid[1:]) % 3, set()).add("".join(piece or "" for _, piece, _ in got[rid]))
        assert all(len(t) == 1 and next(iter(t)) for t in texts.values()), texts
    finally:
        srv.stop()
    deadline = time.monotonic() + 5
    while worker_procs(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not worker_procs(marker)
