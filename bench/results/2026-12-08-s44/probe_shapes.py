"""GPU (session 44): the paired GEMV's launch shapes for down_proj and o_proj again, three rounds alternating (callA's
probe, one round: down_proj 8 x 1,024 0.504 ms against the default 16 x 1,024's 0.535; o_proj 16 x 1,024 0.222
against 16 x 512's 0.226). Llama-3.1-8B, int4 g128 symmetric, 32 layers back to back in one CUDA graph, one row.
    PYTHONPATH=. python bench/results/2026-12-08-s44/probe_shapes.py"""
import torch

from bench.common import graph_time_ms
from llmserve.kernels.int4_pairs import w4gemv_pairs
from llmserve.model.int4 import quantize_int4

CASES = {"down": (4096, 14336, [None, (8, 1024, 4, 3), (8, 2048, 4, 3), (8, 1024, 8, 3)]),
         "o": (4096, 4096, [None, (16, 1024, 4, 3), (8, 1024, 4, 3), (8, 512, 4, 3)])}

for name, (n, k, configs) in CASES.items():
    ws = []
    for _ in range(32):
        q = quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, True)
        ws.append((q["weight"], q["weight_scale"]))
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    best = {}
    for _ in range(3):
        for cfg in configs:
            def run(cfg=cfg, x=x, ws=ws, sizes=(n, k, 128)):
                return [w4gemv_pairs(x, w, s, None, None, False, cfg, False, sizes) for w, s in ws]
            t = graph_time_ms(run, reps=30)
            best[cfg or "default"] = min(best.get(cfg or "default", 1e9), t)
    print(f"shapes {name} {n}x{k} x32, best of 3: " + ", ".join(f"{c} {v:.3f} ms" for c, v in best.items()), flush=True)
