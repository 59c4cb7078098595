"""The linear layers of the model: 16-bit (`Linear`) and quantized per output channel (`Int8Linear`,
`Fp8Linear`), and the swaps that turn a model's decoder linears into quantized ones.

Modes:
- "fp8": e4m3 weights, scale = absmax / 448 per output channel. Activations are quantized per token at run
  time (dynamic scales) and multiplied fp8 x fp8 on the tensor cores: Triton's `wmm_fp8` up to 32 rows (decode at
  small batch), `fp8_mm` or `torch._scaled_mm` above. One row (batch-1 decode, `kernels.linear.SKINNY_MAX_M`)
  goes through the GEMV with bf16 activations instead: the step is bound by reading weights.
- "int8_wo": int8 weights, scale = absmax / 127 per output channel, activations stay bf16/fp16 (weight-only).
  The Triton kernel in llmserve/kernels/linear.py does every M (torch._weight_int8pack_mm is ~10x too slow
  on CUDA).
- "int4_sym" / "int4_asym": 4-bit weight-only in groups of 32/64/128 along K (llmserve/model/int4.py has the
  format and `Int4Linear`; the Triton kernels are llmserve/kernels/int4.py).
- "int8_group_sym" / "int8_group_asym": int8 codes in groups of 16..128 with float scales (and minimums), made
  only by the GGUF import (Q8_0, Q6_K, Q5_K); torch path only (llmserve/model/int8_group.py).
- modules: per-module modes overriding `mode` ({"layers.3.self_attn.qkv_proj": "int8_group_sym"}), for GGUF
  files that mix block types per tensor (Q4_K_M: Q4_K mostly, Q6_K for some v / down projections).
- keep_attention_fp16: q/k/v/o projections stay in the model dtype (selective quantization); only the MLP,
  about two thirds of the weights, is quantized.
- lm_head (`LM_HEAD_MODES`): the lm_head in int8 weight-only per output channel, the embedding kept 16-bit (a
  tied one is untied); otherwise the embedding and the lm_head stay in the model dtype.

On CPU (no Triton) every mode dequantizes the weight and runs F.linear; fp8 also rounds activations through
e4m3 per token first, so CPU perplexity tracks what the GPU's `_scaled_mm` path computes.

Which path a layer takes is the model's choice, made at load: every layer with a Triton path holds the model's
`Launch` (`KernelLayer.launch`), and the swaps below hand it on to the layers they put in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmserve.model.int4 import INT4_MODES, Int4AsymLinear, Int4Linear, Int4SymLinear
from llmserve.model.int8_group import INT8_GROUP_MODES, Int8GroupAsymLinear, Int8GroupSymLinear
from llmserve.model.launch import (  # noqa: F401 - Launch, share_launch: re-exported
    KernelLayer,
    Launch,
    NormedRow,
    ResidualSum,
    share_launch,
    silu_gate,
)

# The kernel modules import triton, which CPU wheels of torch lack: they are imported where the fast path runs.

MODES = ("fp8", "int8_wo") + INT4_MODES + INT8_GROUP_MODES
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def _one_row_gemv(layer: KernelLayer, rows: int, switch: str) -> bool:
    """Whether a step of `rows` rows takes the one-row GEMV and kernels.linear's `switch` lets it fold in the
    launches around it. The kernels' module is imported only where they run (CPU wheels of torch lack triton)."""
    if not layer.launch.kernels:
        return False
    from llmserve.kernels import linear as klinear

    return getattr(klinear, switch) and rows == 1 <= klinear.triton_max_m(layer.weight)


class _Folds:
    """What the Triton products of a 16- or 8-bit linear fold in (llmserve/kernels/gemv.py, kernels/linear.py)."""

    def gate_out_at(self, rows: int) -> bool:
        """Whether a step of `rows` rows through this [gate | up] layer can return silu(gate) * up from the
        kernel's epilogue (`forward(x, gate_out=True)`), instead of the down projection computing it (the rows
        that take `wmm` with 16-bit activations: int8 at every size). Not for 16-bit weights at one row: their
        gate_up GEMV with the epilogue ran slower than down_proj computing the gate (docs/performance.md,
        twenty-fifth session)."""
        if not self.launch.kernels:
            return False
        from llmserve.kernels import linear as klinear

        w = self.weight
        return klinear.GATE_OUT and rows <= klinear.triton_max_m(w) and (rows > 1 or w.element_size() == 1)

    def folds_norm_at(self, rows: int) -> bool:
        """Whether a step of `rows` rows can take a `NormedRow` and add into the residual (`add_to`): 8-bit weights
        only (with 16-bit ones the folded GEMVs ran slower than the norm launches they save: docs/performance.md,
        twenty-fifth session)."""
        return _one_row_gemv(self, rows, "FOLD_NORM") and self.weight.element_size() == 1

    def ropes_at(self, rows: int) -> bool:
        """Whether qkv's product can do the rotary embedding and cache write (`rope`, a kernels.linear.RopeCache)."""
        return _one_row_gemv(self, rows, "ROPE_IN_GEMV")


def _wmm(layer: nn.Module, x: torch.Tensor | NormedRow, scale: torch.Tensor | None, gated: bool, gate_out: bool,
         add_to: torch.Tensor | None, rope: object | None) -> torch.Tensor | ResidualSum:
    """The Triton product of the few-row path, with what a one-row GEMV folds in around it."""
    from llmserve.kernels import linear as klinear

    norm = None
    if isinstance(x, NormedRow):
        x, norm = x.x, klinear.RowNorm(x.weight, x.sumsq, x.eps)
    out = klinear.wmm(x, layer.weight, scale, layer.bias, gated=gated, pdl=layer.launch.pdl, gate_out=gate_out,
                      norm=norm, add_to=add_to, rope=rope)
    return out if add_to is None else ResidualSum(add_to, out)


class Linear(_Folds, KernelLayer):
    """y = x W^T (+ b), W in the model dtype. `gated=True`: x is [gate | up] and the layer computes
    down(silu(gate) * up). On CUDA, few rows go through the Triton weight-streaming kernel (which fuses the
    gate), many through cuBLAS. Quantized twins are above."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor | NormedRow, gated: bool = False, gate_out: bool = False,
                add_to: torch.Tensor | None = None, rope: object | None = None) -> torch.Tensor | ResidualSum:
        if self.launch.kernels:
            from llmserve.kernels import linear as klinear

            if x.shape[0] <= klinear.triton_max_m(self.weight):
                return _wmm(self, x, None, gated, gate_out, add_to, rope)
            pdl = self.launch.pdl
            if gated:
                from llmserve.kernels.fused import silu_mul

                x = silu_mul(x, pdl=pdl)
            return F.linear(x, self.weight, self.bias)
        if gated:
            x = silu_gate(x)
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
        raise ValueError(f"per-channel quantization mode: expected int8_wo or fp8, got {mode!r}")
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale.float()[:, None]).to(dtype)


def fake_quant_fp8_per_token(x: torch.Tensor, reduce_amax: Callable[[torch.Tensor], object] | None = None
                             ) -> torch.Tensor:
    """x rounded through e4m3 with a per-row scale (what `_scaled_mm`'s inputs hold), back in x.dtype.
    reduce_amax: makes each row's amax (float32 [M, 1], in place) that of the whole row when x holds only part of
    its columns (a row-parallel rank's: the max over the ranks), so the scale is the whole row's."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    if reduce_amax is not None:
        reduce_amax(amax)
    scale = amax.clamp(min=1e-12) / FP8_MAX
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
            x = silu_gate(x)
        return F.linear(x, dequantize(self.weight, self.weight_scale, x.dtype), self.bias)


class Int8Linear(_Folds, QuantLinear):
    mode = "int8_wo"

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias, torch.int8)

    def forward(self, x: torch.Tensor | NormedRow, gated: bool = False, gate_out: bool = False,
                add_to: torch.Tensor | None = None, rope: object | None = None) -> torch.Tensor | ResidualSum:
        if self.launch.kernels:
            return _wmm(self, x, self.weight_scale, gated, gate_out, add_to, rope)
        return self._fallback(x, gated)


@dataclass(frozen=True)
class Fp8Rows:
    """Activations already in e4m3 with per-row scales, made by a fused kernel (norm or SiLU-mul) for the
    Fp8Linear that reads them, so their 16-bit form never goes through memory."""

    q: torch.Tensor  # [M, K] e4m3
    scale: torch.Tensor  # [M, 1] float32
    dtype: torch.dtype  # of the 16-bit activations they stand for, and of the linear's output

    @property
    def shape(self) -> torch.Size:
        return self.q.shape


class Fp8Linear(_Folds, QuantLinear):
    mode = "fp8"
    # Activations through e4m3 as well (the _scaled_mm path); the batch-1 GEMV keeps them in 16 bits. The CPU
    # fallback follows this flag (bench/perplexity.py measures both).
    quantize_activations = True
    # Row parallel (tensor_parallel.AllReduceLinear sets it): each token's amax over every rank's inputs, in place.
    reduce_amax: Callable[[torch.Tensor], object] | None = None

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias, FP8)

    def takes_fp8_rows(self, rows: int) -> bool:
        """Whether a step of `rows` rows reads its input in e4m3 (the _scaled_mm path): the norm before it may
        then hand it `Fp8Rows`."""
        if not self.launch.kernels:
            return False
        from llmserve.kernels import linear as klinear

        return rows > klinear.triton_max_m(self.weight)

    def forward(self, x: torch.Tensor | Fp8Rows | NormedRow, gated: bool = False, gate_out: bool = False,
                add_to: torch.Tensor | None = None, rope: object | None = None) -> torch.Tensor | ResidualSum:
        if isinstance(x, Fp8Rows):
            return self._scaled_mm(x.q, x.scale, x.dtype)
        if self.launch.kernels:
            from llmserve.kernels import linear as klinear

            pdl = self.launch.pdl
            if x.shape[0] <= klinear.triton_max_m(self.weight):
                return _wmm(self, x, self.weight_scale, gated, gate_out, add_to, rope)
            if self.reduce_amax is not None:  # the 16-bit rows first (fused.silu_mul_quant_fp8 quantizes them alike)
                return self._scaled_mm(*self._quant_row_parallel(x, gated), x.dtype)
            if gated:
                from llmserve.kernels.fused import silu_mul_quant_fp8

                return self._scaled_mm(*silu_mul_quant_fp8(x, pdl=pdl), x.dtype)
            return self._scaled_mm(*klinear.quant_fp8_per_token(x, pdl=pdl), x.dtype)
        if gated:
            x = silu_gate(x)
        if self.quantize_activations:
            x = fake_quant_fp8_per_token(x, self.reduce_amax)
        return F.linear(x, dequantize(self.weight, self.weight_scale, x.dtype), self.bias)

    def _quant_row_parallel(self, x: torch.Tensor, gated: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """quant_fp8_per_token over this rank's columns with the whole row's amax (exact: a max of the ranks')."""
        from llmserve.kernels import fused
        from llmserve.kernels import linear as klinear

        if gated:
            x = fused.silu_mul(x, pdl=self.launch.pdl)
        amax = x.abs().amax(dim=-1, keepdim=True).float()
        self.reduce_amax(amax)
        return klinear.quant_fp8_per_token(x, pdl=self.launch.pdl, amax=amax)

    def _scaled_mm(self, xq: torch.Tensor, xs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        from llmserve.kernels import linear as klinear
        from llmserve.kernels.fp8_mm import fp8_mm, use_fp8_mm

        fast = self.launch.fp8_fast_accum
        if xq.shape[0] <= klinear.WMM_FP8_MAX_M:  # the few rows of a decode step (klinear.SKINNY_MAX_M)
            return klinear.wmm_fp8(xq, xs, self.weight, self.weight_scale, dtype, self.bias, fast, pdl=self.launch.pdl)
        if xq.is_contiguous() and use_fp8_mm(xq.shape[0], *self.weight.shape, fast):
            y = fp8_mm(xq, xs, self.weight, self.weight_scale, dtype, fast)
        else:
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.weight_scale[None, :],
                                 out_dtype=torch.bfloat16, use_fast_accum=fast).to(dtype)
        return y + self.bias if self.bias is not None else y


MODULES = {"int8_wo": Int8Linear, "fp8": Fp8Linear, "int4_sym": Int4SymLinear, "int4_asym": Int4AsymLinear,
           "int8_group_sym": Int8GroupSymLinear, "int8_group_asym": Int8GroupAsymLinear}


def _targets(model: nn.Module, keep_attention_fp16: bool) -> list[tuple[nn.Module, str]]:
    return [(parent, name) for _, parent, name in _named_targets(model, keep_attention_fp16)]


def _named_targets(model: nn.Module, keep_attention_fp16: bool) -> list[tuple[str, nn.Module, str]]:
    """(module path as in the state dict, its parent, its attribute) of each linear a mode quantizes."""
    out = []
    for i, layer in enumerate(model.layers):
        names = [("self_attn", "qkv_proj"), ("self_attn", "o_proj")] if not keep_attention_fp16 else []
        names += [("mlp", "gate_up_proj"), ("mlp", "down_proj")]
        out += [(f"layers.{i}.{p}.{n}", getattr(layer, p), n) for p, n in names]
    return out


def convert_modules_(model: nn.Module, mode: str, keep_attention_fp16: bool = False,
                     modules: dict[str, str] | None = None) -> None:
    """Swaps the decoder's linears for empty quantized modules (before load_state_dict; group formats take
    their group size from the scales they load). modules: per-module modes overriding `mode`; a name that is
    not one of the swapped linears is refused (a typo would otherwise load the wrong format)."""
    modules = dict(modules or {})
    for path, parent, name in _named_targets(model, keep_attention_fp16):
        cls = MODULES[check_mode(modules.pop(path, mode))]
        old = getattr(parent, name)
        new = cls(old.in_features, old.out_features, bias=old.bias is not None)
        new.launch = old.launch
        setattr(parent, name, new)
    if modules:
        raise ValueError(f"quantization.modules: {sorted(modules)[0]!r} is not a quantized linear of this model")


def quantize_model_(model: nn.Module, mode: str, keep_attention_fp16: bool = False,
                    group_size: int | None = None, modules: dict[str, str] | None = None,
                    lm_head: str | None = None) -> None:
    """Quantizes a loaded model in place, layer by layer (peak memory: the model plus one layer). group_size:
    int4 modes only; None: per layer the largest of 128, 64, 32 that divides its inputs (random-weight
    benchmarks and tests, whose config names no group). Per-module modes are refused, not ignored: only the
    GGUF import makes them, from a file's own blocks. lm_head: its mode (LM_HEAD_MODES), None: kept 16-bit."""
    if modules:
        raise ValueError("quantization.modules: per-module modes come only with imported weights, not from "
                         "quantizing a model at load")
    cls = MODULES[check_mode(mode)]
    for parent, name in _targets(model, keep_attention_fp16):
        old = getattr(parent, name)
        if issubclass(cls, Int4Linear):
            group = group_size or next((g for g in (128, 64, 32) if old.in_features % g == 0), 128)
            setattr(parent, name, cls.from_linear(old, group))
        else:
            setattr(parent, name, cls.from_linear(old))
    if lm_head is not None:
        model.lm_head = MODULES[check_lm_head_mode(lm_head)].from_linear(model.lm_head)


# The lm_head's modes (config.json's quantization.lm_head): int8 weight-only per output channel, whose perplexity
# cost is measured beside the others (README, Quality)
LM_HEAD_MODES = ("int8_wo",)


def check_lm_head_mode(mode: str, where: str = "quantization") -> str:
    if mode not in LM_HEAD_MODES:
        raise ValueError(f"{where}.lm_head: expected one of {LM_HEAD_MODES}, got {mode!r}")
    return mode


def convert_lm_head_(model: nn.Module, mode: str) -> None:
    """Swaps the lm_head (where this stage has one) for an empty quantized module of `mode`, before loading."""
    old = model.lm_head
    if old is not None:
        model.lm_head = MODULES[check_lm_head_mode(mode)](old.in_features, old.out_features)
        model.lm_head.launch = old.launch


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"quantization mode: expected one of {MODES}, got {mode!r}")
    return mode
