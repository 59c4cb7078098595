"""genai-perf in chat mode (its OpenAI service kind) runs a short load through the OpenAI front, in front of the
real tritonserver and SmolLM2 on the CPU, and its report is parsed (issue 20, "Must show"); the front's overhead
bench (bench/openai_overhead.py) runs end to end at a toy size."""

from __future__ import annotations

import json

import pytest

from llm_client import loadgen, loadgen_openai
from llm_client.validate import default_tokenizer_dir
from tests.conftest import free_port
from tests.server_utils import metric
from tests.test_openai_server import serve_openai

pytestmark = pytest.mark.server
CHAT = "/v1/chat/completions"


def test_genai_perf_chat_load_through_the_front(server, tmp_path):
    with serve_openai(server.grpc_url) as url:
        before = metric(f"{url}/metrics", "openai_requests_total", route=CHAT, status="200")
        argv, env = loadgen_openai.chat_cmd("llm", url, default_tokenizer_dir(), concurrency=2, request_count=6,
                                            input_tokens_mean=32, output_tokens_mean=16,
                                            artifact_dir=tmp_path / "gp")
        loadgen.run_genai_perf(argv, env, tmp_path / "gp", tmp_path / "genai.log", 300)  # raises on a failure
        answered = metric(f"{url}/metrics", "openai_requests_total", route=CHAT, status="200") - before
        streamed_tokens = metric(f"{url}/metrics", "openai_tokens_total", route=CHAT, kind="completion")
    assert "--endpoint-type chat" in " ".join(argv) and "--streaming" in argv
    m = loadgen.parse_genai_perf_json(loadgen.find_genai_perf_json(tmp_path / "gp"))
    assert m["request_count"] == 6 and answered == 6  # every request of the report went through the front
    assert m["output_token_throughput_tok_s"] > 0 and m["request_throughput_req_s"] > 0
    assert 0 < m["ttft_p50_ms"] <= m["ttft_p99_ms"] < m["request_latency_p99_ms"] and m["itl_p50_ms"] > 0
    # min_tokens = max_tokens and ignore_eos reach the model through the front: every answer is 16 tokens long
    assert m["output_sequence_length_avg"] == pytest.approx(16, abs=0.5) and m["input_sequence_length_avg"] == 32
    assert streamed_tokens == 6 * 16


def test_overhead_bench_runs_both_paths_and_writes_its_report(tmp_path):
    """bench/openai_overhead.py end to end at a toy size: both paths answer every stream in full through the real
    tritonserver (engine: synthetic), at 1 stream from this process and at 4 from two client processes, with
    lengths spread per request (the same on both paths), and the report holds the targets' columns."""
    from bench import openai_overhead

    out = tmp_path / "res"
    port = free_port() // 4 * 4  # the bench takes port .. port + 3
    assert openai_overhead.main(["--concurrency", "1,4", "--tokens", "8", "--tokens-spread", "0.5", "--waves", "1",
                                 "--repeats", "1", "--streams-per-client", "2", "--port", str(port),
                                 "--work", str(tmp_path / "w"), "--out", str(out)]) == 0
    lengths = {c: [openai_overhead.request_tokens(i, 8, 0.5) for i in range(c)] for c in (1, 4)}
    assert len(set(lengths[4])) > 1 and all(4 <= n <= 12 for n in lengths[4])
    res = json.loads((out / "results.json").read_text())
    assert sorted((r["concurrency"], r["path"]) for r in res["runs"]) == [
        (1, "direct"), (1, "openai"), (4, "direct"), (4, "openai")]
    for r in res["runs"]:
        c = r["concurrency"]
        assert r["requests"] == c and r["errors"] == 0 and r["short_responses"] == 0
        assert r["output_tokens"] == sum(lengths[c])
        assert r.get("client_processes", 1) == (2 if c == 4 else 1)
    p = res["points"][1]
    assert p["concurrency"] == 4 and p["throughput_ratio"] == round(p["openai_tok_s"] / p["direct_tok_s"], 3)
    # the front's CPU time is read in clock ticks (10 ms): a toy run's can be zero ticks
    assert p["front_cpu_us_per_token"] >= 0 and res["versions"]["cores"] >= 1
    assert "| 4 |" in (out / "results.md").read_text() and (tmp_path / "w" / "tritonserver.log").is_file()
