"""Element conversions the Triton kernels share."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# e4m3 -> bf16, four at a time, with integer ops instead of Triton's three conversions per pair (which made fp8
# weights slower than bf16 in `wmm`): the bits moved into bf16's fields give value * 2**-120 exactly (subnormals
# included), then one packed multiply by 2**120 (an fma with -0).
_E4M3_BF16_ASM = tl.constexpr("""{
.reg .b32 a0, a1, b0, b1, e, z;
prmt.b32 a0, $2, 0, 0x1404;
prmt.b32 a1, $2, 0, 0x3424;
and.b32 b0, a0, 0x7F007F00;
and.b32 b1, a1, 0x7F007F00;
shr.b32 b0, b0, 4;
shr.b32 b1, b1, 4;
lop3.b32 b0, b0, a0, 0x80008000, 0xF8;
lop3.b32 b1, b1, a1, 0x80008000, 0xF8;
mov.b32 e, 0x7B807B80;
mov.b32 z, 0x80008000;
fma.rn.bf16x2 $0, b0, e, z;
fma.rn.bf16x2 $1, b1, e, z;
}""")


@triton.jit
def e4m3_to_bf16(w, PURE: tl.constexpr = True):
    """An e4m3 tensor as bf16 (exact), on CUDA only (inline PTX: see `ptx_converts`). PURE=False keeps the
    conversion where it stands: Triton does not move an impure op into a dot's operand layout, so a K/V tile is
    converted in registers and reaches shared memory as bf16 (for ldmatrix), not as bytes read one at a time."""
    return tl.inline_asm_elementwise(_E4M3_BF16_ASM, "=r,=r,r", [w.to(tl.uint8, bitcast=True)],
                                     dtype=tl.bfloat16, is_pure=PURE, pack=4)


def ptx_converts(x: torch.Tensor) -> bool:
    """Whether a kernel with activations `x` may convert e4m3 through `e4m3_to_bf16`: bf16 on CUDA (not fp16 models,
    not Triton's CPU interpreter, which runs no PTX)."""
    return x.dtype == torch.bfloat16 and x.is_cuda


@triton.jit
def kv_tile(x, dtype, KV_FP8: tl.constexpr):
    """A loaded K/V tile in the attention dots' dtype. KV_FP8: 0 a 16-bit cache; e4m3: 1 Triton's conversion (to
    fp16, the dots in fp16), 2 `e4m3_to_bf16` kept in place (converted in registers, to shared memory as bf16)."""
    if KV_FP8 == 2:
        return e4m3_to_bf16(x, False)
    return x.to(dtype)


def kv_mode(kv_cache: torch.Tensor, q: torch.Tensor, fp8_convert: int) -> int:
    """The attention kernels' KV_FP8: 0 for a 16-bit cache; an e4m3 one converts as asked, through Triton's
    conversion where the inline PTX cannot run."""
    if kv_cache.dtype != torch.float8_e4m3fn:
        return 0
    return fp8_convert if ptx_converts(q) else 1
