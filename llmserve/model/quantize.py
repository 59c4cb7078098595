"""Quantized checkpoints for the PyTorch engine, in two steps (as gpt-fast): offline, then at load time.

1. `quantize_checkpoint(src_dir, out_dir, mode)` (or `python -m llmserve.model.quantize SRC OUT --mode fp8`)
   writes a safetensors checkpoint whose decoder linear weights are quantized per output channel, with their
   float32 scales beside them as `<name>.weight_scale`, and config.json gains
   `"quantization": {"mode": ..., "keep_attention_fp16": ...}`. The int4 modes (`--mode int4_sym|int4_asym
   --group-size 32|64|128`, round to nearest) store packed uint8 weights with float16 `<name>.weight_scale`
   (and `<name>.weight_min`) per row and group, and `"group_size"` in the entry (format: llmserve/model/int4.py);
   `--awq` first searches activation-aware per-channel scales and folds them into the norms (llmserve/model/awq.py);
   `--lm-head int8_wo` quantizes the lm_head per output channel too (`"lm_head"` in the entry).
2. `llama.load_model` sees that entry and swaps in the quantized modules of llmserve/model/linear.py before
   loading. The modes are described there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from llmserve.model.awq import apply_awq_
from llmserve.model.int4 import GROUP_SIZES, INT4_MODES, quantize_int4
from llmserve.model.int8_group import INT8_GROUP_MODES
from llmserve.model.linear import ATTENTION, LM_HEAD_MODES, MLP, MODES, check_lm_head_mode, check_mode, quantize_weight
from llmserve.model.weights import load_safetensors


def _quantized(t: torch.Tensor, mode: str, group_size: int) -> dict[str, torch.Tensor]:
    """One weight's tensors, by suffix of its name ("weight", "weight_scale"[, "weight_min"])."""
    if mode in INT4_MODES:
        return quantize_int4(t, group_size, symmetric=mode == "int4_sym")
    q, s = quantize_weight(t, mode)
    return {"weight": q, "weight_scale": s}


def quantize_checkpoint(src_dir: str | Path, out_dir: str | Path, mode: str, keep_attention_fp16: bool = False,
                        dtype: torch.dtype | None = None, group_size: int = 128, awq: bool = False,
                        lm_head: str | None = None) -> Path:
    """Writes a quantized copy of an HF Llama checkpoint. `dtype` converts the tensors left unquantized
    (default: keep the source's); group_size: int4 modes only; awq: int4 modes only, activation-aware scales
    (llmserve/model/awq.py) before rounding; lm_head: its mode (linear.LM_HEAD_MODES; a tied one gets its own
    quantized copy of the embedding), None: 16-bit. Returns out_dir."""
    _check_options(mode, group_size, awq)
    if lm_head is not None:
        check_lm_head_mode(lm_head)
    src, out = Path(src_dir), Path(out_dir)
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("quantization"):
        raise ValueError(f"{src}: already quantized ({cfg['quantization']})")
    state = load_safetensors(src)
    if awq:
        apply_awq_(state, src, group_size, mode == "int4_sym", keep_attention_fp16)
    result, quantized = _quantized_state(state, MLP if keep_attention_fp16 else ATTENTION + MLP, mode, group_size,
                                         dtype)
    if not quantized:
        raise ValueError(f"{src}: found no decoder linear weights to quantize")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.safetensors*"):
        old.unlink()
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and f.name != "config.json":
            shutil.copy2(f, out / f.name)
    if lm_head is not None:
        result.update(_quantized_head(state, lm_head))
    elif cfg.get("tie_word_embeddings") and "lm_head.weight" in result:
        del result["lm_head.weight"]  # safetensors refuses shared storage; the loader re-ties it
    save_file(result, str(out / "model.safetensors"), metadata={"format": "pt", "llmserve_quantization": mode,
                                                         "llmserve_awq": "on" if awq else "off"})
    cfg.pop("quantization_config", None)
    cfg["quantization"] = _quantization_entry(mode, keep_attention_fp16, quantized, group_size)
    if lm_head is not None:
        cfg["quantization"]["lm_head"] = lm_head
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def _quantized_head(state: dict[str, torch.Tensor], mode: str) -> dict[str, torch.Tensor]:
    """lm_head.weight and its scale in `mode`, from the checkpoint's lm_head or, tied, its embedding."""
    head = state.get("lm_head.weight")
    if head is None:
        head = next(t for k, t in state.items() if k.endswith("embed_tokens.weight"))
    q, s = quantize_weight(head, mode)
    return {"lm_head.weight": q.contiguous(), "lm_head.weight_scale": s.contiguous()}


def _check_options(mode: str, group_size: int, awq: bool) -> None:
    if check_mode(mode) in INT8_GROUP_MODES:
        raise ValueError(f"mode {mode!r}: made only by the GGUF import (build_engines/gguf_native.py), which keeps "
                         "a file's own blocks; this quantizer has no rounding for it")
    if mode in INT4_MODES and group_size not in GROUP_SIZES:
        raise ValueError(f"group_size: expected one of {GROUP_SIZES}, got {group_size!r}")
    if awq and mode not in INT4_MODES:
        raise ValueError(f"awq: only for the int4 modes {INT4_MODES}, got mode {mode!r}")


def _quantized_state(state: dict[str, torch.Tensor], names: tuple[str, ...], mode: str, group_size: int,
                     dtype: torch.dtype | None) -> tuple[dict[str, torch.Tensor], int]:
    """The decoder layers' linear weights named in `names` quantized (their suffixes: weight, weight_scale, ...),
    the rest kept (converted to `dtype` where given and floating); and how many weights were quantized."""
    result: dict[str, torch.Tensor] = {}
    quantized = 0
    for key, t in state.items():
        parts = key.split(".")
        if key.endswith(".weight") and len(parts) >= 2 and parts[-2] in names and ".layers." in f".{key}":
            for suffix, q in _quantized(t, mode, group_size).items():
                result[key[: -len("weight")] + suffix] = q.contiguous()
            quantized += 1
        else:
            result[key] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
    return result, quantized


def _quantization_entry(mode: str, keep_attention_fp16: bool, quantized: int, group_size: int) -> dict:
    """config.json's `quantization` section, which the loader reads back."""
    entry = {"mode": mode, "keep_attention_fp16": keep_attention_fp16,
             "weight_scale": "per_group" if mode in INT4_MODES else "per_channel",
             "activation_scale": "dynamic_per_token" if mode == "fp8" else "none", "quantized_tensors": quantized}
    if mode in INT4_MODES:
        entry["group_size"] = group_size
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llmserve.model.quantize", description=__doc__.split("\n")[0])
    ap.add_argument("src", help="HF checkpoint directory (config.json + *.safetensors)")
    ap.add_argument("out", help="output directory")
    ap.add_argument("--mode", choices=[m for m in MODES if m not in INT8_GROUP_MODES], required=True)
    ap.add_argument("--group-size", type=int, choices=GROUP_SIZES, default=128,
                    help="int4 modes: inputs per scale (default 128)")
    ap.add_argument("--awq", action="store_true",
                    help="int4 modes: activation-aware per-channel scales searched on a calibration text first")
    ap.add_argument("--keep-attention-fp16", action="store_true", help="leave q/k/v/o projections unquantized")
    ap.add_argument("--lm-head", choices=LM_HEAD_MODES, default=None,
                    help="quantize the lm_head too (default: 16-bit; the embedding stays 16-bit either way)")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                    help="convert unquantized tensors (default: keep)")
    a = ap.parse_args(argv)
    out = quantize_checkpoint(a.src, a.out, a.mode, a.keep_attention_fp16,
                              getattr(torch, a.dtype) if a.dtype else None, a.group_size, a.awq, a.lm_head)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
