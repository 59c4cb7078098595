"""Parsers and command builders of llm_client.loadgen, and llm_client.targets, on real tool output (no server).

Fixtures in tests/fixtures/loadgen/ are real outputs of perf_analyzer 2.51 (tritonclient 2.51.0 wheel),
genai-perf 0.0.16 and aiperf 0.13.0 run against a throwaway decoupled echo model (16 or 32 one-word responses
about 5.5 ms apart) on tritonserver 2.51 from the nvidia-pytriton wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "client"))

from llm_client import loadgen as lg  # noqa: E402
from llm_client import targets as tg  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "loadgen"
CONFIGS = ROOT / "client" / "configs"
TARGETS = ROOT / "client" / "targets"


# ---- perf_analyzer ---


def test_perf_analyzer_csv_concurrency():
    rows = lg.parse_perf_analyzer_csv(FIX / "perf_analyzer_concurrency.csv")
    assert [r["load"] for r in rows] == [1, 2, 3, 4]
    assert all(r["mode"] == "concurrency" for r in rows)
    first = rows[0]
    assert first["Concurrency"] == 1
    assert first["request_throughput_req_s"] == pytest.approx(10.8283)
    assert first["response_throughput_per_s"] == pytest.approx(173.253)
    assert first["request_latency_p50_ms"] == pytest.approx(91.543)
    assert first["request_latency_p99_ms"] == pytest.approx(96.088)
    assert first["request_latency_avg_ms"] == pytest.approx(91.395)
    assert first["Avg GPU Utilization"] is None  # no GPU: empty cells
    # 16 streamed responses per request
    for r in rows:
        assert r["response_throughput_per_s"] / r["request_throughput_req_s"] == pytest.approx(16, rel=0.01)
    # throughput grows with concurrency, latency stays about one request (~16 x 5.7 ms)
    tps = [r["request_throughput_req_s"] for r in rows]
    assert tps == sorted(tps)
    assert all(80 < r["request_latency_p50_ms"] < 120 for r in rows)
    m = lg.perf_analyzer_metrics(rows[-1])
    assert set(m) >= {"request_throughput_req_s", "request_latency_p99_ms"}


def test_perf_analyzer_csv_request_rate():
    rows = lg.parse_perf_analyzer_csv(FIX / "perf_analyzer_request_rate.csv")
    assert [(r["mode"], r["load"]) for r in rows] == [("request_rate", 5), ("request_rate", 10)]
    assert rows[1]["request_throughput_req_s"] == pytest.approx(9.85547)
    assert rows[0]["request_latency_avg_ms"] == pytest.approx(95.463)
    assert rows[0]["request_latency_p99_ms"] == pytest.approx(102.463)


def test_perf_analyzer_csv_without_verbose_columns():
    rows = lg.parse_perf_analyzer_csv(FIX / "perf_analyzer_request_rate_plain.csv")
    assert [(r["mode"], r["load"]) for r in rows] == [("request_rate", 5), ("request_rate", 10)]
    assert "Avg latency" not in rows[0] and rows[0]["request_latency_avg_ms"] is None
    assert rows[1]["request_latency_p50_ms"] == pytest.approx(97.343)


def test_perf_analyzer_csv_rejects_other_csv(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError):
        lg.parse_perf_analyzer_csv(p)


def test_perf_analyzer_profile_export():
    (exp,) = lg.parse_perf_analyzer_profile_export(FIX / "perf_analyzer_profile_export.json")
    assert exp["mode"] == "concurrency" and exp["load"] == 2
    assert exp["request_count"] == 6
    assert exp["responses_per_request_avg"] == 16
    assert 3 < exp["ttft_p50_ms"] < 20
    assert 4 < exp["itl_p50_ms"] < 8  # the echo model sleeps 5 ms per word
    assert exp["request_latency_p99_ms"] >= exp["request_latency_p50_ms"] > exp["ttft_p50_ms"]


# ---- genai-perf / aiperf ---


def test_genai_perf_json_concurrency():
    r = lg.parse_genai_perf_json(FIX / "genai_perf_concurrency4.json")
    assert r["model"] == "echo" and r["concurrency"] == 4 and r["streaming"] is True
    assert r["input_tokens_mean"] == 128 and r["output_tokens_mean"] == 32
    assert r["request_count"] == 24
    assert r["ttft_p50_ms"] <= r["ttft_p99_ms"]
    assert r["ttft_avg_ms"] == pytest.approx(6.30, abs=0.01)
    assert r["itl_avg_ms"] == pytest.approx(5.39, abs=0.01)
    assert r["output_token_throughput_tok_s"] == pytest.approx(734.78, abs=0.01)
    assert r["request_throughput_req_s"] == pytest.approx(22.96, abs=0.01)
    assert r["output_sequence_length_avg"] == 32 and r["input_sequence_length_avg"] == 128
    assert r["output_token_throughput_per_user_p50_tok_s"] > 100
    assert r["request_latency_p99_ms"] > r["request_latency_p50_ms"] > 0
    # the names the targets files use are all produced
    used = {t.metric for ts in tg.load_all(TARGETS).values() for t in ts.targets}
    assert used <= set(r)


def test_genai_perf_json_request_rate():
    r = lg.parse_genai_perf_json(FIX / "genai_perf_request_rate8.json")
    assert r["request_rate"] == 8.0 and "concurrency" not in r
    assert r["request_throughput_req_s"] == pytest.approx(7.87, abs=0.01)
    assert r["output_token_throughput_tok_s"] == pytest.approx(251.99, abs=0.01)


def test_genai_perf_json_rejects_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError):
        lg.parse_genai_perf_json(p)


def test_find_genai_perf_json(tmp_path):
    sub = tmp_path / "echo-triton-vllm-concurrency4"
    sub.mkdir()
    (sub / "profile_export_genai_perf.json").write_text((FIX / "genai_perf_concurrency4.json").read_text())
    assert lg.find_genai_perf_json(tmp_path) == sub / "profile_export_genai_perf.json"
    with pytest.raises(FileNotFoundError):
        lg.find_genai_perf_json(tmp_path / "none")


def test_aiperf_json():
    r = lg.parse_aiperf_json(FIX / "aiperf_concurrency2.json")
    assert r["model"] == "echo" and r["concurrency"] == 2
    assert r["input_tokens_mean"] == 64 and r["output_tokens_mean"] == 16
    assert r["request_count"] == 12 and r["request_error_rate_pct"] == 0
    assert r["output_sequence_length_avg"] == 16
    assert 4 < r["itl_p50_ms"] < 8
    assert r["output_token_throughput_tok_s"] == pytest.approx(345.09, abs=0.01)


# ---- command builders ---


def test_perf_analyzer_cmd(tmp_path):
    tools = lg.find_tools(tmp_path)
    argv, env = lg.perf_analyzer_cmd("llm", "grpc://localhost:8001", (1, 8, 1), "in.json", 3000,
                                     csv_path="out.csv", metrics_url="localhost:8002/metrics", tools=tools)
    assert argv[0] == str(tmp_path / "pa" / "bin" / "perf_analyzer")
    s = " ".join(argv)
    assert "-m llm -i grpc -u localhost:8001" in s
    assert "--concurrency-range 1:8:1" in s and "--streaming" in s
    assert "--measurement-interval 3000" in s and "-f out.csv --verbose-csv" in s
    assert "--collect-metrics --metrics-url localhost:8002/metrics" in s
    assert env["LD_LIBRARY_PATH"].split(":")[0] == str(tmp_path / "pa" / "lib")
    argv, _ = lg.perf_analyzer_cmd("llm", "localhost:8001", None, "in.json", 2000, request_rate_range=(5, 10, 5),
                                   stability_percentage=50, tools=tools)
    assert "--request-rate-range 5:10:5" in " ".join(argv) and "--concurrency-range" not in argv
    with pytest.raises(ValueError):
        lg.perf_analyzer_cmd("llm", "localhost:8000", 1, "in.json", 1000, protocol="http", tools=tools)


def test_genai_perf_cmd(tmp_path):
    tools = lg.find_tools(tmp_path)
    argv, env = lg.genai_perf_cmd("llm", "localhost:8001", "/tok", 4, 50, 128, 2048, "art", tools=tools,
                                  warmup_request_count=2)
    assert argv[:2] == [str(tmp_path / "genai" / "bin" / "genai-perf"), "profile"]
    s = " ".join(argv)
    for frag in ("-m llm", "--endpoint-type kserve", "--backend vllm", "--streaming", "-u localhost:8001",
                 "--tokenizer /tok", "--num-dataset-entries 50", "--synthetic-input-tokens-mean 128",
                 "--output-tokens-mean 2048", "--output-tokens-mean-deterministic", "--concurrency 4",
                 "--request-count 50", "--artifact-dir art"):
        assert frag in s, frag
    assert "--warmup-request-count 4" in s  # raised to the concurrency: perf_analyzer 2.51 hangs below it
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PATH"].split(":")[0] == str(tmp_path / "genai" / "bin")
    argv, _ = lg.genai_perf_cmd("llm", "localhost:8001", "/tok", None, 50, 128, 128, "art", request_rate=8,
                                warmup_request_count=4, tools=tools)
    s = " ".join(argv)
    assert "--request-rate 8" in s and "--concurrency" not in s and "--warmup-request-count 0" in s
    with pytest.raises(ValueError):
        lg.genai_perf_cmd("llm", "localhost:8001", "/tok", 4, 50, 128, 128, "art", request_rate=8, tools=tools)


def test_aiperf_cmd(tmp_path):
    argv, env = lg.aiperf_cmd("llm", "localhost:8000", "/tok", 8, 100, 128, 128, "art",
                              tools=lg.find_tools(tmp_path))
    s = " ".join(argv)
    assert "--endpoint-type template --custom-endpoint /v2/models/llm/generate_stream" in s
    assert "--url http://localhost:8000" in s and "--streaming" in s
    extra = json.loads(argv[argv.index("--extra-inputs") + 1])
    assert extra["response_field"] == "text_output"
    assert "HF_HUB_OFFLINE" not in env


def test_require_missing_tool_mentions_setup(tmp_path):
    with pytest.raises(FileNotFoundError, match="setup_loadgen.sh"):
        lg.find_tools(tmp_path).require("perf_analyzer")


# ---- configs ---


@pytest.mark.parametrize("name", ["perf_inputs_short.json", "perf_inputs_512_256.json", "perf_inputs_long.json",
                                  "perf_inputs_cpu.json"])
def test_perf_inputs_files(name):
    doc = json.loads((CONFIGS / name).read_text())
    assert doc["data"]
    for entry in doc["data"]:
        assert entry["text_input"]["shape"] == [1] and isinstance(entry["text_input"]["content"][0], str)
        assert entry["stream"]["content"] == [True]
        assert entry["exclude_input_in_output"]["content"] == [True]
        sp = json.loads(entry["sampling_parameters"]["content"][0])
        assert int(sp["max_tokens"]) >= 1


def test_make_perf_inputs_matches_toolchain_format():
    doc = lg.make_perf_inputs(["hello"], max_tokens=8)
    assert doc["data"][0]["text_input"] == {"content": ["hello"], "shape": [1]}


def test_sweeps_expand():
    doc = lg.load_sweeps(CONFIGS / "sweeps.yaml")
    conc = lg.expand_sweep(doc, "concurrency")
    assert [r["concurrency"] for r in conc] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert {(r["input_tokens_mean"], r["output_tokens_mean"]) for r in conc} == {(128, 128)}
    rate = lg.expand_sweep(doc, "request_rate")
    assert all(r["concurrency"] is None and r["request_rate"] > 0 for r in rate)
    mix = lg.expand_sweep(doc, "length_mix")
    assert {(r["input_tokens_mean"], r["output_tokens_mean"]) for r in mix} == {
        (128, 128), (128, 2048), (2048, 128), (512, 256)}
    assert len({r["run_name"] for r in mix}) == len(mix)
    # every spec turns into a genai-perf command
    for spec in conc + rate + mix + lg.expand_sweep(doc, "cpu_smoke"):
        argv, _ = lg.genai_perf_cmd(spec["model"], spec["url"], "/tok", spec["concurrency"], spec["num_prompts"],
                                    spec["input_tokens_mean"], spec["output_tokens_mean"], "art",
                                    request_rate=spec["request_rate"], tools=lg.find_tools("/nonexistent"))
        assert "--streaming" in argv


# ---- targets ---


def test_all_target_files_validate():
    sets = tg.load_all(TARGETS)
    assert {"a100-fp16", "a100-int8", "h100-bf16", "h100-fp16", "h100-fp8", "cpu-smollm2", "unreachable"} <= set(sets)
    a100 = sets["a100-fp16"]
    got = {(t.metric, t.workload.concurrency): t.value for t in a100.targets}
    assert got[("output_token_throughput_tok_s", 8)] == 380
    assert got[("itl_avg_ms", 1)] == 12 and got[("itl_avg_ms", 16)] == 32
    assert got[("itl_p99_ms", 8)] == 50
    int8 = {(t.metric, t.workload.concurrency): t.value for t in sets["a100-int8"].targets}
    assert int8[("output_token_throughput_tok_s", 8)] == 620 and int8[("itl_avg_ms", 1)] == 8
    assert int8[("itl_avg_ms", 16)] == 22
    assert all(t.source.startswith("guide §") for t in a100.targets)
    fp8 = {t.metric: t.value for t in sets["h100-fp8"].targets}
    assert fp8["output_token_throughput_tok_s"] == 14000


def test_cpu_targets_pass_on_echo_fixture():
    ts = tg.load_targets(TARGETS / "cpu-smollm2.yaml")
    rows = tg.evaluate(ts, None, {4: lg.parse_genai_perf_json(FIX / "genai_perf_concurrency4.json")})
    assert tg.all_passed(rows), tg.format_rows(rows)


def test_unreachable_targets_fail():
    ts = tg.load_targets(TARGETS / "unreachable.yaml")
    rows = tg.evaluate(ts, lg.parse_genai_perf_json(FIX / "genai_perf_concurrency4.json"))
    assert [r.passed for r in rows] == [False, False]
    assert not tg.all_passed(rows)
    assert "FAIL" in tg.format_rows(rows)


def test_missing_metric_is_not_a_pass():
    ts = tg.load_targets(TARGETS / "h100-bf16.yaml")
    rows = tg.evaluate(ts, {"output_token_throughput_tok_s": 2000.0})
    assert [r.passed for r in rows] == [None, True, None]
    assert not tg.all_passed(rows)


def test_targets_cli_exit_codes():
    env_path = str(ROOT / "client")
    cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {env_path!r}); "
           "from llm_client.targets import _main; raise SystemExit(_main(sys.argv[1:]))", "check"]
    fixture = str(FIX / "genai_perf_concurrency4.json")
    ok = subprocess.run(cmd + [str(TARGETS / "cpu-smollm2.yaml"), fixture], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run(cmd + [str(TARGETS / "unreachable.yaml"), fixture], capture_output=True, text=True)
    assert bad.returncode == 1 and "FAIL" in bad.stdout


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d["targets"][0].update(metric="tokens_per_banana"), "unknown metric"),
    (lambda d: d["targets"][0].update(op="<"), "op must be"),
    (lambda d: d["targets"][0].update(unit="ms"), "unit"),
    (lambda d: d["targets"][0].update(source="blog"), "source"),
    (lambda d: d["workload"].pop("concurrency"), "concurrency"),
    (lambda d: d.update(extra=1), "unknown keys"),
    (lambda d: d["targets"][0].update(value="fast"), "value"),
])
def test_target_schema_errors(mutate, msg):
    import yaml

    doc = yaml.safe_load((TARGETS / "cpu-smollm2.yaml").read_text())
    mutate(doc)
    with pytest.raises(tg.TargetError, match=msg):
        tg.parse_target_set(doc)


@pytest.mark.parametrize("second", ["ok", "empty again"])
def test_measure_tries_once_more_when_perf_analyzer_left_no_data(tmp_path, monkeypatch, second):
    """genai-perf failing over an empty profile_export.json gets one more run; a second failure is the error."""
    from types import SimpleNamespace

    from llm_client import validate

    runs = []

    def fake_run(argv, env, stdout, stderr, timeout):
        runs.append(argv)
        d = tmp_path / "genai_c4" / "llm-triton-vllm-concurrency4"
        d.mkdir(parents=True, exist_ok=True)
        if len(runs) == 1 or second != "ok":
            (d / "profile_export.json").write_text("")
            return SimpleNamespace(returncode=1)
        (d / "profile_export_genai_perf.json").write_text((FIX / "genai_perf_concurrency4.json").read_text())
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(validate.loadgen.commands.subprocess, "run", fake_run)
    monkeypatch.setattr(validate.loadgen, "genai_perf_cmd", lambda *a, **k: (["genai-perf"], {}))
    workload = SimpleNamespace(input_tokens=32, output_tokens=16)
    if second == "ok":
        m = validate.measure("localhost:1", Path("/tok"), workload, 4, tmp_path, 8, 60)
        assert m["concurrency"] == 4 and m["request_count"] > 0
        assert (tmp_path / "genai_c4.attempt1.log").is_file() and (tmp_path / "genai_c4.log").is_file()
    else:
        with pytest.raises(RuntimeError, match="at concurrency 4: genai-perf failed"):
            validate.measure("localhost:1", Path("/tok"), workload, 4, tmp_path, 8, 60)
    assert len(runs) == 2
