"""`llm sweep`: the guide's tuning loop, like Triton Model Analyzer, on this machine.

For every combination of the given config.pbtxt knobs (max_batch_size, max_num_tokens, dtype, ...) it starts
the real server (`python -m llmserve.launch serve --set KNOB=VALUE ...`, a process of its own), loads it with
genai-perf at each concurrency, and picks the configuration with the best output throughput whose P99
latency metric stays under the SLO. Needs the server side installed (llmserve) besides the client.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_client.targets import Workload
from llm_client.validate import default_tokenizer_dir, measure


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def variants(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def best_under_slo(results: list[dict[str, Any]], slo_metric: str, slo_ms: float) -> dict[str, Any] | None:
    ok = [r for r in results if r.get(slo_metric) is not None and r[slo_metric] <= slo_ms]
    return max(ok, key=lambda r: r.get("output_token_throughput_tok_s", 0), default=None)


def sweep(grid: dict[str, list[str]], concurrencies: list[int], workload: Workload, slo_metric: str,
          slo_ms: float, out_dir: Path, model_repository: Path, num_prompts: int | None = None,
          out=sys.stdout) -> dict[str, Any]:
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = default_tokenizer_dir()
    results: list[dict[str, Any]] = []
    combos = variants(grid)
    bar = tqdm(total=len(combos) * len(concurrencies), desc="sweep", file=out)
    for i, knobs in enumerate(combos):
        name = "_".join(f"{k}-{v}" for k, v in knobs.items()) or "default"
        with serving(model_repository, knobs, out_dir / f"{name}.log") as grpc_url:
            for c in concurrencies:
                run_dir = out_dir / f"v{i}"
                run_dir.mkdir(exist_ok=True)
                m = measure(grpc_url, tok, workload, c, run_dir, num_prompts or max(8, 2 * c), 900)
                results.append({"variant": name, **knobs, **{k: v for k, v in m.items()
                                                             if isinstance(v, (int, float))}})
                bar.update(1)
    bar.close()
    best = best_under_slo(results, slo_metric, slo_ms)
    summary = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "grid": grid, "concurrencies": concurrencies,
               "workload": workload.__dict__, "slo": {slo_metric: slo_ms}, "best": best, "results": results}
    (out_dir / "sweep.json").write_text(json.dumps(summary, indent=1))
    _write_markdown(out_dir / "sweep.md", summary, slo_metric)
    _plot(results, out_dir / "sweep.png", slo_metric, slo_ms)
    return summary


@contextlib.contextmanager
def serving(model_repository: Path, knobs: dict[str, str], log_path: Path, timeout: float = 300.0) -> Iterator[str]:
    """A server with `knobs` overridden, started by the launcher's command line (the client imports no server
    code); yields its gRPC address, and stops it (SIGTERM: the launcher drains, then stops tritonserver)."""
    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    cmd = [sys.executable, "-m", "llmserve.launch", "serve", "--model-repository", str(model_repository),
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--drain-seconds", "0"]
    cmd += [arg for k, v in knobs.items() for arg in ("--set", f"{k}={v}")]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(proc, f"http://127.0.0.1:{http}/v2/health/ready", timeout, log_path)
            yield f"localhost:{grpc}"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready within {timeout:.0f} s; see {log_path}")


def _write_markdown(path: Path, s: dict[str, Any], slo_metric: str) -> None:
    lines = [f"# sweep ({s['date']})", "", f"SLO: {slo_metric} <= {s['slo'][slo_metric]} ms; workload "
             f"{s['workload']['input_tokens']} in / {s['workload']['output_tokens']} out", "",
             "| variant | concurrency | output tok/s | " + slo_metric + " | within SLO |", "|---|---|---|---|---|"]
    for r in s["results"]:
        v = r.get(slo_metric)
        lines.append(f"| {r['variant']} | {r.get('concurrency')} | {r.get('output_token_throughput_tok_s', 0):.1f} | "
                     f"{'-' if v is None else f'{v:.1f}'} | {v is not None and v <= s['slo'][slo_metric]} |")
    best = s["best"]
    lines += ["", f"**best**: {best['variant']} at concurrency {best['concurrency']}, "
              f"{best['output_token_throughput_tok_s']:.1f} tok/s" if best else "**no variant meets the SLO**", "",
              "![sweep](sweep.png)", ""]
    path.write_text("\n".join(lines))


def _plot(results: list[dict[str, Any]], path: Path, slo_metric: str, slo_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in dict.fromkeys(r["variant"] for r in results):
        pts = [r for r in results if r["variant"] == name]
        ax.plot([p.get("output_token_throughput_tok_s", 0) for p in pts], [p.get(slo_metric, 0) for p in pts],
                marker="o", label=name)
    ax.axhline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:g} ms")
    ax.set_xlabel("output tokens/s")
    ax.set_ylabel(f"{slo_metric}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llm sweep", description=__doc__.split("\n")[0])
    ap.add_argument("--set", action="append", default=[], metavar="KNOB=V1,V2",
                    help="a config.pbtxt parameter and its values, e.g. max_batch_size=4,16 (repeatable)")
    ap.add_argument("--concurrency", default="1,4", help="comma-separated levels")
    ap.add_argument("--input-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--slo-metric", default="request_latency_p99_ms")
    ap.add_argument("--slo-ms", type=float, default=10_000)
    ap.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--out", type=Path, default=Path("reports/sweep"))
    a = ap.parse_args(argv)
    grid = {}
    for item in a.set:
        key, _, values = item.partition("=")
        grid[key] = values.split(",")
    conc = [int(c) for c in a.concurrency.split(",")]
    s = sweep(grid, conc, Workload(a.input_tokens, a.output_tokens, max(conc)), a.slo_metric, a.slo_ms, a.out,
              a.model_repository)
    best = s["best"]
    print(f"best: {best['variant']} c={best['concurrency']} {best['output_token_throughput_tok_s']:.1f} tok/s"
          if best else "no variant meets the SLO")
    return 0 if best else 1
