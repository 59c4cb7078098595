"""Weight quantization for the PyTorch engine, in two steps (as gpt-fast): offline, then at load time.

1. `quantize_checkpoint(src_dir, out_dir, mode)` (or `python -m llmserve.quantize SRC OUT --mode fp8`) writes
   a safetensors checkpoint whose decoder linear weights are quantized per output channel, with their
   float32 scales beside them as `<name>.weight_scale`, and config.json gains
   `"quantization": {"mode": ..., "keep_attention_fp16": ...}`.
2. `llama.load_model` sees that entry and swaps in the modules below before loading.

Modes:
- "fp8": e4m3 weights, scale = absmax / 448 per output channel. Activations are quantized per token at run
  time (dynamic scales) and multiplied with `torch._scaled_mm` (tensor cores, fp8 x fp8). For few rows
  (decode at small batch) the Triton kernel streams the fp8 weights and multiplies bf16 activations
  instead: the step is bound by reading weights, and skipping activation quantization saves a launch per
  layer and some error.
- "int8_wo": int8 weights, scale = absmax / 127 per output channel, activations stay bf16/fp16 (weight-only).
  The Triton kernel in llmserve/kernels/linear.py does every M (torch._weight_int8pack_mm is ~10x too slow
  on CUDA).
- keep_attention_fp16: q/k/v/o projections stay in the model dtype (selective quantization); only the MLP,
  about two thirds of the weights, is quantized.
The embedding and the lm_head always stay in the model dtype.

On CPU (no Triton) both modes dequantize the weight and run F.linear; fp8 also rounds activations through
e4m3 per token first, so CPU perplexity tracks what the GPU's `_scaled_mm` path computes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("fp8", "int8_wo")
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def quantize_weight(w: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [N, K] float -> (q [N, K] int8 or e4m3, scale [N] float32) with w ~ q * scale[:, None]."""
    wf = w.float()
    amax = wf.abs().amax(dim=1).clamp(min=1e-12)
    if mode == "int8_wo":
        scale = amax / 127.0
        q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8)
    elif mode == "fp8":
        scale = amax / FP8_MAX
        q = (wf / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    else:
        raise ValueError(f"quantization mode: expected one of {MODES}, got {mode!r}")
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale.float()[:, None]).to(dtype)


def fake_quant_fp8_per_token(x: torch.Tensor) -> torch.Tensor:
    """x rounded through e4m3 with a per-row scale (what `_scaled_mm`'s inputs hold), back in x.dtype."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return ((xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() * scale).to(x.dtype)


class QuantLinear(nn.Module):
    """Shared state of the quantized linears: weight [N, K] (int8/e4m3) and weight_scale [N] as buffers."""

    mode = ""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, storage: torch.dtype = torch.int8):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=storage))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Module) -> QuantLinear:
        w = linear.weight.detach()
        with torch.device("meta"):
            m = cls(w.shape[1], w.shape[0], bias=linear.bias is not None)
        q, s = quantize_weight(w, cls.mode)
        m.weight, m.weight_scale = q, s
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return m

    def _fallback(self, x: torch.Tensor, gated: bool) -> torch.Tensor:
        if gated:
            gate, up = x.chunk(2, dim=-1)
            x = F.silu(gate) * up
        return F.linear(x, dequantize(self.weight, self.weight_scale, x.dtype), self.bias)


class Int8Linear(QuantLinear):
    mode = "int8_wo"

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias, torch.int8)

    def forward(self, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        from llmserve.llama import _fast

        if _fast(x):
            from llmserve.kernels.linear import wmm

            return wmm(x, self.weight, self.weight_scale, self.bias, gated=gated)
        return self._fallback(x, gated)


class Fp8Linear(QuantLinear):
    mode = "fp8"
    # Activations through e4m3 as well (the _scaled_mm path); the batch-1 GEMV keeps them in 16 bits. The CPU
    # fallback follows this flag (bench/perplexity.py measures both).
    quantize_activations = True

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias, FP8)

    def forward(self, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        from llmserve.llama import _fast

        if _fast(x):
            from llmserve.kernels import linear as klinear

            if x.shape[0] <= klinear.triton_max_m(self.weight):
                return klinear.wmm(x, self.weight, self.weight_scale, self.bias, gated=gated)
            if gated:
                from llmserve.kernels.fused import silu_mul

                x = silu_mul(x)
            xq, xs = klinear.quant_fp8_per_token(x)
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.weight_scale[None, :],
                                 out_dtype=torch.bfloat16)
            y = y.to(x.dtype)
            return y + self.bias if self.bias is not None else y
        if gated:
            gate, up = x.chunk(2, dim=-1)
            x = F.silu(gate) * up
        if self.quantize_activations:
            x = fake_quant_fp8_per_token(x)
        return F.linear(x, dequantize(self.weight, self.weight_scale, x.dtype), self.bias)


MODULES = {"int8_wo": Int8Linear, "fp8": Fp8Linear}


def _targets(model: nn.Module, keep_attention_fp16: bool) -> list[tuple[nn.Module, str]]:
    out = []
    for layer in model.layers:
        if not keep_attention_fp16:
            out += [(layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj")]
        out += [(layer.mlp, "gate_up_proj"), (layer.mlp, "down_proj")]
    return out


def convert_modules_(model: nn.Module, mode: str, keep_attention_fp16: bool = False) -> None:
    """Swaps the decoder's linears for empty quantized modules (before load_state_dict)."""
    cls = MODULES[_check_mode(mode)]
    for parent, name in _targets(model, keep_attention_fp16):
        old = getattr(parent, name)
        setattr(parent, name, cls(old.in_features, old.out_features, bias=old.bias is not None))


def quantize_model_(model: nn.Module, mode: str, keep_attention_fp16: bool = False) -> None:
    """Quantizes a loaded model in place, layer by layer (peak memory: the model plus one layer)."""
    cls = MODULES[_check_mode(mode)]
    for parent, name in _targets(model, keep_attention_fp16):
        setattr(parent, name, cls.from_linear(getattr(parent, name)))


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"quantization mode: expected one of {MODES}, got {mode!r}")
    return mode


def quantize_checkpoint(src_dir: str | Path, out_dir: str | Path, mode: str, keep_attention_fp16: bool = False,
                        dtype: torch.dtype | None = None) -> Path:
    """Writes a quantized copy of an HF Llama checkpoint. `dtype` converts the tensors left unquantized
    (default: keep the source's). Returns out_dir."""
    from safetensors.torch import save_file

    from llmserve.llama import load_safetensors  # llama imports this module: late import

    _check_mode(mode)
    src, out = Path(src_dir), Path(out_dir)
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("quantization"):
        raise ValueError(f"{src}: already quantized ({cfg['quantization']})")
    state = load_safetensors(src)
    names = MLP if keep_attention_fp16 else ATTENTION + MLP
    result: dict[str, torch.Tensor] = {}
    quantized = 0
    for key, t in state.items():
        parts = key.split(".")
        if key.endswith(".weight") and len(parts) >= 2 and parts[-2] in names and ".layers." in f".{key}":
            q, s = quantize_weight(t, mode)
            result[key] = q.contiguous()
            result[key[: -len("weight")] + "weight_scale"] = s.contiguous()
            quantized += 1
        else:
            result[key] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
    if not quantized:
        raise ValueError(f"{src}: found no decoder linear weights to quantize")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.safetensors*"):
        old.unlink()
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and f.name != "config.json":
            shutil.copy2(f, out / f.name)
    if cfg.get("tie_word_embeddings") and "lm_head.weight" in result:
        del result["lm_head.weight"]  # safetensors refuses shared storage; the loader re-ties it
    save_file(result, str(out / "model.safetensors"), metadata={"format": "pt", "llmserve_quantization": mode})
    cfg.pop("quantization_config", None)
    cfg["quantization"] = {"mode": mode, "keep_attention_fp16": keep_attention_fp16, "weight_scale": "per_channel",
                           "activation_scale": "dynamic_per_token" if mode == "fp8" else "none",
                           "quantized_tensors": quantized}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llmserve.quantize", description=__doc__.split("\n")[0])
    ap.add_argument("src", help="HF checkpoint directory (config.json + *.safetensors)")
    ap.add_argument("out", help="output directory")
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--keep-attention-fp16", action="store_true", help="leave q/k/v/o projections unquantized")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                    help="convert unquantized tensors (default: keep)")
    a = ap.parse_args(argv)
    out = quantize_checkpoint(a.src, a.out, a.mode, a.keep_attention_fp16,
                              getattr(torch, a.dtype) if a.dtype else None)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
