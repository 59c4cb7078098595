"""What our Triton kernels compile to on a Hopper GPU, without one: each case calls a kernel wrapper on CPU
tensors of the real shapes, the launch is caught and compiled for sm_90 instead of run, and the PTX is counted
(instructions; global, async-copy, shared-memory and ldmatrix accesses; tensor-core ops; conversions) with
ptxas's registers and spills, and the SASS (what runs: instructions, the longest loop's). Shared-memory reads of
single bytes (`ld.shared.b8`), per-token address arithmetic and instructions per weight byte showed up this way
before any device time was spent (docs/performance.md, seventeenth session). Counts are static (a loop body counts
once), so compare variants of one kernel.

    python -m bench.ptx_stats decode:256x2100:fp8 varlen:3x2048+256:bf16 gemv:fp8:14336x4096
    python -m bench.ptx_stats decode:256x2100:fp8 --compare /tmp/base,.    # the same cases in two trees

Cases: decode:BxCTX:KV[:counted] (counted: half the rows, counted on the device, as a prefill graph's split),
varlen:BxL[+DECODE_ROWS]:KV[:fresh|tma|persist|persist_tma] (KV bf16 or fp8; fresh, tma: the prompts' K/V from the
qkv buffer, pointer or TMA loads; persist: the persistent launches, persist_tma with the prompts' own K/V),
gemv:KIND:NxK[:FLAG] and wmm:KIND:MxNxK[:FLAG] (KIND bf16, int8, fp8; FLAG gated: the SiLU-mul in x's load,
gate_out: in the epilogue; the GEMV's norm: an RMSNorm folded in, add: the residual add in the epilogue, rope:
rotary + cache write), w4:MxNxK:GROUP[:FLAGS] (symmetric int4; M = 1 is the GEMV; FLAGS joined by +: bytes, words or
pairs names a GEMV kernel, wgmma the Gluon matmul of int4_wgmma.py (asym: with minimums), mma the Gluon mma.sync
kernel of int4_mma.py for 1-8 rows (asym; staged: its cp.async ring; tile16: 16 rows a program, two register
buffers, no prefetch, else mma_config's shape; at one row gate_out, rope, norm, add as the GEMVs), gated the
SiLU-mul in x's load, gate_out in the epilogue, rope: qkv's rotary embedding and cache write in it, N = 6144;
norm: the RMSNorm's 1 / rms on the outputs, add: the residual add and the next norm's weighted row),
w8g:MxNxK:GROUP (8-bit codes in groups, as w4), fp8mm:MxNxK:fast|exact (the fp8 GEMM at 33-256 rows, its
accumulation). Llama-3.1-8B heads (32 query, 8 KV, dim 128).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# Kernels defined under Triton's CPU interpreter cannot be compiled: this tool wants them as a GPU would see them
os.environ.pop("TRITON_INTERPRET", None)
H, KVH, D, PAGE = 32, 8, 128, 16
KINDS = {"bf16": torch.bfloat16, "int8": torch.int8, "fp8": torch.float8_e4m3fn}
WATCH = ("ld.global", "cp.async.cg", "cp.async.ca", "ld.shared", "st.shared", "ldmatrix", "mma", "wgmma", "cvt")


def compile_launches(call) -> list:
    """Runs `call()` with every Triton launch compiled for sm_90 instead of run: the compiled kernels, in order."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile, make_backend
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime import jit

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    kernels = []

    def run(self, *args, grid, warmup, **kwargs):
        kwargs.setdefault("debug", False)
        binder = jit.create_function_from_signature(self.signature, self.params, backend)
        bound, spec, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, spec, options)
        source = (GluonASTSource if self.is_gluon() else ASTSource)(self, signature, constexprs, attrs)
        kernels.append(compile(source, target=target, options=options.__dict__))

    original = jit.JITFunction.run
    jit.JITFunction.run = run
    try:
        call()
    finally:
        jit.JITFunction.run = original
    return kernels


def _ops(lines: list[str]) -> list[str]:
    ops = (re.match(r"\s+(?:@!?%p\d+\s+)?([a-z][\w.]*)", line) for line in lines)
    return [m.group(1) for m in ops if m and not m.group(1).startswith(("mov", "ret"))]


def _longest_loop(lines: list[str], label: str, branch: str, count) -> int:
    """`count` of the lines of the longest loop: from a label (`label` matches it at a line's start) to a branch
    back to it (`branch` finds its target)."""
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(label, line))}
    spans = [(labels[m.group(1)], i) for i, line in enumerate(lines)
             if (m := re.search(branch, line)) and labels.get(m.group(1), i) < i]
    return max((count(lines[a:b + 1]) for a, b in spans), default=0)


def _tool(name: str) -> str:
    """A CUDA binary that ships with triton (ptxas, nvdisasm)."""
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def ptx_counts(ptx: str) -> dict:
    lines = ptx.splitlines()
    ops = _ops(lines)
    counts = {w: sum(1 for o in ops if o.startswith(w)) for w in WATCH}
    counts["ld.shared bytes"] = sum(1 for o in ops if o.startswith("ld.shared") and o.endswith(("b8", "u8", "s8")))
    counts["instructions"] = len(ops)
    counts["longest loop"] = _longest_loop(lines, r"(\$L__\w+):", r"bra(?:\.uni)?\s+(\$L__\w+);",
                                           lambda body: len(_ops(body)))
    return counts


def sass_counts(cubin: bytes) -> dict:
    """What the GPU runs (nvdisasm of the cubin): instructions, and those of the longest loop (a label to the last
    branch back to it); ptxas fuses and reorders what the PTX says (an and + or becomes one LOP3, or not)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        lines = subprocess.run([_tool("nvdisasm"), "-c", f.name], capture_output=True, text=True).stdout.splitlines()

    def count(body: list[str]) -> int:
        return sum(bool(re.search(r"/\*[0-9a-f]{4}\*/\s+\S", line)) for line in body)

    return {"sass": count(lines), "sass loop": _longest_loop(lines, r"(\.L_x_\d+):", r"BRA `\((\.L_x_\d+)\)", count)}


def ptxas_usage(ptx: str) -> dict:
    """Registers and spill bytes from ptxas -v (the PTX Triton compiled, for sm_90a)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run([_tool("ptxas"), "-arch=sm_90a", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                             capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores", out)
    return {"registers": int(regs.group(1)) if regs else -1, "spill bytes": int(spills.group(1)) if spills else -1,
            "wgmma serialized": int("C7515" in out)}  # ptxas: "wgmma.mma_async instructions are serialized"


def _cuda_like() -> None:
    """The wrappers pick inline-PTX conversions only for CUDA tensors; these cases compile what a GPU would run."""
    from llmserve.kernels import convert, linear

    for mod in (convert, linear):
        mod.ptx_converts = lambda x: x.dtype == torch.bfloat16


def _decode(shape: str, kv: str, flag: str = ""):
    from llmserve.kernels.attention import decode_attention

    B, ctx = (int(v) for v in shape.split("x"))
    blocks = -(-ctx // PAGE)
    cache = torch.zeros(2, B * blocks + 1, PAGE, KVH, D, dtype=KINDS[kv])
    bt = torch.arange(B * blocks, dtype=torch.int32).view(B, blocks)
    ctxs = torch.full((B,), ctx, dtype=torch.int32)
    q = torch.zeros(B, H, D, dtype=torch.bfloat16)
    rows = torch.tensor([B // 2], dtype=torch.int32) if flag == "counted" else None
    return lambda: decode_attention(q, cache, bt, ctxs, D ** -0.5, 4096, rows=rows)


def _varlen(shape: str, kv: str, fresh: str = ""):
    from llmserve.kernels.shapes import varlen_query_blocks
    from llmserve.kernels.varlen import varlen_attention

    sizes, _, rows = shape.partition("+")
    B, L = (int(v) for v in sizes.split("x"))
    rows = int(rows or 0)
    qlens, ctxs = [1] * rows + [L] * B, [2048] * rows + [L] * B
    width = -(-max(ctxs) // PAGE)
    cache = torch.zeros(2, len(ctxs) * width + 1, PAGE, KVH, D, dtype=KINDS[kv])
    bt = torch.arange(len(ctxs) * width, dtype=torch.int32).view(len(ctxs), width)
    starts = torch.tensor([0] + [sum(qlens[:i + 1]) for i in range(len(qlens))], dtype=torch.int32)
    # the prompts' blocks first (a decode row is one block), as AttentionMetadata.add_varlen orders them
    seqs, firsts = (torch.tensor(v[rows:] + v[:rows], dtype=torch.int32)
                    for v in varlen_query_blocks(qlens, H // KVH, D))
    qkv = torch.zeros(sum(qlens), H + 2 * KVH, D, dtype=torch.bfloat16)
    new_kv = qkv[:, H:] if fresh in ("fresh", "tma", "persist_tma") else None
    bounds = torch.tensor([0, len(seqs) - rows if new_kv is not None else 0, len(seqs)], dtype=torch.int32) \
        if fresh.startswith("persist") else None
    return lambda: varlen_attention(qkv[:, :H], cache, bt, torch.tensor(ctxs, dtype=torch.int32), starts, seqs,
                                    firsts, D ** -0.5, new_kv=new_kv, new_loads=2 if fresh.endswith("tma") else 1,
                                    fresh_blocks=len(seqs) - rows, work_bounds=bounds, programs=33)


def _linear(kind: str, shape: str, M: int | None = None, flag: str = ""):
    from llmserve.kernels import linear

    dims = [int(v) for v in shape.split("x")]
    M, N, K = (1, *dims) if M is not None else dims
    w = torch.zeros(N, K, dtype=KINDS[kind])
    scale = None if kind == "bf16" else torch.ones(N, dtype=torch.float32)
    x = torch.zeros(M, 2 * K if flag == "gated" else K, dtype=torch.bfloat16)
    kw = {"gated": flag == "gated", "gate_out": flag == "gate_out"}
    if flag == "norm":
        kw["norm"] = linear.RowNorm(torch.ones(K, dtype=torch.bfloat16), torch.ones(256), 1e-5)
    if flag == "add":
        kw["add_to"] = torch.zeros(1, N, dtype=torch.bfloat16)
    if flag == "rope":  # Llama-3.1-8B's heads: N = (32 + 2 * 8) * 128
        cache = torch.zeros(2, 64, 16, 8, 128, dtype=torch.bfloat16)
        kw["rope"] = linear.RopeCache(torch.ones(1, 64), torch.ones(1, 64), torch.zeros(1, dtype=torch.int32), cache,
                                      32, 8, 128)
    return lambda: linear.gemv(x, w, scale, **kw) if M == 1 else linear.wmm(x, w, scale, config=None, **kw)


def _fp8mm(shape: str, accumulation: str):
    from llmserve.kernels.fp8_mm import fp8_mm

    M, N, K = (int(v) for v in shape.split("x"))
    xq, w = torch.zeros(M, K, dtype=torch.float8_e4m3fn), torch.zeros(N, K, dtype=torch.float8_e4m3fn)
    xs, ws = torch.ones(M, 1), torch.ones(N)
    return lambda: fp8_mm(xq, xs, w, ws, torch.bfloat16, fast=accumulation == "fast")


def _rope_cache():
    """A one-token rotary embedding and cache write for qkv's GEMV (Llama-3.1-8B heads; N must be their qkv rows)."""
    from llmserve.kernels.linear import RopeCache

    cos = torch.ones(1, D // 2)
    return RopeCache(cos, cos, torch.zeros(1, dtype=torch.int32), torch.zeros(2, 4, PAGE, KVH, D,
                                                                              dtype=torch.bfloat16), H, KVH, D)


def _w4(shape: str, group: str, flags: str = ""):
    from llmserve.kernels.int4 import w4gemv, w4mm

    M, N, K = (int(v) for v in shape.split("x"))
    w = torch.zeros(N, K // 2, dtype=torch.uint8)
    scale = torch.ones(N, K // int(group), dtype=torch.float16)
    flag = set(flags.split("+")) - {""}
    x = torch.zeros(M, 2 * K if "gated" in flag else K, dtype=torch.bfloat16)
    if flag & {"bytes", "words", "pairs"}:  # a GEMV kernel by name
        from llmserve.kernels.gemv import RowNorm

        rope = _rope_cache() if "rope" in flag else None
        norm = RowNorm(torch.ones(K, dtype=torch.bfloat16), torch.zeros(256), 1e-5) if "norm" in flag else None
        adds = {"add_to": torch.zeros(1, N, dtype=torch.bfloat16), "next_norm": torch.ones(N, dtype=torch.bfloat16)}
        return lambda: w4gemv(x, w, scale, gated="gated" in flag, words="words" in flag, pairs="pairs" in flag,
                              gate_out="gate_out" in flag, rope=rope, norm=norm, **(adds if "add" in flag else {}))
    if "mma" in flag:  # the Gluon kernel of int4_mma.py (1-8 rows, mma.sync), with w4gemv's folds at one row
        from llmserve.kernels.gemv import RowNorm
        from llmserve.kernels.int4_mma import w4mma

        norm = RowNorm(torch.ones(K, dtype=torch.bfloat16), torch.zeros(256), 1e-5) if "norm" in flag else None
        folds = {"gate_out": "gate_out" in flag, "rope": _rope_cache() if "rope" in flag else None, "norm": norm}
        if "add" in flag:
            folds.update(add_to=torch.zeros(1, N, dtype=torch.bfloat16), next_norm=torch.ones(N, dtype=torch.bfloat16))
        minimum = scale if "asym" in flag else None
        # staged: the cp.async ring, 3 slots; tile16: 16 rows and 4 warps a program, two register buffers, no
        # prefetch (mma_config's shape before it was timed; the instruction counts in docs/performance.md are its)
        config = (1, 4, 1, 0, 3) if "staged" in flag else (1, 4, 1, 0, 0) if "tile16" in flag else None
        return lambda: w4mma(x, w, scale, minimum, None, (N, K, int(group)), **folds, config=config)
    if "wgmma" in flag:  # the Gluon kernel (int4_wgmma.py), which w4mm picks for bf16 on Hopper from 2 rows
        from llmserve.kernels.int4_wgmma import w4wgmma

        minimum = scale if "asym" in flag else None
        return lambda: w4wgmma(x, w, scale, minimum, None, (N, K, int(group)))
    return lambda: w4mm(x, w, scale, gated="gated" in flag)


def _w8g(shape: str, group: str):
    from llmserve.kernels.int8_group import w8gmm

    M, N, K = (int(v) for v in shape.split("x"))
    w = torch.zeros(N, K, dtype=torch.int8)
    scale = torch.ones(N, K // int(group), dtype=torch.float16)
    x = torch.zeros(M, K, dtype=torch.bfloat16)
    return lambda: w8gmm(x, w, scale)


def case_call(case: str):
    kind, *rest = case.split(":")
    makers = {"decode": lambda: _decode(*rest[:3]), "varlen": lambda: _varlen(*rest[:3]),
              "gemv": lambda: _linear(*rest[:2], 1, *rest[2:3]), "wmm": lambda: _linear(*rest[:2], None, *rest[2:3]),
              "w4": lambda: _w4(*rest[:3]), "w8g": lambda: _w8g(rest[0], rest[1]),
              "fp8mm": lambda: _fp8mm(rest[0], rest[1])}
    if kind not in makers:
        raise SystemExit(f"unknown case {case!r}: decode, varlen, gemv, wmm, w4, w8g or fp8mm (see --help)")
    return makers[kind]()


def report(cases: list[str]) -> None:
    _cuda_like()
    for case in cases:
        for k in compile_launches(case_call(case)):
            meta = k.metadata
            row = {**ptx_counts(k.asm["ptx"]), **sass_counts(k.asm["cubin"]), **ptxas_usage(k.asm["ptx"]),
                   "shared": meta.shared}
            print(f"{case} {k.name} warps={meta.num_warps} stages={meta.num_stages} " +
                  " ".join(f"{key}={val}" for key, val in row.items() if val), flush=True)


def _use_tree(tree: str) -> None:
    """Imports llmserve from `tree` from here on. (`python -m` puts the working directory before PYTHONPATH, so
    a PYTHONPATH alone gave this tree's llmserve in every process: before the fix --compare compared one tree.)"""
    root = Path(tree).resolve()
    sys.path.insert(0, str(root))
    import llmserve

    if Path(llmserve.__file__).resolve().parents[1] != root:
        raise SystemExit(f"llmserve came from {llmserve.__file__}, not from {root}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--compare", help="comma-separated trees (directories with llmserve/): one process each")
    ap.add_argument("--tree", help="the directory whose llmserve/ to compile (--compare's processes)")
    args = ap.parse_args()
    if args.tree:
        _use_tree(args.tree)
    if not args.compare:
        return report(args.cases)
    for tree in args.compare.split(","):
        print(f"== {tree}", flush=True)
        subprocess.run([sys.executable, "-m", "bench.ptx_stats", *args.cases, "--tree", tree], check=True,
                       cwd=Path(__file__).resolve().parents[1])


if __name__ == "__main__":
    main()
