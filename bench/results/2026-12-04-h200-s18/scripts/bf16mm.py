# ruff: noqa: B023, E501  (each lambda runs inside its own loop iteration)
"""bf16 x bf16 at 17-512 rows: F.linear (cuBLAS, what Linear calls past 16 rows) against the tile sweep fp8mm.py
ran (fp8_mm's kernel, unscaled), on Llama-3.1-8B's linears: does the fp8 finding (cuBLAS's tiles leave SMs idle for N of a few thousand
at up to 256 rows) hold for 16-bit weights too? Prints us a call and the best config per shape; without a GPU it
checks one small product under Triton's interpreter. python bench/results/2026-12-04-h200-s18/scripts/bf16mm.py OUT.json"""
import itertools
import json
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from torch.nn import functional as F  # noqa: E402

from llmserve.kernels.fp8_mm import tile_mm  # noqa: E402


def mm(x, w, cfg):
    """fp8_mm's kernel without its scales, at a given (BM, BN, BK, stages, warps)."""
    return tile_mm(x, w, x.dtype, cfg)


def main(path):
    if not torch.cuda.is_available():
        x, w = torch.randn(40, 128).half(), torch.randn(64, 128).half()
        ref = x.float() @ w.float().t()
        print("interpreter check, max diff", (mm(x, w, (16, 32, 64, 2, 4)).float() - ref).abs().max().item())
        return
    from bench.common import graph_time_ms
    shapes = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
    cfgs = [c for c in itertools.product((64, 128), (64, 128, 256), (64,), (3, 4, 5), (4, 8))
            if not (c[0] == 128 and c[1] == 256 and c[4] == 4)]
    res = {}
    for M, (name, (N, K)) in itertools.product((32, 64, 128, 256, 512), shapes.items()):
        torch.manual_seed(0)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * 0.02
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        ref = F.linear(x, w).float()
        t = {"cublas": graph_time_ms(lambda: [F.linear(x, w) for _ in range(10)], reps=10) * 100}
        diff = {}
        for cfg in cfgs:
            key = "/".join(map(str, cfg))
            try:
                diff[key] = ((mm(x, w, cfg).float() - ref).norm() / ref.norm()).item()
                t[key] = graph_time_ms(lambda cfg=cfg: [mm(x, w, cfg) for _ in range(10)], reps=10) * 100
            except Exception as e:  # noqa: BLE001 - a config past the shared memory
                t[key], diff[key] = None, str(e)[:80]
        ok = {k: v for k, v in t.items() if v is not None and k != "cublas"}
        best = min(ok, key=ok.get)
        res[f"{name}_M{M}"] = {"us": t, "rel_diff": diff, "best": best}
        print(f"{name} M={M}: cublas {t['cublas']:.1f} us ({(N * K * 2) / t['cublas'] / 1e6:.2f} TB/s); best {best} "
              f"{ok[best]:.1f} us (x{t['cublas'] / ok[best]:.2f}, diff {diff[best]:.1e})", flush=True)
    json.dump(res, open(path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
