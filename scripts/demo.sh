#!/usr/bin/env bash
# Sets up, starts the real Triton server on model_repository/, streams an answer, and stops the server.
# To keep serving instead: .venv/bin/python -m llmserve.launch serve
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PROMPT=${1:-"What is the capital of France?"}
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
