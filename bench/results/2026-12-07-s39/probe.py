"""GPU (session 39): the one-row paired int4 GEMV (int4_pairs.py) with K split across programs (group_tiles.py's
`slices_summed`) at SPLIT programs, over all Llama-3.1-8B linears (32 layers, one CUDA graph each), beside no split;
first each split against the unsplit output (the same weights and row).
    PYTHONPATH=. python bench/results/2026-12-07-s39/probe.py [PROGRAMS,...]"""
import sys

import torch

from bench.common import SHAPES, graph_time_ms, linear_shapes
from llmserve.kernels.int4_pairs import w4gemv_pairs
from llmserve.model.int4 import quantize_int4


def _weights(n, k):
    q = quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, True)
    return q["weight"], q["weight_scale"]


def _gemv(x, w, s, programs, counters):
    return w4gemv_pairs(x, w, s, None, None, False, None, False, (w.shape[0], 2 * w.shape[1], 128),
                        programs=programs, counters=counters)


def main(splits: list[int]) -> None:
    torch.manual_seed(0)
    cfg = SHAPES["llama3.1-8b"]
    totals = dict.fromkeys([0, *splits], 0.0)
    for name, (n, k) in linear_shapes(cfg).items():
        ws = [_weights(n, k) for _ in range(cfg["num_hidden_layers"])]
        cs = [torch.zeros(n, dtype=torch.int32, device="cuda") for _ in ws]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        nbytes = sum(w.numel() + s.numel() * s.element_size() for w, s in ws)
        ref = _gemv(x, *ws[0], 0, None).float()
        line = f"{name} {n}x{k}:"
        for p in [0, *splits]:
            err = ((_gemv(x, *ws[0], p, cs[0]).float() - ref).abs().max() / ref.abs().max()).item()
            ms = graph_time_ms(lambda p=p, x=x, ws=ws, cs=cs: [_gemv(x, w, s, p, c) for (w, s), c in zip(ws, cs)],
                               reps=20)
            assert not any(c.any() for c in cs), "counters left non-zero"
            totals[p] += ms
            line += f" {p}: {ms:.3f} ms ({nbytes / ms / 1e9:.2f} TB/s, err {err:.1e})"
        print(line, flush=True)
    print("total " + " ".join(f"{p}: {t:.3f} ms" for p, t in totals.items()), flush=True)


if __name__ == "__main__":
    main([int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "512,768,1024,1536").split(",")])
