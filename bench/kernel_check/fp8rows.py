"""fp8 linears at 2-32 rows (issue 18, batch 2-32 decode): the weights converted to bf16 in `wmm` (today's path)
against e4m3 rows straight into the tensor cores (`wmm_fp8`, the rows quantized per token first) and against
`fp8_mm` (the 33-64-row kernel, 64-row tiles of x). Each path is timed with the kernels it needs in a decode
layer beyond the norms, which both paths have (a norm hands qkv and gate_up their rows quantized in the same
launch): o_proj's input quantized (`quant_fp8_per_token`), down's gate applied (`silu_mul`, or
`silu_mul_quant_fp8`). 32 layers of each matrix in one CUDA graph, MM_SHAPE's shapes (default Llama-2-7B's).
The engine's decode steps either way: `--sections switches` (bench/kernel_check/switches.py)."""

from __future__ import annotations

import os

import torch

from bench.common import graph_time_ms
from bench.kernel_check.linear import _weights
from bench.kernel_check.report import section

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): 64+ weight rows a tile take Hopper's e4m3 wgmma
CONFIGS_FP8 = [(16, 64, 128, 4, 4), (16, 64, 128, 4, 6), (16, 64, 256, 4, 3), (16, 64, 256, 4, 4),
               (16, 128, 128, 4, 4), (16, 128, 128, 8, 4), (16, 128, 256, 8, 3), (16, 32, 256, 4, 4)]


def _configs(M: int) -> list[tuple[int, int, int, int, int]]:
    bm = 16 if M <= 16 else 32
    return [(bm, *c[1:]) for c in CONFIGS_FP8]


def _paths(name: str, layers: list, x: torch.Tensor, fast: bool) -> dict:
    """{path: fn} for one matrix's 32 layers; x is the 16-bit input ([M, 2K] for down: gate and up)."""
    from llmserve.kernels import fused
    from llmserve.kernels.fp8_mm import fp8_mm
    from llmserve.kernels.linear import quant_fp8_per_token, wmm, wmm_fp8

    gated, M = name == "down", x.shape[0]
    xq0 = None if name in ("o", "down") else quant_fp8_per_token(x)  # qkv's and gate_up's rows, from the norm

    def rows():  # what the e4m3 paths launch besides the product
        if gated:
            return fused.silu_mul_quant_fp8(x)
        return quant_fp8_per_token(x) if name == "o" else xq0

    def run(product):
        return lambda: [product(*rows(), w, s) for w, s in layers]

    out = {"wmm_bf16_convert": lambda: [wmm(x, w, s, gated=gated) for w, s in layers],
           "fp8_mm": run(lambda q, qs, w, s: fp8_mm(q, qs, w, s, torch.bfloat16, fast))}
    for cfg in _configs(M):
        out[f"wmm_fp8 {cfg}"] = run(lambda q, qs, w, s, cfg=cfg: wmm_fp8(q, qs, w, s, torch.bfloat16, fast=fast,
                                                                         config=cfg))
    out["wmm_fp8 default"] = run(lambda q, qs, w, s: wmm_fp8(q, qs, w, s, torch.bfloat16, fast=fast))
    return out


@section("fp8rows")
def s_fp8rows(args):
    """Per M (MM_MS, default 2,4,8,16,32) and matrix: each path's ms over 32 layers; totals per path."""
    fast = os.environ.get("FP8_FAST", "0") == "1"
    W = _weights("fp8")
    res = {}
    for M in (int(m) for m in os.environ.get("MM_MS", "2,4,8,16,32").split(",")):
        for name, layers in W.items():
            if name == "lm_head":
                continue
            N, K = layers[0][0].shape
            x = torch.randn(M, 2 * K if name == "down" else K, device="cuda", dtype=torch.bfloat16)
            times = {}
            for path, fn in _paths(name, layers, x, fast).items():
                try:
                    times[path] = graph_time_ms(fn, reps=10)
                except Exception as exc:  # noqa: BLE001 - e.g. a block shape over the shared-memory limit
                    print("skip", M, name, path, str(exc)[:100])
            res[f"M{M}/{name}"] = times
            args.report.results["fp8rows"] = {"per_matrix": res, "fast": fast}
            args.report.save()
        _say_totals(args.report, M, [t for k, t in res.items() if k.startswith(f"M{M}/")])


def _say_totals(report, M: int, tables: list[dict]) -> None:
    """Each path's sum over the matrices (paths every matrix ran), and the best config per matrix summed."""
    common = set.intersection(*(set(t) for t in tables))
    t = {p: sum(tab[p] for tab in tables) for p in common}
    per_matrix = sum(min(v for p, v in tab.items() if p.startswith("wmm_fp8")) for tab in tables)
    best = min((p for p in t if p.startswith("wmm_fp8 (")), key=t.get)
    report.results.setdefault("fp8rows_totals", {})[f"M{M}"] = {**t, "wmm_fp8 best per matrix": per_matrix}
    report.say(f"fp8rows M={M}: convert {t.get('wmm_bf16_convert', float('nan')):.3f} ms, fp8_mm "
               f"{t.get('fp8_mm', float('nan')):.3f}, wmm_fp8 default {t.get('wmm_fp8 default', float('nan')):.3f}, "
               f"best one config {best[8:]} {t[best]:.3f}, best per matrix {per_matrix:.3f}")
    print(report.summary[-1], flush=True)
