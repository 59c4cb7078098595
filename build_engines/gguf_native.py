"""GGUF decoder weights kept quantized: Q4_0, Q4_1, Q4_K, Q5_K, Q6_K and Q8_0 blocks repacked, bit for bit, into
llmserve's group formats (build_engines/gguf_blocks.py decodes them), so an imported quantized model stays
quantized on disk and in memory.

- 4-bit blocks (Q4_0, Q4_1, Q4_K) -> "int4_sym" / "int4_asym", groups of 32 (Q4_K's sub-blocks: float32 scales
  and minimums, as ggml computes d * sc in float32; Q4_0 / Q4_1 keep their float16 ones).
- wider codes (Q8_0, Q6_K, Q5_K) -> "int8_group_sym" / "int8_group_asym", groups of 32 (Q6_K: 16).
Files mix types per tensor (Q4_K_M: Q4_K mostly, Q6_K for some attn_v / ffn_down), and our q/k/v and gate/up
are one packed module each, whose parts must share a format. So each module takes the narrowest format that
holds all its parts exactly: int4 when all are 4-bit blocks of one kind (symmetric or with a minimum), else int8
groups of the smallest group (16 divides 32: scales repeat) with a -0.0 minimum for parts that have none. The
config's "quantization" names the commonest mode and, under "modules", every module that differs, so a Q4_K_M
model stays mostly 4-bit. Every other part of the checkpoint (embedding, norms, lm_head, config, tokenizer)
comes from the dequantized import, and every repacked tensor is checked against it: its dequantization must
equal transformers' (ggml's) exactly, or the import fails. Other types (Q2_K, Q3_K, IQ*, F16 linears ...) are
refused by name; `--dequantize` imports them as today.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader, ReaderTensor
from safetensors.torch import load_file, save_file

from build_engines.gguf_blocks import DECODERS, Groups, decode
from llmserve.model.int4 import dequantize_int4
from llmserve.model.int8_group import dequantize_int8_group
from llmserve.model.loading import our_key

GROUP = 32
LINEARS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}
ARCHITECTURES = ("llama", "qwen2")  # llama.cpp permutes llama's q/k rows for its rotary layout; qwen2's not


class NativeImportError(ValueError):
    """A GGUF file whose decoder weights we cannot keep quantized; the message names the tensor type."""


class Reader(GGUFReader):
    """gguf-py's reader, its fields and tensors parsed from a plain array over the file's memory map: slicing the
    np.memmap itself costs more than the parse (a 49k-token vocabulary: 6.8 s -> 3.2 s, same fields and tensors)."""

    def _get(self, offset: int, dtype, count: int = 1, override_order=None):
        if type(self.data) is np.memmap:  # the first read, inside GGUFReader.__init__
            self.data = self.data.view(np.ndarray)
        return super()._get(offset, dtype, count, override_order)


def _hf_name(gguf_name: str) -> str | None:
    """blk.3.ffn_up.weight -> model.layers.3.mlp.up_proj.weight; None for anything but a decoder linear."""
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in LINEARS and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{LINEARS[parts[2]]}.weight"
    return None


def check_native(reader: GGUFReader) -> list[str]:
    """The GGUF type names of the file's decoder linears, or NativeImportError naming what is not supported."""
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    if arch not in ARCHITECTURES:
        raise NativeImportError(f"general.architecture {arch!r}: native import knows {ARCHITECTURES}; "
                                "use --dequantize")
    types = {t.tensor_type for t in reader.tensors if _hf_name(t.name)}
    unsupported = sorted(t.name for t in types if t not in DECODERS)
    if unsupported:
        example = next(t.name for t in reader.tensors if _hf_name(t.name) and t.tensor_type.name == unsupported[0])
        raise NativeImportError(f"tensor type {', '.join(unsupported)} (e.g. {example}) is not kept quantized "
                                f"(natively: {', '.join(t.name for t in DECODERS)}); use --dequantize")
    return sorted(t.name for t in types)


def _module(key: str) -> str:
    """model.layers.3.self_attn.k_proj.weight -> layers.3.self_attn.qkv_proj (the module it is packed into)."""
    return our_key(key)[0].removesuffix(".weight")


def store(parts: list[Groups]) -> tuple[str, list[dict[str, torch.Tensor]]]:
    """(mode, tensors of each part) of one module: the narrowest format holding every part exactly."""
    sym = all(p.minimum is None for p in parts)
    dtype = parts[0].scale.dtype if len({p.scale.dtype for p in parts}) == 1 else torch.float32
    if all(p.four_bit for p in parts) and (sym or all(p.minimum is not None for p in parts)):
        return ("int4_sym" if sym else "int4_asym"), [p.as_int4(dtype) for p in parts]
    group = min(p.group for p in parts)  # 16 or 32
    return ("int8_group_sym" if sym else "int8_group_asym"), [p.as_int8(group, dtype, not sym) for p in parts]


def dequantized(mode: str, t: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    f = dequantize_int4 if mode.startswith("int4") else dequantize_int8_group
    return f(t["weight"], t["weight_scale"], t.get("weight_min"), dtype)


def _unpermute_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order undoing llama.cpp's q/k permutation (transformers' reverse_permute_weights, on row indices)."""
    return torch.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2).transpose(1, 2).reshape(n_rows)


def _row_order(name: str, n_rows: int, arch: str, cfg: dict) -> torch.Tensor | None:
    if arch != "llama" or not (".attn_q." in name or ".attn_k." in name):
        return None
    heads = cfg["num_attention_heads"] if ".attn_q." in name else cfg.get("num_key_value_heads",
                                                                         cfg["num_attention_heads"])
    return _unpermute_rows(n_rows, heads)


def keep_quantized(src: Path, out: Path, reader: GGUFReader | None = None) -> dict:
    """Replaces the decoder linears of the dequantized import in `out` by the file's own blocks, repacked;
    returns the config's "quantization" entry. Fails if any repacked tensor dequantizes differently. reader: the
    file already parsed (`Reader`), or None to parse it here."""
    reader = reader or Reader(src)
    type_names = check_native(reader)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    cfg = json.loads((out / "config.json").read_text())
    state = load_file(out / "model.safetensors")
    modules: dict[str, dict[str, ReaderTensor]] = {}  # our module -> HF key -> its GGUF tensor (mapped, not read)
    for t in reader.tensors:
        key = _hf_name(t.name)
        if key is not None:
            modules.setdefault(_module(key), {})[key] = t
    # Module by module: only one module's decoded codes are in memory at a time.
    modes = {name: _replace(parts, state, arch, cfg) for name, parts in modules.items()}
    mode = Counter(modes.values()).most_common(1)[0][0]
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "llmserve_quantization": mode})
    entry = {"mode": mode, "keep_attention_fp16": False, "weight_scale": "per_group", "activation_scale": "none",
             "quantized_tensors": sum(map(len, modules.values())), "source": "gguf:" + "+".join(type_names)}
    if any(m.startswith("int4") for m in modes.values()):
        entry["group_size"] = GROUP
    if any(m != mode for m in modes.values()):
        entry["modules"] = {name: m for name, m in sorted(modes.items()) if m != mode}
    cfg["quantization"] = entry
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return entry


def _decode(t: ReaderTensor, arch: str, cfg: dict) -> Groups:
    g = decode(t.data, t.tensor_type)
    order = _row_order(t.name, g.codes.shape[0], arch, cfg)
    return g if order is None else g.rows(order)


def _replace(parts: dict[str, ReaderTensor], state: dict[str, torch.Tensor], arch: str, cfg: dict) -> str:
    """Puts one module's repacked parts into `state` (under their HF names) after checking each against the
    dequantized import; returns the module's mode."""
    mode, stored = store([_decode(t, arch, cfg) for t in parts.values()])
    for (key, t), tensors in zip(parts.items(), stored):
        ref = state[key]
        if not torch.equal(dequantized(mode, tensors, ref.dtype), ref):
            raise NativeImportError(f"{t.name}: repacked as {mode}, it does not dequantize to the imported values")
        state.update({key.removesuffix("weight") + k: v for k, v in tensors.items()})
    return mode
