"""The linear layers of the model: 16-bit (`Linear`) and quantized per output channel (`Int8Linear`,
`Fp8Linear`), and the swaps that turn a model's decoder linears into quantized ones.

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

Which path a layer takes is the model's choice, made at load: every layer with a Triton path holds the model's
`Launch` (`KernelLayer.launch`), and the swaps below hand it on to the layers they put in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The kernel modules import triton, which CPU wheels of torch lack: they are imported where the fast path runs.

MODES = ("fp8", "int8_wo")
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass
class Launch:
    """How a model's layers run; one object, owned by the model and shared by its layers.
    kernels: the Triton path (chosen at load: llmserve.kernels.usable); pdl: programmatic dependent launch of
    the linear and fused kernels, on only while the runner captures a small decode graph (LlamaModel.pdl_launches)."""

    kernels: bool = False
    pdl: bool = False


class KernelLayer(nn.Module):
    """A layer with a Triton path. Alone it has a Launch of its own (the torch path); in a model, the model's."""

    def __init__(self):
        super().__init__()
        self.launch = Launch()


def share_launch(model: nn.Module, launch: Launch) -> None:
    """Hands `launch` to `model` and every layer in it that has a Triton path."""
    for m in model.modules():
        if isinstance(m, KernelLayer):
            m.launch = launch


class Linear(KernelLayer):
    """y = x W^T (+ b), W in the model dtype. `gated=True`: x is [gate | up] and the layer computes
    down(silu(gate) * up). On CUDA, few rows go through the Triton weight-streaming kernel (which fuses the
    gate), many through cuBLAS. Quantized twins are above."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        if self.launch.kernels:
            from llmserve.kernels import linear as klinear

            pdl = self.launch.pdl
            if x.shape[0] <= klinear.triton_max_m(self.weight):
                return klinear.wmm(x, self.weight, None, self.bias, gated=gated, pdl=pdl)
            if gated:
                from llmserve.kernels.fused import silu_mul

                x = silu_mul(x, pdl=pdl)
            return F.linear(x, self.weight, self.bias)
        if gated:
            gate, up = x.chunk(2, dim=-1)
            x = F.silu(gate) * up
        return F.linear(x, self.weight, self.bias)


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


class QuantLinear(KernelLayer):
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
        m.launch = linear.launch
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
        if self.launch.kernels:
            from llmserve.kernels.linear import wmm

            return wmm(x, self.weight, self.weight_scale, self.bias, gated=gated, pdl=self.launch.pdl)
        return self._fallback(x, gated)


class Fp8Linear(QuantLinear):
    mode = "fp8"
    # Activations through e4m3 as well (the _scaled_mm path); the batch-1 GEMV keeps them in 16 bits. The CPU
    # fallback follows this flag (bench/perplexity.py measures both).
    quantize_activations = True

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias, FP8)

    def forward(self, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        if self.launch.kernels:
            from llmserve.kernels import linear as klinear

            pdl = self.launch.pdl
            if x.shape[0] <= klinear.triton_max_m(self.weight):
                return klinear.wmm(x, self.weight, self.weight_scale, self.bias, gated=gated, pdl=pdl)
            if gated:
                from llmserve.kernels.fused import silu_mul

                x = silu_mul(x, pdl=pdl)
            xq, xs = klinear.quant_fp8_per_token(x, pdl=pdl)
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
    cls = MODULES[check_mode(mode)]
    for parent, name in _targets(model, keep_attention_fp16):
        old = getattr(parent, name)
        new = cls(old.in_features, old.out_features, bias=old.bias is not None)
        new.launch = old.launch
        setattr(parent, name, new)


def quantize_model_(model: nn.Module, mode: str, keep_attention_fp16: bool = False) -> None:
    """Quantizes a loaded model in place, layer by layer (peak memory: the model plus one layer)."""
    cls = MODULES[check_mode(mode)]
    for parent, name in _targets(model, keep_attention_fp16):
        setattr(parent, name, cls.from_linear(getattr(parent, name)))


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"quantization mode: expected one of {MODES}, got {mode!r}")
    return mode
