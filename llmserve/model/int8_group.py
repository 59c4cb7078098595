"""8-bit codes in groups along K, weight-only: the format GGUF's Q8_0, Q6_K and Q5_K blocks repack into exactly
(build_engines/gguf_native.py), and `Int8GroupLinear`.

Format, per weight W [N, K], groups of g = 16, 32, 64 or 128 consecutive inputs of one output row:
- weight: int8 [N, K], one signed code q per element, in order (Q8_0: -128..127; Q6_K: its 6-bit code - 32;
  Q5_K: 0..31; a 4-bit block widened here keeps its 4-bit values).
- weight_scale: [N, K / g] float16 (Q8_0's d), bfloat16 or float32 (the K-quants' d * sc, which needs more
  than 16 bits: see llmserve/model/int4.py).
- "int8_group_sym": w = s * q. "int8_group_asym": w = s * q + m, weight_min m [N, K / g] of the scale's type.
Dequantization is float32 in that operation order, as ggml's reference dequantizers compute it, so a repacked
GGUF tensor dequantizes bit for bit like the file. On CUDA llmserve/kernels/int8_group.py runs (the codes read
once a step); elsewhere the weight is dequantized to the activation dtype and F.linear runs.
"""

from __future__ import annotations

import torch
from torch import nn

from llmserve.model.int4 import Int4Linear

INT8_GROUP_SIZES = (16, 32, 64, 128)
INT8_GROUP_MODES = ("int8_group_sym", "int8_group_asym")


def dequantize_int8_group(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference: [N, K] in `dtype`, computed in float32 (s * q, or s * q + m; no fused multiply-add: ggml
    rounds the product and the sum separately)."""
    n, groups = scale.shape
    w = scale.float()[..., None] * q.reshape(n, groups, -1).float()
    if minimum is not None:
        w = w + minimum.float()[..., None]
    return w.reshape(n, -1).to(dtype)


class Int8GroupLinear(Int4Linear):
    """y = x W^T (+ b) with W in the 8-bit group format; the group size comes from the loaded scales, as for
    Int4Linear, whose loading and forward it shares."""

    storage, codes_per_byte, group_sizes = torch.int8, 1, INT8_GROUP_SIZES
    folds_one_row = False  # its GEMV computes the gate in down_proj's x loads

    @staticmethod
    def kernel():
        from llmserve.kernels.int8_group import w8gmm

        return w8gmm

    @classmethod
    def from_linear(cls, linear: nn.Module, group_size: int = 128) -> Int8GroupLinear:
        raise ValueError(f"{cls.mode}: made only by the GGUF import (build_engines/gguf_native.py); there is no "
                         "quantizer for it")

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int8_group(self.weight, self.weight_scale, self.minimum, dtype)


class Int8GroupSymLinear(Int8GroupLinear):
    mode = "int8_group_sym"
    symmetric = True


class Int8GroupAsymLinear(Int8GroupLinear):
    mode = "int8_group_asym"
    symmetric = False
