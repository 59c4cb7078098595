"""Weights from an HF safetensors checkpoint into our module layout (q/k/v and gate/up packed), all in memory:
the quantizer's path and the reference of llmserve/model/loading.py, which load_model streams shard by shard."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from llmserve.model.int4 import GROUP_SIZES, INT4_MODES, SCALE_DTYPES
from llmserve.model.int8_group import INT8_GROUP_SIZES
from llmserve.model.linear import check_lm_head_mode, check_mode

# The fields of config.json's "quantization" entry (llmserve/model/quantize.py, build_engines' GGUF import).
# Anything else is a format this version does not know: refused at load rather than silently ignored.
QUANTIZATION_FIELDS = {"mode", "keep_attention_fp16", "weight_scale", "activation_scale", "quantized_tensors",
                       "group_size", "source", "modules", "lm_head"}


def load_safetensors(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's *.safetensors files, on the CPU."""
    files = sorted(Path(checkpoint_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir}: no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f, device="cpu"))
    return state


def check_quantization(entry: dict, state: dict[str, torch.Tensor], where: str = "quantization") -> None:
    """Refuses an entry with a field we do not know, an unknown mode (of the model or of one of its "modules"),
    or group scales its weights do not hold: int4 groups of the entry's group_size (present exactly when an int4
    mode is), int8 groups of a size from their scales. Each error names the field."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - QUANTIZATION_FIELDS)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown quantization field (this version knows "
                         f"{', '.join(sorted(QUANTIZATION_FIELDS))}); refusing rather than ignoring it")
    modules = entry.get("modules") or {}
    if not isinstance(modules, dict):
        raise ValueError(f"{where}.modules: expected an object of module name -> mode, got {modules!r}")
    modes = {"mode": entry.get("mode"), **{f"modules.{k}": v for k, v in modules.items()}}
    for field, mode in modes.items():
        try:
            check_mode(mode)
        except ValueError as e:
            raise ValueError(f"{where}.{field}: {e}") from None
    if entry.get("lm_head") is not None:
        check_lm_head_mode(entry["lm_head"], where)
    group = entry.get("group_size")
    if not any(m in INT4_MODES for m in modes.values()):
        if group is not None:
            raise ValueError(f"{where}.group_size: only int4 modes have groups (int8 groups are sized by their "
                             f"scales), mode is {entry['mode']!r}")
    elif group not in GROUP_SIZES:
        raise ValueError(f"{where}.group_size: expected one of {GROUP_SIZES}, got {group!r}")
    for key, scale in state.items():
        if key.endswith(".weight_scale") and scale.dim() == 2:
            _check_groups(key, scale, state.get(key.removesuffix("_scale")), group, where)


def _check_groups(key: str, scale: torch.Tensor, weight: torch.Tensor | None, group: int | None, where: str) -> None:
    groups = scale.shape[1]
    if weight is not None and scale.dtype in SCALE_DTYPES and groups:
        if weight.dtype == torch.uint8 and group is not None and 2 * weight.shape[1] == group * groups:
            return
        if weight.dtype == torch.int8 and weight.shape[1] in [g * groups for g in INT8_GROUP_SIZES]:
            return
    raise ValueError(f"{where}.group_size: {key} ({scale.dtype} {tuple(scale.shape)}) does not hold the scales "
                     f"of int4 groups of {group} or of int8 groups of {INT8_GROUP_SIZES}")


def hf_to_ours(state: dict[str, torch.Tensor], num_layers: int, tie_word_embeddings: bool) -> dict[str, torch.Tensor]:
    """Renames HF keys and packs q/k/v and gate/up into single matrices (scales and minimums of quantized
    weights too: per output channel or per row and group, they stack like the rows they scale)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        out[key.removeprefix("model.")] = t
    for i in range(num_layers):
        p = f"layers.{i}."
        for kind in ("weight", "bias", "weight_scale", "weight_min"):
            parts = [out.pop(f"{p}self_attn.{n}_proj.{kind}", None) for n in "qkv"]
            if all(x is not None for x in parts):
                out[f"{p}self_attn.qkv_proj.{kind}"] = torch.cat(parts, 0)
        for kind in ("weight", "weight_scale", "weight_min"):
            parts = [out.pop(f"{p}mlp.{n}_proj.{kind}", None) for n in ("gate", "up")]
            if all(x is not None for x in parts):
                out[f"{p}mlp.gate_up_proj.{kind}"] = torch.cat(parts, 0)
    if tie_word_embeddings or "lm_head.weight" not in out:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def cast(key: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if key.endswith(("weight_scale", "weight_min")):  # group scales' own type is the format: kept exact
        return t if t.dtype in SCALE_DTYPES and t.dim() == 2 else t.float()
    if t.dtype in (torch.int8, torch.uint8, torch.float8_e4m3fn):  # quantized weights keep their storage type
        return t
    return t.to(dtype)
