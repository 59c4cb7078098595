# ruff: noqa: B023, E402, E501, F821  (kept as run on the device; each lambda runs inside its own loop iteration)
"""Default-config timings of the tree on PYTHONPATH: decode attention per case, the varlen mixed step, rope+cache write."""
import json
import sys

import torch

from bench.common import graph_time_ms
from bench.kernel_check.attention import _varlen_case
from llmserve.kernels import fused
from llmserve.kernels.attention import decode_attention

H, KVH, D, page, top = 32, 8, 128, 16, 4096
res = {}
for B, ctx, kv in [(256, 2100, "fp8"), (1024, 600, "fp8"), (128, 2100, "fp8"), (64, 2100, "fp8"), (8, 1100, "fp8"),
                   (1, 2048, "fp8"), (256, 2100, "bf16"), (1024, 600, "bf16"), (64, 2100, "bf16"), (8, 1100, "bf16"),
                   (1, 2048, "bf16"), (256, 170, "bf16")]:
    bp = -(-ctx // page)
    nb = B * bp + 1
    dtype = torch.float8_e4m3fn if kv == "fp8" else torch.bfloat16
    cache = torch.randn(2, nb, page, KVH, D, device="cuda", dtype=torch.bfloat16).to(dtype)
    bt = torch.randperm(nb - 1, device="cuda")[:B * bp].view(B, bp).to(torch.int32)
    bt = torch.cat([bt, torch.zeros(B, top // page - bp, dtype=torch.int32, device="cuda")], 1)
    ctxs = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16)
    t = graph_time_ms(lambda: [decode_attention(q, cache, bt, ctxs, D ** -0.5, top) for _ in range(32)], reps=10) * 1000 / 32
    res[f"decode_{B}x{ctx}_{kv}"] = t
    print(f"decode {B}x{ctx} {kv}: {t:.1f} us ({2 * B * ctx * KVH * D * cache.element_size() / t / 1e6:.2f} TB/s)", flush=True)
    del cache
import os

for B, L, rows, kv8 in [] if os.environ.get('DECODE_ONLY') else [(3, 2048, 256, False), (3, 2048, 256, True), (2, 2048, 0, True), (32, 128, 0, False)]:
    r = _varlen_case(B, L, None, rows, 2048, kv8, 2 if kv8 else 1)
    res[f"varlen_B{B}_L{L}_dec{rows}_kv{'8' if kv8 else '16'}"] = r["ours_us"]
    print(f"varlen B{B} L{L} dec{rows} kv8={kv8}: {r['ours_us']:.1f} us", flush=True)
for T in () if os.environ.get('DECODE_ONLY') else (256, 8192):
    for dtype in (torch.bfloat16, torch.float8_e4m3fn):
        qkv = torch.randn(T, (H + 2 * KVH) * D, device="cuda", dtype=torch.bfloat16)
        pos = torch.randint(0, 4000, (T,), device="cuda", dtype=torch.int32)
        ang = torch.rand(4096, D // 2, device="cuda") * 6
        cos, sin = ang.cos(), ang.sin()
        nb = T // page + 64
        slots = torch.randperm(nb * page, device="cuda")[:T].to(torch.int32) if T == 256 else \
            torch.arange(T, device="cuda", dtype=torch.int32) + 64 * page
        cache = torch.zeros(2, nb, page, KVH, D, device="cuda", dtype=dtype)
        t = graph_time_ms(lambda: [fused.rope_and_cache(qkv, pos, cos, sin, slots, cache, H, KVH, D)
                                   for _ in range(32)], reps=10) * 1000 / 32
        res[f"rope_T{T}_{str(dtype)[6:]}"] = t
        print(f"rope+cache T={T} {dtype}: {t:.1f} us", flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
