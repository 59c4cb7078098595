#!/usr/bin/env bash
# Sets up (same as the demo), installs the load generators, then runs lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_loadgen.sh .venv
bash scripts/check_deploy.sh --install-only
# The kernels' tests run under Triton's CPU interpreter where there is no GPU (CPU wheels of torch lack triton)
.venv/bin/python -c "import triton" 2>/dev/null || .venv/bin/pip install -q -e ".[kernels]"
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
