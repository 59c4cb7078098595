"""perf_analyzer (tritonclient 2.51) and genai-perf drive a short streaming load against the real server;
`llm validate` passes CPU-sized targets and fails out-of-reach ones."""

import io
import json
import subprocess

import pytest

from llm_client import loadgen
from llm_client.validate import default_tokenizer_dir, validate

pytestmark = pytest.mark.server


def test_perf_analyzer_streaming(server, tmp_path):
    inputs = tmp_path / "in.json"
    inputs.write_text(json.dumps({"data": [{"text_input": {"content": ["What is the capital of France?"],
                                                           "shape": [1]},
                                            "sampling_parameters": {"content": ['{"max_tokens": 16}'], "shape": [1]},
                                            "stream": {"content": [True], "shape": [1]}}]}))
    csv = tmp_path / "pa.csv"
    argv, env = loadgen.perf_analyzer_cmd("llm", server.grpc_url, "1:2", inputs, measurement_interval_ms=3000,
                                          stability_percentage=60, max_trials=6,
                                          csv_path=csv)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = loadgen.parse_perf_analyzer_csv(csv)
    assert sorted((r["mode"], r["load"]) for r in rows) == [("concurrency", 1), ("concurrency", 2)]
    for r in rows:
        m = loadgen.perf_analyzer_metrics(r)
        assert m["request_throughput_req_s"] > 0


def test_genai_perf_streaming(server, tmp_path):
    argv, env = loadgen.genai_perf_cmd("llm", server.grpc_url, default_tokenizer_dir(), concurrency=2, num_prompts=6,
                                       input_tokens_mean=32, output_tokens_mean=16, artifact_dir=tmp_path / "gp")
    loadgen.run_genai_perf(argv, env, tmp_path / "gp", tmp_path / "genai.log", 300)  # raises on a failure
    m = loadgen.parse_genai_perf_json(loadgen.find_genai_perf_json(tmp_path / "gp"))
    assert m["output_token_throughput_tok_s"] > 0 and m["ttft_p99_ms"] > 0 and m["itl_p50_ms"] > 0
    # Deterministic output lengths: min_tokens = max_tokens, so every answer is exactly 16 tokens long.
    assert m["output_sequence_length_avg"] == pytest.approx(16, abs=0.5)


def test_validate_passes_cpu_targets_and_fails_unreachable_ones(server, tmp_path):
    from llm_client.cli import main

    out = io.StringIO()
    # 4 prompts a level (one wave at the target's concurrency of 4): the pass/fail logic, not a steady state
    assert validate("client/targets/cpu-smollm2.yaml", server.grpc_url, tmp_path / "ok", num_prompts=4,
                    levels=[1, 4], out=out)
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["passed"] and all(r["measured"] is not None for r in report["rows"])
    assert (tmp_path / "ok" / "latency_throughput.png").stat().st_size > 10_000
    code = main(["validate", "--targets", "client/targets/unreachable.yaml", "--url", server.grpc_url,
                 "--out", str(tmp_path / "bad"), "--levels", "4", "--num-prompts", "4"])
    assert code == 1
    bad = json.loads((tmp_path / "bad" / "report.json").read_text())
    assert not bad["passed"] and all(r["passed"] is False for r in bad["rows"])
