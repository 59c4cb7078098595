"""The published figures our runs are set beside (TensorRT-LLM's maximum throughput, its INT4-AWQ batch-1 figure,
the guide's requests a second) and the tables that compare them; helpers that read a results.json's runs."""

from __future__ import annotations

# TensorRT-LLM's published maximum throughput, output tok/s on one H200 at its best concurrency (NVIDIA/TensorRT-LLM
# docs/source/performance/perf-overview.md; copied in shared/reference/perf-anchors.md, read 2026-12-03), by
# `bench.run --shape` and workload. Mistral's is published as "Mistral-7B" (version not named); Qwen2.5-7B has none.
PUBLISHED = {
    "llama3.1-8b": ("TRT-LLM 0.17, FP8, H200", {"128x128": 29526, "128x2048": 25399, "2048x128": 3794,
                                                "1000x1000": 17538, "2048x2048": 11969}),
    "mistral-7b-v0.3": ("TRT-LLM 0.17, FP8, H200", {"128x128": 31938}),
    "llama2-7b": ("TRT-LLM 0.13, FP8, H200", {"128x128": 19549}),
}
TRTLLM_WORKLOADS = ["128x128", "128x2048", "2048x128", "1000x1000", "2048x2048"]
# TensorRT-LLM 0.15 INT4-AWQ Llama-3.1-8B, one H200, batch 1, 2048/128 (TensorRT-Model-Optimizer benchmark.md)
INT4_AWQ_2048_128_BS1 = 231.8
# The guide's "600+ requests/s on one card" (issue 18: Llama-3.1-8B FP8 on one H200): its workload, `--plan guide`
GUIDE_WORKLOAD, GUIDE_RPS = "128x32", 600
# Our phases set beside the published figures (which are FP8), in this order
COMPARED = [("engine_fp8", "engine fp8"), ("engine_fp8_kv8", "engine fp8, fp8 KV cache"), ("engine", "engine bf16"),
            ("engine_kv8", "engine bf16, fp8 KV cache"), ("engine_int8", "engine int8_wo"),
            ("engine_fp8_t8192", "engine fp8, 8,192 tokens a step"),
            ("engine_fp8_kv8_t8192", "engine fp8, fp8 KV cache, 8,192 tokens a step"),
            ("engine_t8192", "engine bf16, 8,192 tokens a step"),
            ("engine_kv8_t8192", "engine bf16, fp8 KV cache, 8,192 tokens a step")]


def runs_of(results: dict, phase: str) -> dict[tuple[str, int], dict]:
    p = results["phases"].get(phase) or {}
    return {(r["workload"], r["concurrency"]): r for r in p.get("runs", [])}


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def best_runs(results: dict, phase: str) -> dict[str, tuple[float, int]]:
    """Per workload, the phase's best output throughput and the concurrency it came at (points without errors)."""
    best: dict[str, tuple[float, int]] = {}
    for (w, c), r in runs_of(results, phase).items():
        if not r.get("errors") and r["throughput_tok_s"] > best.get(w, (0.0, 0))[0]:
            best[w] = (r["throughput_tok_s"], c)
    return best


def int4_targets(results: dict) -> list[tuple[str, str, str, bool | None]]:
    """Issue 22's engine targets for int4 g128 (`--plan int4`; the batch-1 read ratio is with the others)."""
    four, bf16 = runs_of(results, "engine_int4"), runs_of(results, "engine")
    rows = []
    r = four.get(("2048x128", 1))
    if r:
        goal = 2 * INT4_AWQ_2048_128_BS1
        rows.append(("int4 batch 1 at 2048/128, output tokens over the whole request", fmt(r["throughput_tok_s"]),
                     f">= {goal:,.1f} (2 x TRT-LLM 0.15 INT4-AWQ, H200)", r["throughput_tok_s"] >= goal))
    for c, goal, label in ((8, 1.3, ">= 1.3 x"), (256, 1.0, ">= 1.0 x")):
        a, b = four.get(("128x128", c)), bf16.get(("128x128", c))
        if a and b:
            x = a["throughput_tok_s"] / b["throughput_tok_s"]
            rows.append((f"int4 / bf16 output tok/s at {c} streams (128/128)",
                         f"{a['throughput_tok_s']:,.0f} / {b['throughput_tok_s']:,.0f} = {x:.3f} x", label, x >= goal))
    return rows


def published_rows(results: dict) -> list[str]:
    """Per workload and phase of ours: the best throughput, its concurrency, TensorRT-LLM's figure and the ratio."""
    source, figures = PUBLISHED.get(results.get("shape", "llama2-7b"), ("", {}))
    best = {ph: best_runs(results, ph) for ph, _ in COMPARED}
    workloads = [w for w in TRTLLM_WORKLOADS if any(w in b for b in best.values())]
    if not workloads:
        return []
    gpu = (results.get("env") or {}).get("gpu") or "?"
    lines = ["", "## Against TensorRT-LLM's published throughput (best concurrency of each)", "",
             f"Published: {source or 'none for this shape'} (perf-overview.md, as in shared/reference/"
             f"perf-anchors.md); this run: {gpu}. Output tok/s; the published figures are FP8 weights.", "",
             "The whole run of a point counts (ramp and tail included), as trtllm-bench reports it; `steady` is the "
             "stretch between the first answer's end and the last submission.", "",
             "| workload | ours | best tok/s | at streams | requests | steady tok/s | published tok/s | "
             "ours / published |", "|---|---|---|---|---|---|---|---|"]
    for w in workloads:
        for ph, label in COMPARED:
            if w in best[ph]:
                tok, c = best[ph][w]
                r = runs_of(results, ph)[(w, c)]
                pub = figures.get(w)
                lines.append(f"| {w} | {label} | {tok:,.0f} | {c:,} | {r['requests']:,} | "
                             f"{fmt(r.get('steady_tok_s'), 0)} | {fmt(pub)} | {f'{tok / pub:.3f}' if pub else '-'} |")
    return lines


def requests_per_s(r: dict) -> float:
    """A point's requests a second over its whole run (older results lack the field)."""
    return r.get("requests_per_s") or r["requests"] / r["wall_s"]


def guide_rows(results: dict) -> list[str]:
    """Per phase of ours with the guide's workload: its best requests a second, against the guide's 600."""
    rows = []
    for ph, label in COMPARED:
        runs = [r for (w, _), r in runs_of(results, ph).items() if w == GUIDE_WORKLOAD and not r.get("errors")]
        if runs:
            r = max(runs, key=requests_per_s)
            rps = requests_per_s(r)
            rows.append(f"| {label} | {rps:,.1f} | {r['concurrency']:,} | {r['requests']:,} | "
                        f"{fmt(r.get('ttft_ms_p50'))} | {rps / GUIDE_RPS:.3f} |")
    if not rows:
        return []
    return ["", f"## The guide's {GUIDE_RPS}+ requests/s (128-token prompts, 32-token answers)", "",
            f"| ours | requests/s (whole run) | at streams | requests | TTFT P50 ms | / {GUIDE_RPS} |",
            "|---|---|---|---|---|---|"] + rows
