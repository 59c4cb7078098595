"""Checks that run before any build work: GPU count, compute capability, head/layer splits, memory.

A quantization + engine build takes tens of minutes; these checks turn the failures we can predict from
config.json and the GPU facts into one clear message up front.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from build_engines.recipe import Recipe

GIB = 1024**3
# Fraction of GPU memory the estimate may fill: the rest is CUDA context, activations and TRT workspace.
MEMORY_HEADROOM = 0.9
LINEAR_BYTES = {"fp16": 2.0, "bf16": 2.0, "int8_sq": 1.0, "int8_wo": 1.0, "fp8": 1.0, "int4_awq": 0.5}


class BuildCheckError(ValueError):
    pass


@dataclass
class HardwareFacts:
    gpu_count: int | None = None
    gpu_memory_bytes: int | None = None
    compute_capability: tuple[int, int] | None = None
    gpu_name: str | None = None


@dataclass
class ModelShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int | None
    architectures: list[str]

    @classmethod
    def from_config(cls, cfg: dict) -> ModelShape:
        heads = cfg["num_attention_heads"]
        return cls(hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
                   num_kv_heads=cfg.get("num_key_value_heads") or heads,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                   intermediate_size=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   max_position_embeddings=cfg.get("max_position_embeddings"),
                   architectures=list(cfg.get("architectures") or []))

    @classmethod
    def from_dir(cls, checkpoint_dir: str | Path) -> ModelShape:
        path = Path(checkpoint_dir) / "config.json"
        try:
            return cls.from_config(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise BuildCheckError(f"checkpoint: no config.json in {checkpoint_dir}") from None
        except KeyError as e:
            raise BuildCheckError(f"checkpoint: {path} lacks {e.args[0]!r} (not a Llama-family config?)") from None


def parse_compute_capability(value: str | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, tuple):
        return value
    try:
        major, minor = (int(x) for x in str(value).split("."))
    except ValueError:
        raise BuildCheckError(f"compute capability: expected 'major.minor', got {value!r}") from None
    return major, minor


def detect_hardware() -> HardwareFacts:
    """The GPUs visible to this process (CUDA_VISIBLE_DEVICES applies); empty facts on a CPU machine."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return HardwareFacts(torch.cuda.device_count(), props.total_memory, (props.major, props.minor),
                                 props.name)
    except ImportError:
        pass
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,compute_cap",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False)
        rows = [r.split(", ") for r in out.stdout.strip().splitlines() if r.strip()]
        if out.returncode == 0 and rows:
            name, mem_mib, cc = rows[0]
            return HardwareFacts(len(rows), int(float(mem_mib)) * 1024**2, parse_compute_capability(cc), name)
    return HardwareFacts(gpu_count=0)


def estimate_weight_bytes(shape: ModelShape, recipe: Recipe) -> float:
    """All ranks together. Embeddings and lm_head stay 16-bit (TRT-LLM excludes them from quantization)."""
    s, keep = shape, recipe.quantization.keep_fp16
    q_bytes = LINEAR_BYTES[recipe.precision]
    attn = s.hidden_size * s.head_dim * (2 * s.num_heads + 2 * s.num_kv_heads)
    mlp = 3 * s.hidden_size * s.intermediate_size
    fp16_layers = min(2, s.num_layers) if "first_last_layers" in keep else 0
    quant_layers = s.num_layers - fp16_layers
    attn_bytes = 2.0 if "attention" in keep else q_bytes
    total = fp16_layers * (attn + mlp) * 2.0 + quant_layers * (attn * attn_bytes + mlp * q_bytes)
    embeddings = s.vocab_size * s.hidden_size * (1 if s.tie_word_embeddings else 2)
    return total + embeddings * 2.0


def kv_bytes_per_token(shape: ModelShape, recipe: Recipe) -> float:
    """Per GPU: TP splits the KV heads (replicating them when tp > kv heads), PP splits the layers."""
    elem = 1 if recipe.quantization.kv_cache_dtype in ("fp8", "int8") else 2
    kv_heads = math.ceil(shape.num_kv_heads / recipe.tp_size)
    layers = math.ceil(shape.num_layers / recipe.pp_size)
    return 2 * layers * kv_heads * shape.head_dim * elem


def validate_plan(recipe: Recipe, shape: ModelShape | None, hw: HardwareFacts, strict: bool) -> list[str]:
    """Raises BuildCheckError on a plan that cannot work. Returns warnings for what could not be checked.

    strict=False (dry run): GPU facts that are unknown become warnings instead of errors.
    """
    warnings: list[str] = []

    def unknown(what: str) -> None:
        msg = f"{what} unknown on this machine; pass it (--gpus / --gpu-memory-gib / --compute-capability)"
        if strict:
            raise BuildCheckError(msg)
        warnings.append(f"not checked: {msg}")

    world = recipe.world_size
    if not hw.gpu_count:
        unknown("GPU count")
    elif world > hw.gpu_count:
        raise BuildCheckError(f"tp_size*pp_size = {recipe.tp_size}*{recipe.pp_size} = {world} needs {world} GPUs, "
                              f"{hw.gpu_count} visible; lower --tp/--pp or expose more GPUs (CUDA_VISIBLE_DEVICES)")
    if hw.compute_capability is None:
        unknown("compute capability")
    elif hw.compute_capability < recipe.min_compute_capability:
        need = ".".join(map(str, recipe.min_compute_capability))
        have = ".".join(map(str, hw.compute_capability))
        what = "FP8" if recipe.precision == "fp8" or recipe.quantization.kv_cache_dtype == "fp8" else recipe.precision
        raise BuildCheckError(f"recipe {recipe.name}: {what} needs compute capability >= {need} (Ada/Hopper for "
                              f"FP8); this GPU ({hw.gpu_name or 'unknown'}) is {have}. Pick fp16/int8_wo/int8_sq.")
    if shape is None:
        warnings.append("not checked: model shape and memory (no config.json until the GGUF is imported)")
        return warnings
    _check_splits(recipe, shape, warnings)
    if hw.gpu_memory_bytes is None:
        unknown("GPU memory")
        return warnings
    _check_memory(recipe, shape, hw.gpu_memory_bytes)
    return warnings


def _check_splits(recipe: Recipe, shape: ModelShape, warnings: list[str]) -> None:
    tp, pp = recipe.tp_size, recipe.pp_size
    if shape.num_heads % tp:
        raise BuildCheckError(f"tp_size {tp} must divide num_attention_heads {shape.num_heads}")
    if shape.num_kv_heads % tp and tp % shape.num_kv_heads:
        raise BuildCheckError(f"tp_size {tp} and num_key_value_heads {shape.num_kv_heads}: one must divide the other")
    if pp > shape.num_layers:
        raise BuildCheckError(f"pp_size {pp} exceeds num_hidden_layers {shape.num_layers}")
    mpe = shape.max_position_embeddings
    if mpe and recipe.limits.max_seq_len > mpe:
        warnings.append(f"max_seq_len {recipe.limits.max_seq_len} exceeds the model's max_position_embeddings {mpe}")


def _check_memory(recipe: Recipe, shape: ModelShape, gpu_bytes: int) -> None:
    budget = gpu_bytes * MEMORY_HEADROOM
    weights = estimate_weight_bytes(shape, recipe) / recipe.world_size
    lim = recipe.limits
    per_token = kv_bytes_per_token(shape, recipe)
    kv = per_token * lim.max_batch_size * lim.max_seq_len
    if weights > budget:
        raise BuildCheckError(
            f"recipe {recipe.name}: weights need about {weights / GIB:.1f} GiB per GPU, more than "
            f"{MEMORY_HEADROOM:.0%} of {gpu_bytes / GIB:.0f} GiB; raise --tp/--pp or pick a smaller precision")
    if weights + kv > budget:
        fits = int((budget - weights) // (per_token * lim.max_seq_len))
        raise BuildCheckError(
            f"recipe {recipe.name}: weights {weights / GIB:.1f} GiB + KV cache for max_batch_size "
            f"{lim.max_batch_size} x max_seq_len {lim.max_seq_len} ({kv / GIB:.1f} GiB) exceed {MEMORY_HEADROOM:.0%} "
            f"of {gpu_bytes / GIB:.0f} GiB per GPU; at this max_seq_len at most {max(fits, 0)} full-length sequences "
            f"fit: lower --max-batch-size or --max-seq-len, or raise --tp")
