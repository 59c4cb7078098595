# ruff: noqa: B023, E402, E501, F821  (kept as run on the device; each lambda runs inside its own loop iteration)
"""The varlen kernel reading one cache block per load (_exp/attention.py) against the tree's, same inputs, one process."""
import importlib.util
import itertools
import json
import sys

import torch

from bench.common import graph_time_ms
from llmserve.kernels import attention as cur
from llmserve.kernels.shapes import varlen_query_blocks

spec = importlib.util.spec_from_file_location("exp_attention", "_exp/attention.py")
exp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(exp)
H, KVH, D, page = 32, 8, 128, 16
res = {}
for B, L, rows, kv8 in [(3, 2048, 256, False), (3, 2048, 256, True), (2, 2048, 0, False), (2, 2048, 0, True),
                        (32, 128, 0, False), (4, 1000, 0, False)]:
    torch.manual_seed(0)
    qlens, ctxs = [1] * rows + [L] * B, [2048] * rows + [L] * B
    width = -(-max(ctxs) // page)
    cache = torch.randn(2, len(ctxs) * width + 1, page, KVH, D, device="cuda", dtype=torch.bfloat16)
    if kv8:
        cache = cache.to(torch.float8_e4m3fn)
    bt = torch.arange(len(ctxs) * width, device="cuda", dtype=torch.int32).view(len(ctxs), width)
    ctx = torch.tensor(ctxs, dtype=torch.int32, device="cuda")
    qstart = torch.tensor([0] + list(itertools.accumulate(qlens)), dtype=torch.int32, device="cuda")
    seqs, starts = varlen_query_blocks(qlens, H // KVH, D)
    qb = (torch.tensor(seqs, dtype=torch.int32, device="cuda"), torch.tensor(starts, dtype=torch.int32, device="cuda"))
    q = torch.randn(sum(qlens), H, D, device="cuda", dtype=torch.bfloat16)
    outs, times = {}, {}
    for name, mod in (("cur", cur), ("exp", exp), ("cur2", cur), ("exp2", exp)):
        outs[name[:3]] = mod.varlen_attention(q, cache, bt, ctx, qstart, *qb, D ** -0.5)
        times[name] = graph_time_ms(lambda mod=mod: [mod.varlen_attention(q, cache, bt, ctx, qstart, *qb, D ** -0.5)
                                                     for _ in range(16)], reps=8) * 1000 / 16
    diff = (outs["cur"].float() - outs["exp"].float()).abs().max().item()
    key = f"B{B}_L{L}_dec{rows}_kv{'8' if kv8 else '16'}"
    res[key] = {**times, "max_diff": diff}
    print(key, {k: round(v, 1) for k, v in times.items()}, f"diff {diff:.2e}", flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
