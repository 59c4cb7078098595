"""The command: `python -m llm_client.openai_server --triton localhost:8001 --port 9000` (or `llm openai ...`)."""

from __future__ import annotations

import argparse

import uvicorn

from llm_client.openai_server.app import create_app


def parser(prog: str = "python -m llm_client.openai_server") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="OpenAI-compatible endpoint in front of the llm Triton model")
    ap.add_argument("--triton", default="localhost:8001", help="Triton's gRPC address (default localhost:8001)")
    ap.add_argument("--model", default="llm", help="the Triton model to call (default llm)")
    ap.add_argument("--served-model-name", dest="served_names", action="append", default=None,
                    help="a name clients may send as `model` (repeatable; default: the Triton model's name)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return ap


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Serves until Ctrl-C or SIGTERM (uvicorn finishes open requests for up to 10 s)."""
    a = parser(prog or "python -m llm_client.openai_server").parse_args(argv)
    app = create_app(a.triton, a.model, a.served_names)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level, timeout_graceful_shutdown=10)
    return 0

