"""Weights from an HF safetensors checkpoint into our module layout (q/k/v and gate/up packed), all in memory:
the quantizer's path and the reference of llmserve/model/loading.py, which load_model streams shard by shard."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from llmserve.model.int4 import GROUP_SIZES, INT4_MODES, SCALE_DTYPES
from llmserve.model.linear import check_mode

# The fields of config.json's "quantization" entry (llmserve/model/quantize.py, build_engines' GGUF import).
# Anything else is a format this version does not know: refused at load rather than silently ignored.
QUANTIZATION_FIELDS = {"mode", "keep_attention_fp16", "weight_scale", "activation_scale", "quantized_tensors",
                       "group_size", "source"}


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
    """Refuses an entry with a field we do not know, an unknown mode, or an int4 group size that is not
    the one its tensors hold; each error names the field."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - QUANTIZATION_FIELDS)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown quantization field (this version knows "
                         f"{', '.join(sorted(QUANTIZATION_FIELDS))}); refusing rather than ignoring it")
    try:
        mode = check_mode(entry.get("mode"))
    except ValueError as e:
        raise ValueError(f"{where}.mode: {e}") from None
    group = entry.get("group_size")
    if mode not in INT4_MODES:
        if group is not None:
            raise ValueError(f"{where}.group_size: only int4 modes have groups, mode is {mode!r}")
        return
    if group not in GROUP_SIZES:
        raise ValueError(f"{where}.group_size: expected one of {GROUP_SIZES}, got {group!r}")
    for key, scale in state.items():
        if key.endswith(".weight_scale") and scale.dim() == 2:
            packed = state.get(key.removesuffix("_scale"))
            if packed is None or scale.dtype not in SCALE_DTYPES or 2 * packed.shape[1] != group * scale.shape[1]:
                raise ValueError(f"{where}.group_size: {key} ({scale.dtype} {tuple(scale.shape)}) does not hold "
                                 f"16-bit scales of groups of {group}")


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
    if key.endswith(("weight_scale", "weight_min")):  # int4 groups' 16-bit values are the format: kept exact
        return t if t.dtype in SCALE_DTYPES and t.dim() == 2 else t.float()
    if t.dtype in (torch.int8, torch.uint8, torch.float8_e4m3fn):  # quantized weights keep their storage type
        return t
    return t.to(dtype)
