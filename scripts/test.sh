#!/usr/bin/env bash
# Sets up (same as the demo), installs the load generators, then runs lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_loadgen.sh .venv
bash scripts/check_deploy.sh --install-only
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
