"""`llm soak`: rounds of concurrent mixed requests against a live server, checking nothing is lost.

Per round: every request ends with exactly one final response; greedy requests are sent twice, streamed
and not, and must give the same text (no token lost or duplicated in the stream); the server's KV blocks
all return to free. Across rounds: the backend's resident memory must not keep growing.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from llm_client.client import LLMClient, RequestError

PROMPTS = ["What is the capital of France?", "Write a haiku about autumn.", "Count from one to twenty.",
           "Explain photosynthesis briefly.", "Give me three tips for sleeping well.", "Translate 'good morning' "
           "to Spanish, French and German.", "Tell me a long story about a dragon and a library."]


@dataclass
class RoundReport:
    requests: int
    mismatches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    kv_free: bool = False
    rss_bytes: float = 0.0
    seconds: float = 0.0


def scrape(metrics_url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in urllib.request.urlopen(metrics_url, timeout=5).read().decode().splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", line)
        if m:
            key = m.group(1) + (m.group(2) or "")
            out[key] = float(m.group(3))
    return out


def _sum(metrics: dict[str, float], name: str, label: str = "") -> float:
    return sum(v for k, v in metrics.items() if (k == name or k.startswith(name + "{")) and label in k)


def _one(client: LLMClient, i: int, rng: random.Random) -> tuple[str | None, str | None]:
    """Returns (mismatch, error) descriptions, or Nones."""
    prompt = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
    max_tokens = rng.choice([4, 16, 48, 96])
    try:
        if i % 2 == 0:  # greedy: streamed text must equal the unary text
            a = client.generate(messages=prompt, stream=True, temperature=0, max_tokens=max_tokens)
            b = client.generate(messages=prompt, stream=False, temperature=0, max_tokens=max_tokens)
            if a.text != b.text or not a.chunks[-1].final:
                return f"request {i}: streamed {a.text!r} != unary {b.text!r}", None
        else:
            params = {"temperature": rng.choice([0.5, 0.8, 1.0]), "top_p": rng.choice([0.9, 1.0]),
                      "top_k": rng.choice([0, 40]), "repetition_penalty": rng.choice([1.0, 1.1]),
                      "max_tokens": max_tokens, "seed": rng.randrange(1 << 30)}
            r = client.generate(messages=prompt, stream=rng.random() < 0.5, **params)
            if r.finish_reason not in ("stop", "length"):
                return f"request {i}: finish_reason {r.finish_reason}", None
    except RequestError as exc:
        return None, f"request {i}: {exc}"
    return None, None


def run_round(url: str, metrics_url: str, count: int, concurrency: int, seed: int) -> RoundReport:
    rng = random.Random(seed)
    t0 = time.monotonic()
    report = RoundReport(count)
    with ThreadPoolExecutor(concurrency) as pool:
        seeds = [rng.randrange(1 << 30) for _ in range(count)]
        results = list(pool.map(lambda i: _one(LLMClient(url, retries=5), i, random.Random(seeds[i])), range(count)))
    report.mismatches = [m for m, _ in results if m]
    report.errors = [e for _, e in results if e]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        m = scrape(metrics_url)
        if _sum(m, "llm_kv_cache_blocks", 'state="used"') == 0 and _sum(m, "llm_requests_running") == 0:
            report.kv_free = True
            break
        time.sleep(0.2)
    time.sleep(0.3)  # one housekeeping period, so the memory gauge is fresh
    report.rss_bytes = _sum(scrape(metrics_url), "llm_backend_resident_memory_bytes")
    report.seconds = time.monotonic() - t0
    return report


def soak(url: str, metrics_url: str, rounds: int, count: int, concurrency: int, duration_s: float,
         max_growth_bytes: float, out=sys.stdout) -> dict:
    reports: list[RoundReport] = []
    start = time.monotonic()
    for r in range(rounds):
        if duration_s and time.monotonic() - start > duration_s:
            break
        rep = run_round(url, metrics_url, count, concurrency, seed=r)
        reports.append(rep)
        print(f"round {r + 1}: {rep.requests} requests in {rep.seconds:.1f}s, mismatches {len(rep.mismatches)}, "
              f"errors {len(rep.errors)}, kv free {rep.kv_free}, backend RSS {rep.rss_bytes / 2**20:.0f} MiB",
              file=out, flush=True)
    # The first round warms caches and allocators; growth is judged from the second round on.
    base = reports[1].rss_bytes if len(reports) > 2 else reports[0].rss_bytes
    growth = reports[-1].rss_bytes - base
    summary = {
        "rounds": len(reports), "requests": sum(r.requests for r in reports),
        "mismatches": [m for r in reports for m in r.mismatches], "errors": [e for r in reports for e in r.errors],
        "kv_free_every_round": all(r.kv_free for r in reports), "rss_mib": [r.rss_bytes / 2**20 for r in reports],
        "rss_growth_mib": growth / 2**20, "max_growth_mib": max_growth_bytes / 2**20,
    }
    summary["ok"] = (not summary["mismatches"] and not summary["errors"] and summary["kv_free_every_round"]
                     and growth <= max_growth_bytes)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llm soak", description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="localhost:8001", help="gRPC address")
    ap.add_argument("--metrics-url", default="http://localhost:8002/metrics")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--count", type=int, default=32, help="requests per round")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=0, help="stop starting rounds after this many seconds")
    ap.add_argument("--max-growth-mib", type=float, default=64)
    ap.add_argument("--json", default=None, help="write the summary here")
    a = ap.parse_args(argv)
    summary = soak(a.url, a.metrics_url, a.rounds, a.count, a.concurrency, a.duration, a.max_growth_mib * 2**20)
    print(json.dumps(summary, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0 if summary["ok"] else 1
