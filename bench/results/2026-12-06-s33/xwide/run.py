"""Session 33: the x-wide int4 matmul (int4_rows.py beside this script) against
int4.w4mm's paths (tensor-core kernel, dequantize + cuBLAS) and bf16 cuBLAS over all linears of the Llama-3.1-8B
shape (g128, symmetric, one CUDA graph each) at 128-2,048 rows; launch shapes (BLOCK_M, BLOCK_N, warps, stages) from
XWIDE_CONFIGS. Prints one line a measurement; a json at the end."""
import json
import os
import sys
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F

from bench.common import SHAPES, graph_time_ms, linear_shapes
from llmserve.kernels.int4 import check_codes, mm_config, w4mm, w4mm_dequant
from llmserve.model.int4 import quantize_int4

sys.path.insert(0, str(Path(__file__).parent))
from int4_rows import w4mm_rows  # noqa: E402

CONFIGS = [tuple(int(v) for v in c.split(",")) for c in os.environ.get(
    "XWIDE_CONFIGS", "128,128,8,3;128,128,8,2;128,256,8,2;256,128,8,2;64,128,4,3;64,256,8,3;128,64,4,3").split(";")]
ROWS = [int(v) for v in os.environ.get("XWIDE_ROWS", "128,256,512,1024,2048").split(",")]


def xwide(x, w, scale, minimum, config):
    return w4mm_rows(x, w, scale, minimum, None, config, False, check_codes(w, scale, minimum))


def main() -> None:
    cfg = SHAPES["llama3.1-8b"]
    shapes = [(n, k) for _ in range(cfg["num_hidden_layers"]) for n, k in linear_shapes(cfg).values()]
    sym = os.environ.get("XWIDE_ASYM") != "1"
    layers = [quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, sym) for n, k in shapes]
    res = {}
    for M in ROWS:
        xs = {k: torch.randn(M, k, device="cuda", dtype=torch.bfloat16) for _, k in shapes}
        args = [(xs[q["weight"].shape[1] * 2], q["weight"], q["weight_scale"], q.get("weight_min")) for q in layers]
        # correctness: layer 0..3 against dequantize + cuBLAS (the same bf16 weights; sums in another order)
        for c in CONFIGS[:1]:
            for a in args[:4]:
                ref, out = w4mm_dequant(*a), xwide(*a, c)
                err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                print(f"M={M} check {c}: rel {err:.2e}", flush=True)
                assert err < 1e-2
        paths = {"tiles": [partial(w4mm, *a, config=mm_config(M, a[1].shape[0], a[0].shape[1], 128)) for a in args],
                 "dequant_cublas": [partial(w4mm_dequant, *a) for a in args]}
        paths.update({f"xwide{c}": [partial(xwide, *a, c) for a in args] for c in CONFIGS})
        for name, fs in paths.items():
            try:
                ms = graph_time_ms(lambda fs=fs: [f() for f in fs], reps=10)
            except Exception as exc:  # noqa: BLE001
                ms = f"fail {type(exc).__name__}: {str(exc)[:100]}"
            res[f"M{M}/{name}"] = ms
            print(f"M={M} {name}: {ms if isinstance(ms, str) else f'{ms:.3f}'} ms over all linears", flush=True)
        del xs, args, paths
    del layers
    torch.cuda.empty_cache()
    ws = [(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, k) for n, k in shapes[:8]]
    for M in ROWS:  # two layers' bf16 weights, timed x 16 (as kernel_check int4_paths)
        xs = {k: torch.randn(M, k, device="cuda", dtype=torch.bfloat16) for _, k in ws}
        ms = res[f"M{M}/bf16_cublas"] = graph_time_ms(lambda xs=xs: [F.linear(xs[k], w) for w, k in ws]) * 16
        print(f"M={M} bf16 cuBLAS: {ms:.3f} ms over all linears (two layers x 16)", flush=True)
    out = os.environ.get("XWIDE_OUT")
    if out:
        Path(out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
