"""GPU (session 39): the one-row GEMVs with K split across programs (group_tiles.py's `slices_summed`): the paired
int4 GEMV (int4_pairs.py) and the 16/8-bit one (gemv.py, bf16 and fp8 weights) at each PROGRAMS target, over all
Llama-3.1-8B linears (32 layers, one CUDA graph each), beside no split (0); first each split's output against the
unsplit one (the same weights and row).
    PYTHONPATH=. python bench/results/2026-12-07-s39/probe.py [int4|bf16|fp8 ...] [--programs 512,768,...]"""
import argparse

import torch

from bench.common import SHAPES, graph_time_ms, linear_shapes
from llmserve.kernels.gemv import gemv
from llmserve.kernels.int4_pairs import w4gemv_pairs
from llmserve.model.int4 import quantize_int4
from llmserve.model.linear import quantize_weight


def _weights(kind, n, k):
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    if kind == "int4":
        q = quantize_int4(w, 128, True)
        return q["weight"], q["weight_scale"]
    return (w, None) if kind == "bf16" else quantize_weight(w, "fp8")


def _product(kind, x, w, s, programs, counters):
    if kind == "int4":
        return w4gemv_pairs(x, w, s, None, None, False, None, False, (w.shape[0], 2 * w.shape[1], 128),
                            programs=programs, counters=counters)
    return gemv(x, w, s, counters=counters, programs=programs)


def sweep(kind: str, splits: list[int]) -> None:
    cfg = SHAPES["llama3.1-8b"]
    totals = dict.fromkeys([0, *splits], 0.0)
    for name, (n, k) in linear_shapes(cfg).items():
        ws = [_weights(kind, n, k) for _ in range(cfg["num_hidden_layers"])]
        cs = [torch.zeros(n, dtype=torch.int32, device="cuda") for _ in ws]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        nbytes = sum(t.numel() * t.element_size() for w in ws for t in w if t is not None)
        ref = _product(kind, x, *ws[0], 0, None).float()
        line = f"{kind} {name} {n}x{k}:"
        for p in [0, *splits]:
            err = ((_product(kind, x, *ws[0], p, cs[0]).float() - ref).abs().max() / ref.abs().max()).item()
            ms = graph_time_ms(lambda p=p, x=x, ws=ws, cs=cs: [_product(kind, x, *w, p, c) for w, c in zip(ws, cs)],
                               reps=20)
            assert not any(c.any() for c in cs), "counters left non-zero"
            totals[p] += ms
            line += f" {p}: {ms:.3f} ms ({nbytes / ms / 1e9:.2f} TB/s, err {err:.1e})"
        print(line, flush=True)
        del ws
    print(f"total {kind} " + " ".join(f"{p}: {t:.3f} ms" for p, t in totals.items()), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("kinds", nargs="*", default=["int4", "bf16", "fp8"])
    ap.add_argument("--programs", default="512,768,1024,1536")
    a = ap.parse_args()
    torch.manual_seed(0)
    for kind in a.kinds:
        sweep(kind, [int(v) for v in a.programs.split(",")])
