"""The command: `python -m llm_client.openai_server --triton localhost:8001 --port 9000` (or `llm openai ...`)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import uvicorn

from llm_client.openai_server.app import ARGS_ENV, create_app


def parser(prog: str = "python -m llm_client.openai_server") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="OpenAI-compatible endpoint in front of the llm Triton model")
    ap.add_argument("--triton", default="localhost:8001", help="Triton's gRPC address (default localhost:8001)")
    ap.add_argument("--model", default="llm", help="the Triton model to call (default llm)")
    ap.add_argument("--served-model-name", dest="served_names", action="append", default=None,
                    help="a name clients may send as `model` (repeatable; default: the Triton model's name)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--workers", default="auto",
                    help="processes serving the port (one event loop each, every one with its own channel to "
                    "Triton; /metrics adds up all of them). One loop answers about 5-15k streamed tokens a second. "
                    "auto (default): one per 4 cores this process may use, 1 to 8")
    ap.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return ap


def cgroup_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """The CPUs a cgroup v2 quota allows (a container's CPU limit), or None without one."""
    try:
        quota, period = cpu_max.read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def auto_workers(cores: int, quota: float | None) -> int:
    """One front process per 4 cores, 1 to 8. Measured with the synthetic engine: on 2 cores a second process
    lowered throughput; on 16, four added less to the time to first token than two at 256 streams (README)."""
    usable = cores if quota is None else min(cores, int(quota))
    return max(1, min(8, usable // 4))


def workers(value: str) -> int:
    if value == "auto":
        return auto_workers(len(os.sched_getaffinity(0)), cgroup_cpus())
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--workers must be 'auto' or at least 1, got {value!r}")
    return n


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Serves until Ctrl-C or SIGTERM (uvicorn finishes open requests for up to 10 s)."""
    ap = parser(prog or "python -m llm_client.openai_server")
    a = ap.parse_args(argv)
    try:
        n = workers(a.workers)
    except ValueError as exc:
        ap.error(str(exc))
    common = dict(host=a.host, port=a.port, log_level=a.log_level, timeout_graceful_shutdown=10)
    if n == 1:
        uvicorn.run(create_app(a.triton, a.model, a.served_names), **common)
        return 0
    # Worker processes build the app themselves (uvicorn imports the factory in each); the metrics of all of
    # them go through files in one fresh folder (prometheus_client's multiprocess mode), set before they start.
    os.environ[ARGS_ENV] = json.dumps({"triton_url": a.triton, "model": a.model, "served_names": a.served_names})
    with tempfile.TemporaryDirectory(prefix="llm-openai-metrics-") as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        uvicorn.run("llm_client.openai_server.app:app_from_env", factory=True, workers=n, **common)
    return 0
