"""bench/published.py's table against TensorRT-LLM's published figures: every engine phase the trtllm plans run,
the 8,192-token-step variants included, gets its best point and the ratio; the guide's requests a second too."""

from bench.published import guide_rows, int4_targets, published_rows


def _run(workload, concurrency, tok_s, errors=0):
    return {"workload": workload, "concurrency": concurrency, "throughput_tok_s": tok_s, "requests": 2 * concurrency,
            "steady_tok_s": tok_s * 0.9, "errors": errors}


def test_the_best_point_of_each_phase_sits_beside_the_published_figure():
    results = {"shape": "llama3.1-8b", "env": {"gpu": "NVIDIA H200"}, "phases": {
        "engine_fp8_kv8_t8192": {"runs": [_run("128x128", 256, 20000.0), _run("128x128", 1024, 27920.0),
                                          _run("128x128", 2048, 40000.0, errors=3)]},
        "engine_fp8": {"runs": [_run("2048x128", 256, 3000.0)]}}}
    rows = [r for r in published_rows(results) if r.startswith("| 128x128") or r.startswith("| 2048x128")]
    assert rows == [
        "| 128x128 | engine fp8, fp8 KV cache, 8,192 tokens a step | 27,920 | 1,024 | 2,048 | 25,128 | 29,526 "
        "| 0.946 |",
        "| 2048x128 | engine fp8 | 3,000 | 256 | 512 | 2,700 | 3,794 | 0.791 |"]


def test_a_shape_without_runs_of_those_workloads_has_no_table():
    assert published_rows({"shape": "llama3.1-8b", "phases": {"engine": {"runs": [_run("64x64", 8, 1.0)]}}}) == []


def test_the_guide_workload_reports_requests_a_second_against_600():
    fast = dict(_run("128x32", 1024, 20480.0), wall_s=8.0, requests=8192, ttft_ms_p50=512.0)
    slow = dict(_run("128x32", 256, 6000.0), wall_s=4.0, requests=2048, requests_per_s=512.0)
    failed = dict(_run("128x32", 2048, 40000.0, errors=1), wall_s=1.0)
    rows = guide_rows({"phases": {"engine_fp8": {"runs": [slow, fast, failed]}}})
    assert rows[-1] == "| engine fp8 | 1,024.0 | 1,024 | 8,192 | 512.0 | 1.707 |"  # 8,192 requests in 8 s
    assert guide_rows({"phases": {"engine_fp8": {"runs": [_run("128x128", 8, 1.0)]}}}) == []


def test_int4_targets_set_the_engine_runs_beside_bf16_and_nvidias_int4_awq_figure():
    results = {"phases": {
        "engine_int4": {"runs": [_run("2048x128", 1, 480.0), _run("128x128", 8, 2600.0), _run("128x128", 256, 9000.0)]},
        "engine": {"runs": [_run("128x128", 8, 1800.0), _run("128x128", 256, 10000.0)]}}}
    assert int4_targets(results) == [
        ("int4 batch 1 at 2048/128, output tokens over the whole request", "480.0",
         ">= 463.6 (2 x TRT-LLM 0.15 INT4-AWQ, H200)", True),
        ("int4 / bf16 output tok/s at 8 streams (128/128)", "2,600 / 1,800 = 1.444 x", ">= 1.3 x", True),
        ("int4 / bf16 output tok/s at 256 streams (128/128)", "9,000 / 10,000 = 0.900 x", ">= 1.0 x", False)]
    assert int4_targets({"phases": {"engine": {"runs": [_run("128x128", 8, 1.0)]}}}) == []
