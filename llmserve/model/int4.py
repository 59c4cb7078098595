"""4-bit weights in groups along K (W4A16): the format, round-to-nearest quantization, and `Int4Linear`.

Format, per weight W [N, K], groups of g = 32, 64 or 128 consecutive inputs of one output row:
- weight: uint8 [N, K / 2], two 4-bit codes q (0..15) per byte. Within each group, byte i holds element i in
  its low nibble and element i + g/2 in its high nibble ("group halves"). Why: a Triton tile of whole groups
  unpacks with one mask and one shift into two half-tiles, each a dense operand for tl.dot against x loaded at
  two offsets; the adjacent-pairs layout would need a register interleave, which Triton has no cheap op for.
  For g = 32 it is also byte for byte GGUF's Q4_0 / Q4_1 block layout, so their code bytes carry over unchanged
  (Q4_K's do not: 32 of its bytes hold two sub-blocks, one in the low nibbles, the next in the high ones).
- weight_scale: float16 [N, K / g] (what GGUF, AWQ and GPTQ store); bf16 is accepted too, and float32 for GGUF's
  Q4_K, whose sub-block scale d * sc (float16 d times a 6-bit integer) needs up to 17 significant bits: ggml
  computes it in float32, and so must the format to stay exact. Kept in its own type, the minimum in the same.
- "int4_sym": w = s * (q - 8) (GGUF Q4_0; RTN scale = group absmax / 7, TensorRT-LLM / ModelOpt's int4 recipe).
- "int4_asym": w = s * q + m, weight_min m [N, K / g] (GGUF Q4_1; Q4_K's sub-blocks, m = -(dmin * m_sub) in
  float32; RTN: s = (max - min) / 15, m = min). A minimum rather than an integer zero point: it holds Q4_1/Q4_K
  exactly; AWQ / GPTQ zero points (w = s * (q - z)) would need a third variant to stay bit-exact;
  build_engines/hf_int4.py stores them as m = -s * z rounded to float16 (at most half an fp16 ulp of s * z) and says so.
Dequantization is float32 in that operation order, as ggml's reference dequantizers compute it, so a GGUF
tensor repacked here dequantizes bit for bit like the file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmserve.model.launch import KernelLayer, NormedRow, ResidualSum, silu_gate

GROUP_SIZES = (32, 64, 128)
INT4_MODES = ("int4_sym", "int4_asym")
SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TINY = 2.0 ** -24  # smallest float16 subnormal: an all-zero group keeps a non-zero scale


def check_group_size(group_size: int, in_features: int, sizes: tuple[int, ...] = GROUP_SIZES) -> int:
    if group_size not in sizes:
        raise ValueError(f"group_size: expected one of {sizes}, got {group_size!r}")
    if in_features % group_size:
        raise ValueError(f"group_size: {group_size} does not divide in_features {in_features}")
    return group_size


def pack(q: torch.Tensor, group_size: int) -> torch.Tensor:
    """codes [N, K] (0..15) -> uint8 [N, K / 2] in the group-halves layout."""
    n, k = q.shape
    h = q.to(torch.uint8).reshape(n, k // group_size, 2, group_size // 2)
    return (h[:, :, 0] | (h[:, :, 1] << 4)).reshape(n, k // 2)


def unpack(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """uint8 [N, K / 2] -> codes [N, K] (uint8, 0..15)."""
    n, half = packed.shape
    p = packed.reshape(n, 2 * half // group_size, group_size // 2)
    return torch.stack((p & 15, p >> 4), dim=2).reshape(n, 2 * half)


def quantize_int4(w: torch.Tensor, group_size: int, symmetric: bool) -> dict[str, torch.Tensor]:
    """Round-to-nearest: w [N, K] float -> {"weight", "weight_scale"[, "weight_min"]} (see the module doc).
    Codes are rounded against the float16-rounded scale and minimum, the values the format stores."""
    n, k = w.shape
    wg = w.float().reshape(n, k // check_group_size(group_size, k), group_size)
    if symmetric:
        s = (wg.abs().amax(-1) / 7.0).to(torch.float16).clamp(min=TINY)
        q = torch.round(wg / s.float()[..., None]).clamp(-8, 7) + 8
        out = {"weight_scale": s}
    else:
        lo, hi = wg.amin(-1), wg.amax(-1)
        m = lo.to(torch.float16)
        s = ((hi - m.float()) / 15.0).to(torch.float16).clamp(min=TINY)
        q = torch.round((wg - m.float()[..., None]) / s.float()[..., None]).clamp(0, 15)
        out = {"weight_scale": s, "weight_min": m}
    out["weight"] = pack(q.reshape(n, k), group_size)
    return out


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference: [N, K] in `dtype`, computed in float32 (s * (q - 8), or s * q + m)."""
    n, groups = scale.shape
    p = packed.reshape(n, groups, 1, -1)
    # [N, groups, g] unpacked; through int32 (uint8 -> float is slow on CPU). No fused multiply-add below:
    # ggml rounds the product and the sum separately, and so must we to stay bit-exact.
    q = torch.cat((p & 15, p >> 4), dim=2).reshape(n, groups, -1).to(torch.int32).float()
    if minimum is None:
        w = scale.float()[..., None] * (q - 8.0)
    else:
        w = scale.float()[..., None] * q + minimum.float()[..., None]
    return w.reshape(n, -1).to(dtype)


class Int4Linear(KernelLayer):
    """y = x W^T (+ b) with W in the 4-bit group format. The group size is taken from the loaded scales (one
    model may hold groups of 32 from a GGUF file or of 128 from our quantizer). On CUDA the Triton kernels of
    llmserve/kernels/int4.py run; elsewhere the weight is dequantized and F.linear runs (the reference)."""

    mode = ""
    symmetric = True
    # Storage of the codes; llmserve/model/int8_group.py's twin keeps one int8 code per element instead.
    storage, codes_per_byte, group_sizes = torch.uint8, 2, GROUP_SIZES
    # Whether its one-row GEMV folds in the MLP's gate (`gate_out`) and qkv's rotary embedding (`rope`)
    folds_one_row = True

    def __init__(self, in_features: int, out_features: int, bias: bool = False, group_size: int = 128):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features // self.codes_per_byte,
                                                   dtype=self.storage))
        self._set_groups(group_size if in_features % group_size == 0 else self.group_sizes[0], torch.float16)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def _set_groups(self, group_size: int, dtype: torch.dtype) -> None:
        self.group_size = group_size
        shape = (self.out_features, self.in_features // group_size)
        device = self.weight.device
        self.register_buffer("weight_scale", torch.empty(shape, dtype=dtype, device=device))
        if not self.symmetric:
            self.register_buffer("weight_min", torch.empty(shape, dtype=dtype, device=device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Groups come from the checkpoint: resize the placeholders so the stock shape check agrees.
        scale = state_dict.get(prefix + "weight_scale")
        if scale is not None:
            if scale.dim() != 2 or scale.dtype not in SCALE_DTYPES or not scale.shape[1]:
                raise ValueError(f"{prefix}weight_scale: expected float16/bfloat16/float32 [N, K / group_size], "
                                 f"got {scale.dtype} {tuple(scale.shape)}")
            group = self.in_features // scale.shape[1]
            check_group_size(group, self.in_features, self.group_sizes)
            self._set_groups(group, scale.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_linear(cls, linear: nn.Module, group_size: int = 128) -> Int4Linear:
        w = linear.weight.detach()
        with torch.device("meta"):
            m = cls(w.shape[1], w.shape[0], bias=linear.bias is not None, group_size=group_size)
        for name, t in quantize_int4(w, group_size, cls.symmetric).items():
            setattr(m, name, t.to(w.device))
        m.launch = linear.launch
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return m

    @property
    def minimum(self) -> torch.Tensor | None:
        return None if self.symmetric else self.weight_min

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int4(self.weight, self.weight_scale, self.minimum, dtype)

    def _normed_input(self, row: NormedRow) -> tuple[torch.Tensor, object | None]:
        """(x, kernels.gemv.RowNorm) of a NormedRow: the weighted row the product before wrote, or, where that
        product was not int4's, the norm computed here (no RowNorm)."""
        from llmserve.kernels.gemv import RowNorm

        if row.weighted is not None:
            return row.weighted, RowNorm(row.weight, row.sumsq, row.eps)
        from llmserve.kernels.fused import rmsnorm

        return rmsnorm(row.x, row.weight, row.eps, pdl=self.launch.pdl), None

    @staticmethod
    def kernel():
        """The Triton matmul of this format (imported late: triton is there only where kernels run)."""
        from llmserve.kernels.int4 import w4mm

        return w4mm

    def _one_row_fold(self, rows: int, switch: str) -> bool:
        """Whether a step of `rows` rows takes the one-row GEMV and kernels.int4's `switch` folds work into it."""
        if not (self.folds_one_row and self.launch.kernels and rows == 1):
            return False
        from llmserve.kernels import int4

        return getattr(int4, switch)

    def gate_out_at(self, rows: int) -> bool:
        """Whether a step of `rows` rows through this [gate | up] layer returns silu(gate) * up (`forward(x,
        gate_out=True)`) instead of down_proj computing it: one row on the kernels, where down_proj's programs
        would each redo the gate for all its inputs."""
        return self._one_row_fold(rows, "GATE_OUT")

    def ropes_at(self, rows: int) -> bool:
        """Whether qkv's product can do the rotary embedding and cache write (`rope`, a kernels.linear.RopeCache)."""
        return self._one_row_fold(rows, "ROPE_IN_GEMV")

    def folds_norm_at(self, rows: int) -> bool:
        """Whether a step of `rows` rows can take a `NormedRow` and add into the residual (`add_to`, given the next
        norm's weight as `next_norm`)."""
        return self._one_row_fold(rows, "FOLD_NORM")

    def forward(self, x: torch.Tensor | NormedRow, gated: bool = False, gate_out: bool = False,
                rope: object | None = None, add_to: torch.Tensor | None = None,
                next_norm: torch.Tensor | None = None) -> torch.Tensor | ResidualSum:
        """add_to: the residual row to add the output into (returns a ResidualSum), next_norm: the weight of the
        RMSNorm after it, for the product reading that norm (a NormedRow) to scale its outputs only."""
        norm = None
        if isinstance(x, NormedRow):
            x, norm = self._normed_input(x)
        folds = gate_out or rope is not None or norm is not None or add_to is not None
        if self.launch.kernels and folds and x.shape[0] == 1 and self.folds_one_row:
            from llmserve.kernels.int4 import w4gemv

            out = w4gemv(x, self.weight, self.weight_scale, self.minimum, self.bias, gated, gate_out=gate_out,
                         rope=rope, norm=norm, add_to=add_to, next_norm=next_norm, pdl=self.launch.pdl)
            return ResidualSum(add_to, *out) if add_to is not None else out
        assert rope is None and add_to is None, "the rotary embedding and the residual add fold into the one-row GEMV"
        if self.launch.kernels:
            y = self.kernel()(x, self.weight, self.weight_scale, self.minimum, self.bias, gated=gated,
                              pdl=self.launch.pdl)
        else:
            y = F.linear(silu_gate(x) if gated else x, self.dequantized(x.dtype), self.bias)
        return silu_gate(y) if gate_out else y


class Int4SymLinear(Int4Linear):
    mode = "int4_sym"
    symmetric = True


class Int4AsymLinear(Int4Linear):
    mode = "int4_asym"
    symmetric = False
