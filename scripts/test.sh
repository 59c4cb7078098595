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
# Two workers (pytest-xdist), a test file each at a time: module fixtures (servers, engines) start once a file,
# and the single-threaded parts (Triton's interpreter, the clients) overlap. PYTEST_WORKERS=0: one process.
# One OpenMP thread a process under workers: two workers' torch threads spinning on two cores ran the engine tests 4x
# slower (docs/performance.md, "The test suite's time").
[ "${PYTEST_WORKERS:-2}" = 0 ] || export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
