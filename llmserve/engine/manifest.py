"""The build manifest written next to the engine files, and the load-time compatibility check.

A TensorRT engine only runs under the TensorRT (and TensorRT-LLM) version that built it, on GPUs of the
same compute capability. Loading a mismatched engine fails deep inside the runtime with a deserialization
error; the manifest lets the serving side refuse early and print the exact command that rebuilds it.
Stdlib only: llmserve imports this at model load.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import importlib.metadata
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "build_manifest.json"
FORMAT_VERSION = 1

# The one place that says which TensorRT-LLM this project is written against (recipes, engine adapter, contract
# double) and which NGC images ship it; docker-compose.yml and deploy/triton/Dockerfile default to
# DEFAULT_TRITON_IMAGE (tests/test_deploy_files.py keeps them equal). Read from the trtllm-python-py3 table of
# triton-inference-server/server docs/introduction/compatibility.md @0f963c9a8c6913aa4cd9b57ee04f9c2b76ee8d2a.
SUPPORTED_TRTLLM_LINE = (1, 2)
TRITON_TRTLLM_IMAGES: dict[str, tuple[str, str]] = {  # image -> (TensorRT, TensorRT-LLM) it ships
    "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3": ("10.14.1.48", "1.2.1"),
    "nvcr.io/nvidia/tritonserver:26.06-trtllm-python-py3": ("10.14.1.48", "1.2.1"),
    "nvcr.io/nvidia/tritonserver:26.05-trtllm-python-py3": ("10.14.1.48", "1.2.1"),
    "nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3": ("10.14.1.48", "1.2.1"),
    "nvcr.io/nvidia/tritonserver:26.03-trtllm-python-py3": ("10.14.1.48", "1.2.0"),
}
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"


class ManifestError(RuntimeError):
    """The engine cannot be used as built. The message names the rebuild command."""


@dataclass
class Manifest:
    model: dict[str, Any]  # source, architectures, vocab_size, max_position_embeddings, kv_bytes_per_token
    recipe: dict[str, Any]  # name, precision, dtype, quantization
    tp_size: int
    pp_size: int
    tensorrt_version: str
    tensorrt_llm_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    limits: dict[str, Any]
    engine_files: dict[str, str]  # file name -> sha256
    rebuild_command: str
    built_at: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        if raw.get("format_version") != FORMAT_VERSION:
            raise ManifestError(f"manifest format_version {raw.get('format_version')!r}, expected {FORMAT_VERSION}")
        try:
            return cls(**raw)
        except TypeError as e:
            raise ManifestError(f"manifest fields do not match format {FORMAT_VERSION}: {e}") from None


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def engine_file_hashes(engine_dir: str | Path) -> dict[str, str]:
    """rank<N>.engine and config.json, the files trtllm-build writes (tensorrt_llm/builder.py Engine.save)."""
    root = Path(engine_dir)
    files = sorted(root.glob("rank*.engine")) + [root / "config.json"]
    return {p.name: sha256_file(p) for p in files if p.is_file()}


def write_manifest(manifest: Manifest, engine_dir: str | Path) -> Path:
    path = Path(engine_dir) / MANIFEST_NAME
    path.write_text(manifest.to_json(), encoding="utf-8")
    return path


def read_manifest(engine_dir: str | Path, rebuild_hint: str = "python -m build_engines build ...") -> Manifest:
    path = Path(engine_dir) / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME} in {engine_dir}: engines must be built by our builder so they "
                            f"can be checked at load; build them with: {rebuild_hint}") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON ({e}); rebuild with: {rebuild_hint}") from None
    return Manifest.from_dict(raw)


def _version(module: str, dists: tuple[str, ...], import_first: bool) -> str:
    def from_module() -> str | None:
        try:
            return str(importlib.import_module(module).__version__)
        except Exception:  # noqa: BLE001 - a broken install reads as "not installed", which check_manifest names
            return None

    def from_dist() -> str | None:
        for dist in dists:
            try:
                return importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    first, second = (from_module, from_dist) if import_first else (from_dist, from_module)
    return first() or second() or "not installed"


def running_versions() -> tuple[str, str]:
    """(TensorRT, TensorRT-LLM) of this environment, read the same way at build and at load.

    TensorRT from the module (the runtime that deserializes engines); TensorRT-LLM from package metadata
    first because importing it takes seconds.
    """
    trt = _version("tensorrt", ("tensorrt", "tensorrt-cu13", "tensorrt-cu12"), import_first=True)
    return trt, _version("tensorrt_llm", ("tensorrt_llm", "tensorrt-llm"), import_first=False)


def _release_line(version: str) -> tuple[int, ...] | None:
    parts = version.split(".")[:2]
    return tuple(int(p) for p in parts) if len(parts) == 2 and all(p.isdigit() for p in parts) else None


def check_supported_runtime(running_trtllm_version: str) -> None:
    """Refuses a TensorRT-LLM outside SUPPORTED_TRTLLM_LINE: the adapter's calls and the recipes' script flags
    were read from that line's source only, and another release changes both."""
    if _release_line(running_trtllm_version) != SUPPORTED_TRTLLM_LINE:
        line = ".".join(map(str, SUPPORTED_TRTLLM_LINE))
        raise ManifestError(f"TensorRT-LLM {running_trtllm_version} here; llmserve's TensorRT-LLM path is written "
                            f"for {line}.x only. Run it in {DEFAULT_TRITON_IMAGE} (TensorRT-LLM "
                            f"{TRITON_TRTLLM_IMAGES[DEFAULT_TRITON_IMAGE][1]}), or another image of "
                            f"llmserve.engine.manifest.TRITON_TRTLLM_IMAGES")


def _cc_str(cc: str | tuple[int, int] | list[int]) -> str:
    return f"{cc[0]}.{cc[1]}" if isinstance(cc, (tuple, list)) else str(cc)


def check_manifest(manifest: Manifest | dict[str, Any], running_trt_version: str, running_trtllm_version: str,
                   gpu_cc: str | tuple[int, int]) -> None:
    """Raises ManifestError naming every mismatch and the exact rebuild command.

    Versions must match exactly: TensorRT refuses engines from another version, and TensorRT-LLM's plugins
    and engine config change between releases. Compute capability must match because engines are built
    for one SM architecture.
    """
    m = Manifest.from_dict(manifest) if isinstance(manifest, dict) else manifest
    problems = []
    if m.tensorrt_version != running_trt_version:
        problems.append(f"TensorRT {m.tensorrt_version} at build, {running_trt_version} here")
    if m.tensorrt_llm_version != running_trtllm_version:
        problems.append(f"TensorRT-LLM {m.tensorrt_llm_version} at build, {running_trtllm_version} here")
    if _cc_str(m.compute_capability) != _cc_str(gpu_cc):
        problems.append(f"GPU compute capability {m.compute_capability} ({m.gpu_name}) at build, "
                        f"{_cc_str(gpu_cc)} here")
    if problems:
        raise ManifestError(f"engine ({m.recipe.get('name')}, tp={m.tp_size} pp={m.pp_size}) cannot run here: "
                            f"{'; '.join(problems)}. Rebuild on this node with: {m.rebuild_command}")


def verify_engine_files(manifest: Manifest, engine_dir: str | Path) -> None:
    """Optional (hashing GBs takes seconds): refuses engine files changed or missing since the build."""
    actual = engine_file_hashes(engine_dir)
    bad = sorted(n for n, h in manifest.engine_files.items() if actual.get(n) != h)
    if bad:
        raise ManifestError(f"engine files changed or missing since the build: {', '.join(bad)} in {engine_dir}; "
                            f"rebuild with: {manifest.rebuild_command}")


def paged_context_fmha(manifest: Manifest, engine_dir: str | Path) -> bool:
    """Whether the engine was built with paged context FMHA, which chunked context needs.

    The manifest records the build limits (build_engines/recipe.py Limits.use_paged_context_fmha); manifests
    without it fall back to trtllm-build's config.json (build_config.plugin_config), and to False when neither
    says: the executor then runs unchunked, and we must cap prompts accordingly.
    """
    if "use_paged_context_fmha" in manifest.limits:
        return bool(manifest.limits["use_paged_context_fmha"])
    try:
        config = json.loads((Path(engine_dir) / "config.json").read_text(encoding="utf-8"))
        return bool(config["build_config"]["plugin_config"]["use_paged_context_fmha"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
