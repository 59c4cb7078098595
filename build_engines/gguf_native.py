"""GGUF decoder weights kept quantized: Q4_0 and Q4_1 blocks repacked, bit for bit, into llmserve's int4 group
format (llmserve/model/int4.py), so an imported 4-bit model stays 4-bit on disk and in memory.

- Q4_0 (block of 32: float16 d, 16 bytes of codes): w = d * (q - 8) -> "int4_sym", groups of 32.
- Q4_1 (block of 32: float16 d, float16 m, 16 bytes): w = d * q + m -> "int4_asym", groups of 32.
Both blocks keep their codes in our group-halves order (element i in the low nibble of byte i, element i + 16 in
the high one), so the codes are copied, not re-coded. Every other part of the checkpoint (embedding, norms,
lm_head, config, tokenizer) comes from the dequantized import, and every repacked tensor is checked against it:
its dequantization must equal transformers' (ggml's) dequantization exactly, or the import fails.
Not yet native (refused by name; `--dequantize` imports them as today): Q8_0 (needs 8-bit groups of 32), the
K-quants (Q4_K's 6-bit sub-block scales multiply a float16 d: not exact in 16 bits), and the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from safetensors.torch import load_file, save_file

from llmserve.model.int4 import dequantize_int4

# GGUF type -> (our mode, bytes per block of 32, whether a float16 minimum follows the scale)
NATIVE = {GGMLQuantizationType.Q4_0: ("int4_sym", 18, False), GGMLQuantizationType.Q4_1: ("int4_asym", 20, True)}
GROUP = 32
LINEARS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}
ARCHITECTURES = ("llama", "qwen2")  # llama.cpp permutes llama's q/k rows for its rotary layout; qwen2's not


class NativeImportError(ValueError):
    """A GGUF file whose decoder weights we cannot keep quantized; the message names the tensor type."""


def _hf_name(gguf_name: str) -> str | None:
    """blk.3.ffn_up.weight -> model.layers.3.mlp.up_proj.weight; None for anything but a decoder linear."""
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in LINEARS and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{LINEARS[parts[2]]}.weight"
    return None


def native_mode(reader: GGUFReader) -> tuple[str, str]:
    """(our mode, GGUF type name) of the file's decoder linears, or NativeImportError naming what is missing."""
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    if arch not in ARCHITECTURES:
        raise NativeImportError(f"general.architecture {arch!r}: native 4-bit import knows {ARCHITECTURES}; "
                                "use --dequantize")
    types = {t.tensor_type for t in reader.tensors if _hf_name(t.name)}
    unsupported = sorted(t.name for t in types if t not in NATIVE)
    if unsupported:
        example = next(t.name for t in reader.tensors if _hf_name(t.name) and t.tensor_type.name == unsupported[0])
        raise NativeImportError(f"tensor type {', '.join(unsupported)} (e.g. {example}) is not kept quantized yet "
                                f"(natively: {', '.join(t.name for t in NATIVE)}); use --dequantize")
    if len(types) != 1:
        raise NativeImportError(f"decoder weights mix tensor types {sorted(t.name for t in types)}; one model "
                                "holds one 4-bit mode for now; use --dequantize")
    qtype = types.pop()
    return NATIVE[qtype][0], qtype.name


def repack(blocks: np.ndarray, qtype: GGMLQuantizationType) -> dict[str, torch.Tensor]:
    """Raw GGUF rows (uint8 [N, bytes]) -> {"weight", "weight_scale"[, "weight_min"]} in our format."""
    _, size, has_min = NATIVE[qtype]
    n = blocks.shape[0]
    b = torch.from_numpy(np.array(blocks, dtype=np.uint8)).reshape(n, -1, size)  # a copy: the file is mapped read-only
    nb = b.shape[1]
    out = {"weight_scale": b[:, :, 0:2].contiguous().view(torch.float16).reshape(n, nb)}
    if has_min:
        out["weight_min"] = b[:, :, 2:4].contiguous().view(torch.float16).reshape(n, nb)
    out["weight"] = b[:, :, size - GROUP // 2:].reshape(n, nb * GROUP // 2).contiguous()
    return out


def _unpermute_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order undoing llama.cpp's q/k permutation (transformers' reverse_permute_weights, on row indices)."""
    return torch.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2).transpose(1, 2).reshape(n_rows)


def _row_order(name: str, n_rows: int, arch: str, cfg: dict) -> torch.Tensor | None:
    if arch != "llama" or not (".attn_q." in name or ".attn_k." in name):
        return None
    heads = cfg["num_attention_heads"] if ".attn_q." in name else cfg.get("num_key_value_heads",
                                                                         cfg["num_attention_heads"])
    return _unpermute_rows(n_rows, heads)


def keep_quantized(src: Path, out: Path) -> dict:
    """Replaces the decoder linears of the dequantized import in `out` by the file's own blocks, repacked;
    returns the config's "quantization" entry. Fails if any repacked tensor dequantizes differently."""
    reader = GGUFReader(src)
    mode, type_name = native_mode(reader)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    cfg = json.loads((out / "config.json").read_text())
    state = load_file(out / "model.safetensors")
    count = 0
    for t in reader.tensors:
        key = _hf_name(t.name)
        if key is None:
            continue
        packed = repack(t.data, t.tensor_type)
        order = _row_order(t.name, packed["weight"].shape[0], arch, cfg)
        if order is not None:
            packed = {k: v[order].contiguous() for k, v in packed.items()}
        ref = state[key]
        if not torch.equal(dequantize_int4(packed["weight"], packed["weight_scale"], packed.get("weight_min"),
                                           ref.dtype), ref):
            raise NativeImportError(f"{t.name}: repacked {type_name} does not dequantize to the imported values")
        base = key.removesuffix("weight")
        state.update({base + k: v for k, v in packed.items()})
        count += 1
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "llmserve_quantization": mode})
    entry = {"mode": mode, "group_size": GROUP, "keep_attention_fp16": False, "weight_scale": "per_group",
             "activation_scale": "none", "quantized_tensors": count, "source": f"gguf:{type_name}"}
    cfg["quantization"] = entry
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return entry
