"""The command: `python -m llm_client.openai_server --triton localhost:8001 --port 9000` (or `llm openai ...`)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile

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
    ap.add_argument("--workers", type=int, default=1,
                    help="processes serving the port (one event loop each, every one with its own channel to "
                    "Triton; /metrics adds up all of them). One loop answers about 5-15k streamed tokens a second")
    ap.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return ap


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Serves until Ctrl-C or SIGTERM (uvicorn finishes open requests for up to 10 s)."""
    ap = parser(prog or "python -m llm_client.openai_server")
    a = ap.parse_args(argv)
    if a.workers < 1:
        ap.error(f"--workers must be at least 1, got {a.workers}")
    common = dict(host=a.host, port=a.port, log_level=a.log_level, timeout_graceful_shutdown=10)
    if a.workers == 1:
        uvicorn.run(create_app(a.triton, a.model, a.served_names), **common)
        return 0
    # Worker processes build the app themselves (uvicorn imports the factory in each); the metrics of all of
    # them go through files in one fresh folder (prometheus_client's multiprocess mode), set before they start.
    os.environ[ARGS_ENV] = json.dumps({"triton_url": a.triton, "model": a.model, "served_names": a.served_names})
    with tempfile.TemporaryDirectory(prefix="llm-openai-metrics-") as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        uvicorn.run("llm_client.openai_server.app:app_from_env", factory=True, workers=a.workers, **common)
    return 0
