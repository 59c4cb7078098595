"""GGUF blocks decoded into groups of integer codes with a scale (and a minimum): w = scale * code (+ minimum),
computed in float32 exactly as ggml's reference dequantizers compute it, and stored in llmserve's int4 or int8
group formats (llmserve/model/int4.py, llmserve/model/int8_group.py) without changing a bit of any weight.

Layouts and arithmetic read in llama.cpp (github.com/ggml-org/llama.cpp): ggml/src/ggml-common.h (block_q4_0 ..
block_q6_K), ggml/src/ggml-quants.c (dequantize_row_q4_0, _q4_1, _q8_0, _q4_K, _q5_K, _q6_K, get_scale_min_k4)
and their numpy twins gguf-py/gguf/quants.py, which the tests compare against bit for bit.
- Q4_0 (32: f16 d, 16 bytes): w = d * (q - 8); element i in the low nibble of byte i, i + 16 in the high one.
- Q4_1 (32: f16 d, f16 m, 16 bytes): w = d * q + m; same nibble order.
- Q5_0 (32: f16 d, 4 bytes qh, 16 bytes): w = d * (q - 16), Q4_0's nibbles with bit i of the little-endian
  uint32 qh as the 5th bit of element i; Q5_1 (32: f16 d, f16 m, qh, 16 bytes): w = d * q + m.
- IQ4_NL (32: f16 d, 16 bytes): w = d * kvalues[q], Q4_0's nibbles indexing a table of 16 int8 values.
- Q8_0 (32: f16 d, 32 int8): w = d * q.
- Q4_K (256: f16 d, f16 dmin, 12 bytes of 6-bit sc/m for 8 sub-blocks of 32, 128 bytes): w = (d * sc) * q -
  dmin * m, d * sc and dmin * m in float32 (17 significant bits: hence float32 scales). Each 32 bytes hold two
  sub-blocks: the low nibbles the first, the high nibbles the second (not Q4_0's order: codes are re-packed).
- Q5_K (256: as Q4_K, plus 32 bytes qh): Q4_K's 4 bits, with bit j of qh[l] as the 5th bit of element l of
  sub-block j; codes 0..31 need the int8 format.
- Q6_K (256: 128 bytes ql, 64 bytes qh, 16 int8 sc, f16 d): w = (d * sc) * (q - 32) in 16 sub-blocks of 16.
llama.cpp's K-quant mixes fall back to Q5_0 / Q5_1 / Q8_0 / IQ4_NL for rows that are not a multiple of 256
(src/llama-quant.cpp, "fallback quantization"), hence those here too. A minimum is stored as -(dmin * m):
s * q + (-x) rounds exactly like s * q - x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from llmserve.model.int4 import pack


@dataclass
class Groups:
    """One tensor's codes [N, K] (int8), scale [N, K / group] (float16 or float32) and minimum (or None)."""

    codes: torch.Tensor
    scale: torch.Tensor
    minimum: torch.Tensor | None
    group: int
    four_bit: bool  # codes fit the int4 format: -8..7 without a minimum, 0..15 with one

    def rows(self, order: torch.Tensor) -> Groups:
        m = None if self.minimum is None else self.minimum[order].contiguous()
        return Groups(self.codes[order].contiguous(), self.scale[order].contiguous(), m, self.group, self.four_bit)

    def as_int4(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """int4_sym (stored code q + 8, w = s * (q + 8 - 8)) or int4_asym, groups of 32 (every 4-bit block)."""
        offset = 8 if self.minimum is None else 0
        out = {"weight": pack((self.codes.to(torch.int16) + offset).to(torch.uint8), 32),
               "weight_scale": self.scale.to(dtype)}
        if self.minimum is not None:
            out["weight_min"] = self.minimum.to(dtype)
        return out

    def as_int8(self, group: int, dtype: torch.dtype, asym: bool) -> dict[str, torch.Tensor]:
        """int8 groups of `group` (dividing ours: each scale repeated); a minimum of -0.0 where the block has
        none, as s * q + (-0.0) is s * q to the bit."""
        r = self.group // group
        out = {"weight": self.codes.contiguous(), "weight_scale": self.scale.repeat_interleave(r, 1).to(dtype)}
        if asym:
            m = self.minimum if self.minimum is not None else torch.full_like(self.scale, -0.0)
            out["weight_min"] = m.repeat_interleave(r, 1).to(dtype)
        return out


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16)[..., 0]


def _groups(codes: np.ndarray, scale: np.ndarray, minimum: np.ndarray | None, group: int, four: bool) -> Groups:
    n = codes.shape[0]

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a).reshape(n, -1))

    return Groups(t(codes.astype(np.int8)), t(scale), None if minimum is None else t(minimum), group, four)


def _q4_0(b: np.ndarray) -> Groups:
    q = b[..., 2:]
    codes = np.concatenate((q & 15, q >> 4), axis=-1).astype(np.int16) - 8
    return _groups(codes, _f16(b[..., 0:2]), None, 32, True)


def _q4_1(b: np.ndarray) -> Groups:
    q = b[..., 4:]
    return _groups(np.concatenate((q & 15, q >> 4), axis=-1), _f16(b[..., 0:2]), _f16(b[..., 2:4]), 32, True)


def _q5_codes(b: np.ndarray, at: int) -> np.ndarray:
    """Q5_0 / Q5_1: 32 codes 0..31 from the 4 qh bytes at `at` and the 16 nibble bytes after them."""
    q = b[..., at + 4:]
    high = (b[..., at:at + 4, None] >> np.arange(8, dtype=np.uint8)) & 1  # [.., 4, 8]: bit i of the LE uint32
    return np.concatenate((q & 15, q >> 4), axis=-1) | (high.reshape(*b.shape[:-1], 32) << 4)


def _q5_0(b: np.ndarray) -> Groups:
    return _groups(_q5_codes(b, 2).astype(np.int16) - 16, _f16(b[..., 0:2]), None, 32, False)


def _q5_1(b: np.ndarray) -> Groups:
    return _groups(_q5_codes(b, 4), _f16(b[..., 0:2]), _f16(b[..., 2:4]), 32, False)


IQ4_NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)


def _iq4_nl(b: np.ndarray) -> Groups:
    q = b[..., 2:]
    return _groups(IQ4_NL_VALUES[np.concatenate((q & 15, q >> 4), axis=-1)], _f16(b[..., 0:2]), None, 32, False)


def _q8_0(b: np.ndarray) -> Groups:
    return _groups(np.ascontiguousarray(b[..., 2:]).view(np.int8), _f16(b[..., 0:2]), None, 32, False)


def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's get_scale_min_k4 for j = 0..7 over the 12 scale bytes: (sc, m), 6 bits each."""
    s = s.astype(np.uint8)
    sc = np.concatenate((s[..., 0:4] & 63, (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)), axis=-1)
    m = np.concatenate((s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)), axis=-1)
    return sc, m


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d * sc, -(dmin * m)) in float32, [rows, blocks, 8], for Q4_K and Q5_K."""
    sc, m = _scale_min_k4(b[..., 4:16])
    d, dmin = _f16(b[..., 0:2]).astype(np.float32), _f16(b[..., 2:4]).astype(np.float32)
    return d[..., None] * sc.astype(np.float32), -(dmin[..., None] * m.astype(np.float32))


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """128 bytes -> [.., 8, 32] 4-bit codes: bytes 32j..32j+31 hold sub-block 2j (low) and 2j + 1 (high)."""
    q = qs.reshape(*qs.shape[:-1], 4, 1, 32)
    return np.concatenate((q & 15, q >> 4), axis=-2).reshape(*qs.shape[:-1], 8, 32)


def _q4_k(b: np.ndarray) -> Groups:
    scale, minimum = _k_scales(b)
    return _groups(_k_nibbles(b[..., 16:144]), scale, minimum, 32, True)


def _q5_k(b: np.ndarray) -> Groups:
    scale, minimum = _k_scales(b)
    qh = b[..., 16:48][..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]  # [.., 8, 32]: bit j of qh[l]
    return _groups(_k_nibbles(b[..., 48:176]) | ((qh & 1) << 4), scale, minimum, 32, False)


def _q6_k(b: np.ndarray) -> Groups:
    lead = b.shape[:-1]
    ql = b[..., 0:128].reshape(*lead, 2, 1, 64) >> np.array([0, 4], np.uint8)[:, None]  # [.., 2, 2, 64]
    qh = b[..., 128:192].reshape(*lead, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]  # [.., 2, 4, 32]
    q = ((ql & 15).reshape(*lead, 8, 32) | ((qh & 3).reshape(*lead, 8, 32) << 4)).astype(np.int16) - 32
    sc = np.ascontiguousarray(b[..., 192:208]).view(np.int8).astype(np.float32)
    return _groups(q, _f16(b[..., 208:210]).astype(np.float32)[..., None] * sc, None, 16, False)


# GGUF type -> (bytes per block, decoder of uint8 [rows, blocks, bytes])
DECODERS = {T.Q4_0: (18, _q4_0), T.Q4_1: (20, _q4_1), T.Q5_0: (22, _q5_0), T.Q5_1: (24, _q5_1),
            T.Q8_0: (34, _q8_0), T.IQ4_NL: (18, _iq4_nl), T.Q4_K: (144, _q4_k), T.Q5_K: (176, _q5_k),
            T.Q6_K: (210, _q6_k)}


def decode(rows: np.ndarray, qtype: T) -> Groups:
    """Raw GGUF rows (uint8 [N, bytes]) of a type in DECODERS -> its Groups."""
    size, fn = DECODERS[qtype]
    b = np.asarray(rows, dtype=np.uint8)
    return fn(b.reshape(b.shape[0], -1, size))
