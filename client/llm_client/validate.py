"""`llm validate`: load a live server with genai-perf, compare against a targets file, report pass/fail.

It measures the target set's workload at its concurrency plus lower levels (for the latency-throughput
curve), prints a table, writes report.json, report.md and latency_throughput.png, and exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from llm_client import loadgen
from llm_client.targets import TargetSet, all_passed, evaluate, format_rows, load_targets


def default_tokenizer_dir() -> Path:
    cache = Path(os.environ.get("LLMSERVE_CACHE", Path.home() / ".cache" / "llmserve")) / "smollm2-tokenizer"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(cache.with_name(cache.name + ".lock")):  # not read half-written by a second process
        if not (cache / "tokenizer.json").is_file():
            loadgen.make_smollm2_tokenizer_dir(cache)
    return cache


def concurrency_levels(top: int) -> list[int]:
    levels = {1, top}
    c = 2
    while c < top:
        levels.add(c)
        c *= 2
    return sorted(levels)


def measure(url: str, tokenizer_dir: Path, workload, concurrency: int, out_dir: Path, num_prompts: int,
            timeout_s: float, model: str = "llm") -> dict[str, Any]:
    artifacts = out_dir / f"genai_c{concurrency}"
    argv, env = loadgen.genai_perf_cmd(
        model, url, tokenizer_dir, concurrency, num_prompts=num_prompts, input_tokens_mean=workload.input_tokens,
        output_tokens_mean=workload.output_tokens, artifact_dir=artifacts, warmup_request_count=concurrency)
    log = out_dir / f"genai_c{concurrency}.log"
    try:
        loadgen.run_genai_perf(argv, env, artifacts, log, timeout_s)
    except RuntimeError as exc:
        raise RuntimeError(f"at concurrency {concurrency}: {exc}") from None
    metrics = loadgen.parse_genai_perf_json(loadgen.find_genai_perf_json(artifacts))
    metrics["concurrency"] = concurrency
    return metrics


def plot(points: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [p.get("output_token_throughput_tok_s", 0) for p in points]
    for key, label in (("request_latency_p99_ms", "request latency P99"), ("ttft_p99_ms", "TTFT P99"),
                       ("itl_p99_ms", "inter-token P99")):
        ys = [p.get(key) for p in points]
        if all(y is not None for y in ys):
            ax.plot(xs, ys, marker="o", label=label)
    for p, x in zip(points, xs):
        ax.annotate(f"c={p['concurrency']}", (x, p.get("request_latency_p99_ms", 0)), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel("output tokens/s")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out_dir: Path, ts: TargetSet, rows, points: list[dict[str, Any]], url: str) -> None:
    passed = all_passed(rows)
    doc = {"target_set": ts.name, "gpu": ts.gpu, "precision": ts.precision, "model": ts.model, "url": url,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "passed": passed,
           "rows": [r.as_dict() for r in rows], "points": points}
    (out_dir / "report.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# validate: {ts.name} ({ts.model}, {ts.precision}, {ts.gpu})", "",
             f"{doc['date']}, server {url}: **{'PASS' if passed else 'FAIL'}**", "",
             "| result | metric | concurrency | measured | target | unit | source |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        meas = "-" if r.measured is None else f"{r.measured:.4g}"
        lines.append(f"| {r.status} | {r.metric} | {r.concurrency} | {meas} | {r.op} {r.target:g} | {r.unit} | "
                     f"{r.source} |")
    lines += ["", "| concurrency | output tok/s | TTFT P50 / P99 ms | inter-token P50 / P99 ms | latency P99 ms |",
              "|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['concurrency']} | {p.get('output_token_throughput_tok_s', 0):.1f} | "
                     f"{p.get('ttft_p50_ms', 0):.0f} / {p.get('ttft_p99_ms', 0):.0f} | "
                     f"{p.get('itl_p50_ms', 0):.1f} / {p.get('itl_p99_ms', 0):.1f} | "
                     f"{p.get('request_latency_p99_ms', 0):.0f} |")
    lines += ["", "![latency vs throughput](latency_throughput.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines))


def validate(targets_path: str, url: str, out_dir: Path, tokenizer_dir: Path | None = None,
             num_prompts: int | None = None, levels: list[int] | None = None, timeout_s: float = 900,
             out=sys.stdout) -> bool:
    ts = load_targets(targets_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_dir or default_tokenizer_dir()
    points = []
    for c in levels or concurrency_levels(ts.workload.concurrency):
        print(f"measuring concurrency {c} ({ts.workload.input_tokens} in / {ts.workload.output_tokens} out)...",
              file=out, flush=True)
        points.append(measure(url, tok, ts.workload, c, out_dir, num_prompts or max(8, 2 * c), timeout_s))
    by_c = {p["concurrency"]: p for p in points}
    rows = evaluate(ts, measured=by_c.get(ts.workload.concurrency), measured_by_concurrency=by_c)
    print(format_rows(rows), file=out)
    plot(points, out_dir / "latency_throughput.png", f"{ts.model} ({ts.precision}, {ts.gpu})")
    write_report(out_dir, ts, rows, points, url)
    ok = all_passed(rows)
    print(f"{'PASS' if ok else 'FAIL'}: report in {out_dir}/report.md", file=out)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llm validate", description=__doc__.split("\n")[0])
    ap.add_argument("--targets", required=True, help="a file under client/targets/")
    ap.add_argument("--url", default="localhost:8001", help="gRPC address of the server")
    ap.add_argument("--out", type=Path, default=Path("reports/validate"))
    ap.add_argument("--tokenizer", type=Path, default=None, help="tokenizer dir for genai-perf (default SmolLM2's)")
    ap.add_argument("--num-prompts", type=int, default=None)
    ap.add_argument("--levels", default=None, help="comma-separated concurrency levels (default 1,2,4..target)")
    a = ap.parse_args(argv)
    levels = [int(x) for x in a.levels.split(",")] if a.levels else None
    try:
        return 0 if validate(a.targets, a.url, a.out, a.tokenizer, a.num_prompts, levels) else 1
    except (RuntimeError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
