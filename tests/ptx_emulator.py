"""The PTX instructions our kernels' inline assembly uses, emulated in numpy lane by lane (an operand is an array of
lanes): CI has no GPU and Triton's interpreter runs no inline PTX, so this is how the asm strings' arithmetic is
checked on the CPU. Semantics from the PTX ISA: prmt's default mode, lop3's immLut, untyped shifts fill with zeros,
.rn rounds the exact result to nearest even once. An instruction it does not know is an error, never skipped."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import numpy as np

M32 = np.uint64(0xFFFFFFFF)


def run(asm: str, outputs: int, *inputs: np.ndarray | int) -> list[np.ndarray]:
    """Runs `asm` with $0..$outputs-1 as outputs and the inputs as $outputs.. (uint32 for b32 and f32 registers,
    as bits, uint64 for 64-bit ones); returns the outputs' bits as uint32 arrays."""
    regs: dict[str, np.ndarray] = {f"${outputs + i}": np.asarray(v) for i, v in enumerate(inputs)}
    for line in _instructions(asm):
        op, _, rest = line.partition(" ")
        _step(regs, op, rest.strip())
    return [regs[f"${i}"].astype(np.uint32) for i in range(outputs)]


def _instructions(asm: str) -> list[str]:
    body = asm.strip().removeprefix("{").removesuffix("}")
    lines = [s.strip() for s in body.split(";")]
    return [s for s in lines if s and not s.startswith(".reg")]


def _step(regs: dict[str, np.ndarray], op: str, rest: str) -> None:
    if op == "mov.b64":
        lo, hi, src = re.fullmatch(r"\{\s*(\S+)\s*,\s*(\S+)\s*\}\s*,\s*(\S+)", rest).groups()
        q = _val(regs, src).astype(np.uint64)
        regs[lo], regs[hi] = (q & M32).astype(np.uint32), (q >> np.uint64(32)).astype(np.uint32)
        return
    dst, *args = [a.strip() for a in rest.split(",")]
    v = [_val(regs, a) for a in args]
    regs[dst] = np.asarray(_OPS[op](*v), dtype=np.uint64).astype(np.uint32)


def _val(regs: dict[str, np.ndarray], a: str) -> np.ndarray:
    if a in regs:
        return regs[a].astype(np.uint64)
    if re.fullmatch(r"0[xX][0-9a-fA-F]+|\d+", a):
        return np.uint64(int(a, 0))
    raise KeyError(f"register {a} read before it was written")


def _prmt(a, b, sel):
    if np.ndim(sel):
        raise NotImplementedError("prmt with a selector register")
    sel = int(sel)
    src = [(a >> np.uint64(8 * i)) & np.uint64(0xFF) for i in range(4)]
    src += [(b >> np.uint64(8 * i)) & np.uint64(0xFF) for i in range(4)]
    out = np.uint64(0)
    for i in range(4):
        s = (sel >> (4 * i)) & 0xF
        if s & 8:
            raise NotImplementedError("prmt's sign replication (a selector nibble of 8 or more)")
        out = out | (src[s] << np.uint64(8 * i))
    return out


def _lop3(a, b, c, lut):
    out = np.uint64(0)
    for idx in range(8):
        if int(lut) >> idx & 1:
            out = out | ((a if idx & 4 else ~a) & (b if idx & 2 else ~b) & (c if idx & 1 else ~c) & M32)
    return out


def halves(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bf16x2 register's low and high halves as float64 values."""
    bits = np.asarray(bits).astype(np.uint32)
    lo = ((bits & 0xFFFF) << 16).astype(np.uint32).view(np.float32)
    hi = (bits & 0xFFFF0000).astype(np.uint32).view(np.float32)
    return lo.astype(np.float64), hi.astype(np.float64)


def bf16_bits(v: np.ndarray) -> np.ndarray:
    """The bf16 nearest to the exact values v (float64), ties to even, as 16-bit patterns."""
    v = np.asarray(v, dtype=np.float64)
    m, e = np.frexp(v)
    normal = np.ldexp(np.rint(np.ldexp(m, 8)), e - 8)
    r = np.where(np.abs(v) < 2.0 ** -126, np.ldexp(np.rint(np.ldexp(v, 133)), -133), normal)
    r = np.where(np.abs(r) >= 2.0 ** 128, np.copysign(np.inf, v), r)  # rint and ldexp keep zeros' signs
    return (r.astype(np.float32).view(np.uint32) >> 16).astype(np.uint64)


def pair(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Exact values rounded to one bf16x2 register (lo in the low half)."""
    return bf16_bits(lo) | (bf16_bits(hi) << np.uint64(16))


def _paired(f):
    def op(*regs):
        parts = [halves(r) for r in regs]
        return pair(f(*(p[0] for p in parts)), f(*(p[1] for p in parts)))
    return op


def _f32(bits) -> np.ndarray:
    return np.asarray(bits).astype(np.uint32).view(np.float32)


_OPS = {
    "mov.b32": lambda a: a & M32,
    "and.b32": lambda a, b: a & b,
    "shl.b32": lambda a, n: (a << n) & M32,
    "shr.b32": lambda a, n: (a & M32) >> n,
    "shr.u32": lambda a, n: (a & M32) >> n,
    "prmt.b32": _prmt,
    "lop3.b32": _lop3,
    # products of bf16 values and their sums with a third are exact in float64 at these magnitudes: one rounding
    "sub.rn.bf16x2": _paired(lambda a, b: a - b),
    "mul.rn.bf16x2": _paired(lambda a, b: a * b),
    "fma.rn.bf16x2": _paired(lambda a, b, c: a * b + c),
    "add.f32": lambda a, b: (_f32(a) + _f32(b)).view(np.uint32),
    "cvt.rn.bf16x2.f32": lambda a, b: pair(_f32(b).astype(np.float64), _f32(a).astype(np.float64)),
}


class _Results:
    """What a builder's inline-asm op gives the caller: its outputs by index."""

    def __init__(self, handles: list) -> None:
        self.handles = handles

    def get_result(self, i: int):
        return self.handles[i]


def _register_bits(data: np.ndarray) -> np.ndarray:
    """An interpreter tensor's elements as the bits of their registers (64-bit ones as uint64, others as uint32)."""
    data = np.ascontiguousarray(data)
    if data.itemsize < 4:
        return data.astype(np.uint32)
    return data.view(np.uint64 if data.itemsize == 8 else np.uint32)


def _emulated_inline_asm(builder, asm, constraints, values, types, is_pure, pack):
    """InterpreterBuilder.create_inline_asm through `run`: one instance an element (pack 1), registers as bits."""
    from triton.runtime.interpreter import TensorHandle, _get_np_dtype

    if pack != 1:
        raise NotImplementedError(f"inline asm with pack={pack} under the interpreter")
    shape = np.broadcast_shapes(*(np.shape(h.data) for h in values))
    ins = [np.broadcast_to(_register_bits(h.data), shape) for h in values]
    outs = run(asm, sum(c.startswith("=") for c in constraints.split(",")), *ins)
    handles = []
    for bits, ty in zip(outs, types):
        elt = getattr(ty, "element_ty", ty)
        data = np.broadcast_to(bits, shape).astype(np.uint32).view(_get_np_dtype(elt))
        handles.append(TensorHandle(np.ascontiguousarray(data), elt))
    return _Results(handles)


def _rounding_convert(convert):
    """The interpreter's float conversion, with float32 -> bf16 rounded to nearest even as the GPU rounds it (the
    interpreter truncates a plain cast, and its round-to-nearest loses a carry into the exponent)."""
    import triton.language as tl

    def conv(data, src, dst, rounding_mode):
        if src == tl.float32 and dst == tl.bfloat16:
            return bf16_bits(np.asarray(data, dtype=np.float64)).astype(np.uint16)
        return convert(data, src, dst, rounding_mode)
    return conv


@contextlib.contextmanager
def in_interpreter() -> Iterator[None]:
    """While inside, Triton's interpreter runs kernels' inline PTX through this emulator (it raises otherwise) and
    rounds float32 to bf16 as the GPU does, so a kernel built on inline asm runs whole on the CPU."""
    from triton.runtime import interpreter

    old_asm, old_convert = interpreter.InterpreterBuilder.create_inline_asm, interpreter._convert_float
    interpreter.InterpreterBuilder.create_inline_asm = _emulated_inline_asm
    interpreter._convert_float = _rounding_convert(old_convert)
    try:
        yield
    finally:
        interpreter.InterpreterBuilder.create_inline_asm, interpreter._convert_float = old_asm, old_convert
