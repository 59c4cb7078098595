"""Command lines of perf_analyzer, genai-perf and aiperf as `(argv, env)`, and the input files they read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_client.loadgen.tools import LoadgenTools, find_tools, prepend_path


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
    prepend_path(env, "LD_LIBRARY_PATH", str(tools.perf_analyzer_lib))
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
    warmup_request_count = _warmup_count(concurrency, request_rate, warmup_request_count)
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
    return argv, _genai_perf_env(tools)


def _warmup_count(concurrency: int | None, request_rate: float | None, asked: int) -> int:
    """Warm-up requests perf_analyzer 2.51 survives: none or one a slot or more (concurrency), none at a rate."""
    if request_rate is not None:
        return 0  # with --request-rate-range any warm-up made perf_analyzer 2.51 hang (seen here)
    if concurrency is not None and 0 < asked < concurrency:
        # perf_analyzer 2.51 hangs forever after warm-up when 0 < warmup requests < concurrency (seen here:
        # --concurrency-range 4 --warmup-request-count 2 never returns); warm every slot instead.
        return int(concurrency)
    return asked


def _genai_perf_env(tools: LoadgenTools) -> dict[str, str]:
    """Offline, with the 2.51 perf_analyzer first on PATH (setup_loadgen.sh links it into genai/bin) and its libs."""
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    prepend_path(env, "PATH", str(tools.genai_perf.parent))
    prepend_path(env, "LD_LIBRARY_PATH", str(tools.perf_analyzer_lib))
    return env


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
