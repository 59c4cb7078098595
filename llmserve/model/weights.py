"""Weights from an HF safetensors checkpoint into our module layout (q/k/v and gate/up packed)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def load_safetensors(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's *.safetensors files, on the CPU."""
    files = sorted(Path(checkpoint_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir}: no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f, device="cpu"))
    return state


def hf_to_ours(state: dict[str, torch.Tensor], num_layers: int, tie_word_embeddings: bool) -> dict[str, torch.Tensor]:
    """Renames HF keys and packs q/k/v and gate/up into single matrices (scales of quantized weights too:
    they are per output channel, so they stack like the rows they scale)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        out[key.removeprefix("model.")] = t
    for i in range(num_layers):
        p = f"layers.{i}."
        for kind in ("weight", "bias", "weight_scale"):
            parts = [out.pop(f"{p}self_attn.{n}_proj.{kind}", None) for n in "qkv"]
            if all(x is not None for x in parts):
                out[f"{p}self_attn.qkv_proj.{kind}"] = torch.cat(parts, 0)
        for kind in ("weight", "weight_scale"):
            parts = [out.pop(f"{p}mlp.{n}_proj.{kind}", None) for n in ("gate", "up")]
            if all(x is not None for x in parts):
                out[f"{p}mlp.gate_up_proj.{kind}"] = torch.cat(parts, 0)
    if tie_word_embeddings or "lm_head.weight" not in out:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def cast(key: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if key.endswith("weight_scale"):
        return t.float()
    if t.dtype in (torch.int8, torch.float8_e4m3fn):  # quantized weights keep their storage type
        return t
    return t.to(dtype)
