"""Closed-loop load on the engine directly, and the latency/throughput summary shared by every path."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Record:
    submit: float
    token_times: list[float] = field(default_factory=list)
    error: str | None = None
    wanted: int | None = None  # the output length asked for, where requests differ in it


def request_tokens(i: int, tokens: int, spread: float) -> int:
    """Request i's output length: `tokens`, or with spread > 0 a length seeded by i within tokens x [1 -+ spread]."""
    if spread <= 0:
        return tokens
    return max(1, round(tokens * (1 + spread * (2 * random.Random(i).random() - 1))))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def steady_throughput(records: list[Record]) -> float | None:
    """Output tok/s between the first answer's end and the last submission: the stretch in which finished requests
    are replaced at once, as in trtllm-bench's runs of thousands of requests (None for a single wave)."""
    start = min((r.token_times[-1] for r in records if r.token_times), default=None)
    end = max(r.submit for r in records) if records else None
    if start is None or end is None or end - start < 0.05:
        return None
    tokens = sum(start < t <= end for r in records for t in r.token_times)
    return tokens / (end - start)


def summarize(records: list[Record], wall: float, concurrency: int, in_len: int, out_len: int) -> dict:
    tokens = sum(len(r.token_times) for r in records)
    ttft = [(r.token_times[0] - r.submit) * 1000 for r in records if r.token_times]
    itl = [(b - a) * 1000 for r in records for a, b in zip(r.token_times, r.token_times[1:])]
    ms = lambda v: None if v is None else round(v, 3)  # noqa: E731
    return {
        "concurrency": concurrency, "input_len": in_len, "output_len": out_len, "requests": len(records),
        "errors": sum(r.error is not None for r in records),
        "short_responses": sum(len(r.token_times) != (r.wanted or out_len) for r in records),
        "output_tokens": tokens, "wall_s": round(wall, 3), "throughput_tok_s": round(tokens / wall, 1),
        "requests_per_s": round(len(records) / wall, 1),
        "steady_tok_s": ms(steady_throughput(records)),
        "ttft_ms_p50": ms(percentile(ttft, 50)), "ttft_ms_p99": ms(percentile(ttft, 99)),
        "itl_ms_p50": ms(percentile(itl, 50)), "itl_ms_p99": ms(percentile(itl, 99)),
        "itl_ms_mean": ms(statistics.fmean(itl)) if itl else None,
    }


def drive_engine(engine, prompts: list[list[int]], out_len: int | list[int], concurrency: int,
                 sampling: dict | None = None) -> tuple[list[Record], float]:
    """Keeps `concurrency` requests in flight on a TorchEngine until every prompt is answered. Generation
    ignores EOS, so every request produces exactly `out_len` tokens (or its own, a list given); greedy unless
    `sampling` (SamplingParams fields, `bench.run --sampling`) says otherwise."""
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams

    lengths = out_len if isinstance(out_len, list) else None
    fields = {"temperature": 0.0, **(sampling or {}), "ignore_eos": True}
    params = {n: SamplingParams(**fields, max_tokens=n) for n in set(lengths or [out_len])}  # one per length
    records: dict[str, Record] = {}
    pending = list(enumerate(prompts))
    in_flight = 0
    start = time.perf_counter()

    def submit():
        nonlocal in_flight
        i, ids = pending.pop(0)
        rid = f"r{i}"
        n = lengths[i] if lengths else out_len
        records[rid] = Record(time.perf_counter(), wanted=n if lengths else None)
        engine.add_request(EngineRequest(rid, ids, params[n]))
        in_flight += 1

    while pending and in_flight < concurrency:
        submit()
    while engine.has_work():
        outs = engine.step()
        now = time.perf_counter()
        for o in outs:
            r = records[o.request_id]
            r.token_times.extend([now] * len(o.new_token_ids))
            if o.finish_reason is not None:
                if o.finish_reason not in ("length", "stop"):
                    r.error = o.finish_reason
                in_flight -= 1
        while pending and in_flight < concurrency:
            submit()
    return list(records.values()), time.perf_counter() - start


def engine_tokens(engine, prompts: list[list[int]], lengths: list[int]) -> dict[str, list[int]]:
    """Greedy answers (EOS ignored) of all prompts submitted at once."""
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams

    out: dict[str, list[int]] = {}
    for i, (ids, n) in enumerate(zip(prompts, lengths)):
        engine.add_request(EngineRequest(f"t{i}", ids, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)))
        out[f"t{i}"] = []
    while engine.has_work():
        for o in engine.step():
            out[o.request_id] += o.new_token_ids
    return out


def async_matches_sync(engine, prompts: list[list[int]], lengths: list[int]) -> dict:
    """The same requests with async scheduling off and on, on one engine: the tokens must be identical. A first
    pass fills the prefix cache, so both measured passes reuse the same blocks."""
    saved = engine.async_scheduling
    try:
        engine_tokens(engine, prompts, lengths)
        engine.async_scheduling = False
        sync = engine_tokens(engine, prompts, lengths)
        engine.async_scheduling = True
        fast = engine_tokens(engine, prompts, lengths)
    finally:
        engine.async_scheduling = saved
    differing = sorted(k for k in sync if sync[k] != fast[k])
    return {"requests": len(prompts), "tokens": sum(len(v) for v in sync.values()), "identical": not differing,
            "differing": differing[:10]}
