"""The tools' result files as plain dicts whose keys are the metric names of `client/targets/*.yaml`."""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STATS = ("avg", "min", "max", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99", "std")


# genai-perf JSON key -> our metric prefix
_GENAI_SERIES = {
    "time_to_first_token": "ttft",
    "time_to_second_token": "ttst",
    "inter_token_latency": "itl",
    "request_latency": "request_latency",
    "output_token_throughput_per_user": "output_token_throughput_per_user",
    "output_sequence_length": "output_sequence_length",
    "input_sequence_length": "input_sequence_length",
}


_UNIT_SUFFIX = {"ms": "_ms", "tokens/sec/user": "_tok_s", "tokens": "", "tokens/sec": "_tok_s",
                "requests/sec": "_req_s"}


def _num(text: str) -> int | float | str | None:
    text = text.strip()
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def parse_perf_analyzer_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One dict per load level from ``perf_analyzer -f CSV`` (with or without ``--verbose-csv``).

    Keeps every column under its own header (numbers converted, empty cells -> None) and adds normalised keys:
    ``mode`` (``concurrency`` / ``request_rate``), ``load`` (the level), ``request_throughput_req_s``,
    ``response_throughput_per_s`` and ``request_latency_{avg,p50,p90,p95,p99}_ms`` (perf_analyzer reports usec).
    For streaming, latency is first request byte to the final response.
    """
    with open(path, newline="") as fh:
        lines = [ln for ln in fh.read().splitlines()]
    # perf_analyzer may append further sections after a blank line; the first block is the per-load table.
    block: list[str] = []
    for ln in lines:
        if not ln.strip():
            if block:
                break
            continue
        block.append(ln)
    if not block:
        raise ValueError(f"{path}: empty perf_analyzer CSV")
    reader = csv.DictReader(block)
    header = reader.fieldnames or []
    if not header or header[0] not in ("Concurrency", "Request Rate"):
        raise ValueError(f"{path}: not a perf_analyzer CSV (first column {header[:1]})")
    rows = []
    for raw in reader:
        row: dict[str, Any] = {k: _num(v or "") for k, v in raw.items() if k is not None}
        row["mode"] = "concurrency" if header[0] == "Concurrency" else "request_rate"
        row["load"] = row[header[0]]
        row["request_throughput_req_s"] = row.get("Inferences/Second")
        row["response_throughput_per_s"] = row.get("Response Throughput")
        for stat, col in (("avg", "Avg latency"), ("p50", "p50 latency"), ("p90", "p90 latency"),
                          ("p95", "p95 latency"), ("p99", "p99 latency")):
            us = row.get(col)
            row[f"request_latency_{stat}_ms"] = us / 1000.0 if isinstance(us, (int, float)) else None
        rows.append(row)
    return rows


def perf_analyzer_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The target-named metrics in one ``parse_perf_analyzer_csv`` row (non-missing only)."""
    keys = ["request_throughput_req_s"] + [f"request_latency_{s}_ms" for s in ("avg", "p50", "p90", "p95", "p99")]
    return {k: float(row[k]) for k in keys if isinstance(row.get(k), (int, float))}


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    import statistics

    vs = sorted(values)

    def pct(p: float) -> float:  # linear interpolation, as numpy's default
        k = (len(vs) - 1) * p / 100.0
        lo, hi = int(k), min(int(k) + 1, len(vs) - 1)
        return vs[lo] + (vs[hi] - vs[lo]) * (k - lo)

    out = {"avg": statistics.fmean(vs), "min": vs[0], "max": vs[-1]}
    for p in (50, 90, 95, 99):
        out[f"p{p}"] = pct(p)
    return out


def parse_perf_analyzer_profile_export(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per-experiment TTFT / inter-response latency / request latency from ``--profile-export-file``.

    Each streamed response counts as one "token" for ``itl`` (true for models that stream one token per response;
    otherwise read it as inter-response latency). Returns one dict per experiment: ``mode``, ``load``,
    ``request_count``, ``ttft_*_ms``, ``itl_*_ms``, ``request_latency_*_ms``, ``responses_per_request_avg``.
    """
    with open(path) as fh:
        data = json.load(fh)
    out = []
    for exp in data.get("experiments", []):
        meta = exp.get("experiment", {})
        ttft, itl, e2e, nresp = [], [], [], []
        for req in exp.get("requests", []):
            t0 = req.get("timestamp")
            ts = req.get("response_timestamps") or []
            if t0 is None or not ts:
                continue
            ttft.append((ts[0] - t0) / 1e6)
            e2e.append((ts[-1] - t0) / 1e6)
            itl.extend((b - a) / 1e6 for a, b in zip(ts, ts[1:]))
            nresp.append(len(ts))
        row: dict[str, Any] = {"mode": meta.get("mode"), "load": meta.get("value"), "request_count": len(e2e)}
        for name, vals in (("ttft", ttft), ("itl", itl), ("request_latency", e2e)):
            for stat, v in _percentiles(vals).items():
                row[f"{name}_{stat}_ms"] = v
        row["responses_per_request_avg"] = sum(nresp) / len(nresp) if nresp else None
        out.append(row)
    return out


def _newest(artifact_dir: str | os.PathLike[str], pattern: str, shown: str) -> Path:
    hits = glob.glob(os.path.join(str(artifact_dir), "**", pattern), recursive=True)
    if not hits:
        raise FileNotFoundError(f"no {shown} under {artifact_dir}")
    return Path(max(hits, key=os.path.getmtime))


def find_genai_perf_json(artifact_dir: str | os.PathLike[str]) -> Path:
    """The newest ``*_genai_perf.json`` under ``artifact_dir`` (genai-perf nests a per-run folder)."""
    return _newest(artifact_dir, "*genai_perf.json", "*_genai_perf.json")


def parse_genai_perf_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Flatten ``profile_export_genai_perf.json`` into target-named metrics.

    e.g. ``ttft_p50_ms``, ``ttft_p99_ms``, ``itl_p99_ms``, ``request_latency_p99_ms``,
    ``output_token_throughput_tok_s``, ``request_throughput_req_s``, ``output_token_throughput_per_user_p50_tok_s``,
    ``output_sequence_length_avg``, ``request_count``; plus ``model``, ``concurrency``, ``request_rate``,
    ``streaming`` and ``input_tokens_mean``/``output_tokens_mean`` read from its ``input_config`` when present.
    """
    with open(path) as fh:
        return _genai_perf_metrics(json.load(fh), path)


def _genai_perf_metrics(data: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    if not isinstance(data, dict) or "request_throughput" not in data and "time_to_first_token" not in data:
        raise ValueError(f"{path}: not a genai-perf profile_export_genai_perf.json")
    out: dict[str, Any] = {}
    for key, prefix in _GENAI_SERIES.items():
        series = data.get(key)
        if not isinstance(series, dict):
            continue
        suffix = _UNIT_SUFFIX.get(series.get("unit", ""), "")
        for stat in STATS:
            if isinstance(series.get(stat), (int, float)):
                out[f"{prefix}_{stat}{suffix}"] = float(series[stat])
    for key, name in (("output_token_throughput", "output_token_throughput_tok_s"),
                      ("request_throughput", "request_throughput_req_s"),
                      ("request_goodput", "request_goodput_req_s")):
        series = data.get(key)
        if isinstance(series, dict) and isinstance(series.get("avg"), (int, float)):
            out[name] = float(series["avg"])
    rc = data.get("request_count")
    if isinstance(rc, dict) and isinstance(rc.get("avg"), (int, float)):
        out["request_count"] = int(rc["avg"])
    cfg = data.get("input_config")
    if isinstance(cfg, dict):
        out.update(_genai_config(cfg))
    return out


def find_aiperf_json(artifact_dir: str | os.PathLike[str]) -> Path:
    """The newest ``profile_export_aiperf.json`` under ``artifact_dir``."""
    return _newest(artifact_dir, "profile_export_aiperf.json", "profile_export_aiperf.json")


def parse_aiperf_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``profile_export_aiperf.json`` (aiperf 0.13) into the same metric names as ``parse_genai_perf_json``."""
    with open(path) as fh:
        data = json.load(fh)
    out = _genai_perf_metrics(data, path)
    err = data.get("request_error_rate")
    if isinstance(err, dict) and isinstance(err.get("avg"), (int, float)):
        out["request_error_rate_pct"] = float(err["avg"])
    return out


def _aiperf_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    items = (cfg.get("models") or {}).get("items") or []
    if items and isinstance(items[0], Mapping) and "name" in items[0]:
        out["model"] = items[0]["name"]
    endpoint = cfg.get("endpoint") or {}
    if "streaming" in endpoint:
        out["streaming"] = bool(endpoint["streaming"])
    for phase in cfg.get("phases") or []:
        if isinstance(phase, Mapping) and phase.get("kind") == "profiling":
            if phase.get("concurrency") is not None:
                out["concurrency"] = phase["concurrency"]
            if phase.get("rate") is not None:
                out["request_rate"] = phase["rate"]
    for ds in cfg.get("datasets") or []:
        prompts = (ds or {}).get("prompts") or {}
        if "mean" in (prompts.get("isl") or {}):
            out["input_tokens_mean"] = prompts["isl"]["mean"]
        if "mean" in (prompts.get("osl") or {}):
            out["output_tokens_mean"] = prompts["osl"]["mean"]
        break
    return out


def _genai_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    if "phases" in cfg or "models" in cfg:
        return _aiperf_config(cfg)
    out: dict[str, Any] = {}
    models = cfg.get("model_names") or cfg.get("model_name")
    if isinstance(models, list) and models:
        out["model"] = models[0]
    elif isinstance(models, str):
        out["model"] = models
    endpoint = cfg.get("endpoint") or {}
    if "streaming" in endpoint:
        out["streaming"] = bool(endpoint["streaming"])
    stimulus = (cfg.get("perf_analyzer") or {}).get("stimulus") or {}
    if "concurrency" in stimulus:
        out["concurrency"] = stimulus["concurrency"]
    if "request_rate" in stimulus:
        out["request_rate"] = stimulus["request_rate"]
    synthetic = ((cfg.get("input") or {}).get("synthetic_tokens")) or {}
    if "mean" in synthetic:
        out["input_tokens_mean"] = synthetic["mean"]
    output_tokens = (cfg.get("input") or {}).get("output_tokens") or {}
    if "mean" in output_tokens:
        out["output_tokens_mean"] = output_tokens["mean"]
    return out
