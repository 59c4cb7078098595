#!/usr/bin/env bash
# Sets up, starts the real Triton server on model_repository/, streams an answer, and stops the server.
# To keep serving instead: .venv/bin/python -m llmserve.launch serve
#   bash scripts/demo.sh [PROMPT]            stream over gRPC with the `llm` client
#   bash scripts/demo.sh --openai [PROMPT]   (or LLM_DEMO_OPENAI=1) also start the OpenAI-compatible front
#                                            (python -m llm_client.openai_server) and stream through the `openai` SDK
set -euo pipefail
cd "$(dirname "$0")/.."
OPENAI=${LLM_DEMO_OPENAI:-0}
if [ "${1:-}" = "--openai" ]; then
    OPENAI=1
    shift
fi
bash scripts/setup.sh
PROMPT=${1:-"What is the capital of France?"}
if [ "$OPENAI" = 1 ]; then
.venv/bin/python - "$PROMPT" <<'PY'
import socket
import subprocess
import sys
import time
import urllib.request

import openai

from llmserve.launch.tritonserver import TritonServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, front: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and front.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"the OpenAI front did not become ready at {url} (exit code {front.poll()})")


with TritonServer("model_repository", log_path=".cache/tritonserver.log") as server:
    url = f"http://127.0.0.1:{free_port()}"
    front = subprocess.Popen([sys.executable, "-m", "llm_client.openai_server", "--triton", server.grpc_url,
                              "--port", url.rsplit(":", 1)[1], "--log-level", "warning"])
    try:
        wait_ready(url, front)
        print(f"tritonserver ready (gRPC {server.grpc_url}); OpenAI front at {url}/v1; streaming through the "
              "openai SDK:", flush=True)
        print(f"you> {sys.argv[1]}\nllm> ", end="", flush=True)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model="llm", messages=[{"role": "user", "content": sys.argv[1]}],
                                                max_tokens=128, temperature=0, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
    finally:
        front.terminate()
        front.wait(15)
PY
exit 0
fi
.venv/bin/python - "$PROMPT" <<'PY'
import sys
from llmserve.launch.tritonserver import TritonServer
from llm_client.cli import main as llm

with TritonServer("model_repository", log_path=".cache/tritonserver.log") as server:
    print(f"tritonserver ready (HTTP {server.http_url}, gRPC {server.grpc_url}); streaming over gRPC:", flush=True)
    print(f"you> {sys.argv[1]}\nllm> ", end="", flush=True)
    code = llm(["generate", "--chat", "--max-tokens", "128", "--temperature", "0", "--url", server.grpc_url, sys.argv[1]])
sys.exit(code)
PY
