"""The batch-1 int4 GEMV: the tree's w4gemv against the word-reading prototypes (w4words.py, both kernels) on
Llama-3.1-8B's linears (int4 symmetric and asymmetric, groups of 128), the same inputs in one process: us a call,
weight GB/s, and their relative difference from w4gemv. Run from the repository root:
python bench/results/2026-12-04-h200-s17/int4-words/w4_ab.py OUT"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from w4words import w4gemv_words, w4gemv_words2  # noqa: E402

from bench.common import graph_time_ms  # noqa: E402
from llmserve.kernels.int4 import w4gemv  # noqa: E402
from llmserve.model.int4 import quantize_int4  # noqa: E402

SHAPES = {"qkv": (6144, 4096, False), "o": (4096, 4096, False), "gate_up": (28672, 4096, False),
          "down": (4096, 14336, True)}
res = {}
for sym in (True, False):
    for name, (N, K, gated) in SHAPES.items():
        t = {k: v.cuda() for k, v in quantize_int4(torch.randn(N, K), 128, sym).items()}
        args = (t["weight"], t["weight_scale"], t.get("weight_min"))
        x = torch.randn(1, 2 * K if gated else K, device="cuda", dtype=torch.bfloat16)
        a = w4gemv(x, *args, gated=gated).float()
        diff = {f.__name__: ((f(x, *args, gated=gated).float() - a).norm() / a.norm()).item()
                for f in (w4gemv_words, w4gemv_words2)}
        times = {}
        for label, fn in (("now", w4gemv), ("words", w4gemv_words), ("words2", w4gemv_words2), ("now_again", w4gemv),
                          ("words_again", w4gemv_words), ("words2_again", w4gemv_words2)):
            times[label] = graph_time_ms(lambda fn=fn, x=x, args=args, gated=gated: [
                fn(x, *args, gated=gated) for _ in range(20)], reps=10) * 50
        gbs = {k: (N * K / 2 + N * K / 128 * 2) / (v * 1e-6) / 1e9 for k, v in times.items()}
        key = f"{name}_{'sym' if sym else 'asym'}"
        res[key] = {"us": times, "GBps": gbs, "rel_diff": diff}
        print(key, {k: round(v, 2) for k, v in times.items()}, {k: round(v) for k, v in gbs.items()},
              {k: f"{v:.1e}" for k, v in diff.items()}, flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
