"""The deployment checks' tools (tests/test_deploy_files.py, tests/test_deploy_monitoring.py): found on the machine or
installed once by `bash scripts/check_deploy.sh --install-only`; a test that needs a tool still missing skips."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
VENV = Path(os.environ.get("DEPLOYCHECK_VENV", ROOT / ".venv-deploycheck"))
if not VENV.is_absolute():
    VENV = ROOT / VENV
VALIDATE = DEPLOY / "tools" / "validate_deploy.py"
PROFILES = ["fp16", "replica2", "fp8", "int8_sq", "int4_awq", "tp2", "cpu", "openai", "torch_1gpu", "torch_dp2",
            "torch_tp2", "torch_dp2_tp2", "torch_pp2", "torch_dp2_pp2"]
OUR_METRICS = ["llm_time_to_first_token_seconds", "llm_time_per_output_token_seconds",
               "llm_e2e_request_latency_seconds", "llm_prompt_tokens_total", "llm_generation_tokens_total",
               "llm_requests_running", "llm_requests_waiting", "llm_kv_cache_blocks", "llm_prefix_cache_hits_total",
               "llm_prefix_cache_queries_total", "llm_request_cancellations_total", "llm_request_failures_total",
               "llm_response_repetition_ratio"]

_install_log: list[str] = []


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                      None)


def _tools_present() -> dict[str, str | None]:
    vpy = VENV / "bin" / "python"
    ok = vpy.exists() and subprocess.run([str(vpy), "-c", "import jsonschema, kubernetes_validate, yaml"],
                                         capture_output=True).returncode == 0
    return {"docker-compose": _which("docker-compose"), "promtool": _which("promtool"), "nginx": _which("nginx"),
            "deploycheck-python": str(vpy) if ok else None,
            "hadolint": str(VENV / "bin" / "hadolint") if (VENV / "bin" / "hadolint").exists() else None}


def find_tools() -> dict[str, str | None]:
    """Each tool's path (None: missing), after one run of the installer if any was missing (the `tools` fixture)."""
    found = _tools_present()
    if not all(found.values()):
        p = subprocess.run(["bash", str(ROOT / "scripts" / "check_deploy.sh"), "--install-only"],
                           capture_output=True, text=True, timeout=900)
        _install_log.append((p.stdout + p.stderr)[-2000:])
        found = _tools_present()
    return found


def need(tools: dict[str, str | None], name: str) -> str:
    if not tools.get(name):
        pytest.skip(f"{name} is not installed and `scripts/check_deploy.sh --install-only` could not install it: "
                    f"{''.join(_install_log)[-500:]}")
    return tools[name]  # type: ignore[return-value]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, **kw)
