"""GPU (session 36): the tensor-core int4 kernel for 1-8 rows (llmserve/kernels/int4_mma.py; its prototype w4mv.py)
against dequantize + F.linear, then timed beside the paired GEMV (int4_pairs.py, one row) and the Gluon wgmma kernel
(8 rows) over all Llama-3.1-8B linears (32 layers, one CUDA graph each), at each launch shape of VARIANTS.
    PYTHONPATH=. python bench/results/2026-12-07-s36/probe.py check|time"""
import os
import sys

import torch

from llmserve.kernels import int4
from llmserve.kernels.int4_mma import w4mma
from llmserve.kernels.int4_wgmma import w4wgmma
from llmserve.model.int4 import quantize_int4

# (R, S, U, AHEAD, STAGES): int4_mma.mma_config's launch shapes (STAGES 0: register buffers, else the cp.async ring)
VARIANTS = [tuple(int(v) for v in c.split(",")) for c in os.environ.get("PROBE_VARIANTS", "").split(";") if c] or [
    (1, 4, 1, 0, 0), (1, 4, 1, 2, 0), (1, 8, 1, 2, 0), (2, 4, 1, 2, 0), (1, 16, 1, 0, 0), (1, 4, 1, 0, 3),
    (1, 4, 1, 0, 4), (1, 8, 1, 0, 3), (2, 4, 1, 0, 3)]


def w4mv(x, w, s, m, *config):
    return w4mma(x, w, s, m, None, (w.shape[0], 2 * w.shape[1], 128), config=config)


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def _weights(n, k, sym):
    q = quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, sym)
    return q["weight"], q["weight_scale"], q.get("weight_min")


def check():
    torch.manual_seed(0)
    worst = 0.0
    for (n, k), sym in [((4096, 4096), True), ((6144, 4096), False), ((4096, 14336), True), ((1000, 384), True),
                        ((1000, 384), False), ((28672, 4096), True), ((4096, 128), False)]:
        w = _weights(n, k, sym)
        for M in (1, 2, 5, 8):
            x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
            ref = int4.w4mm_dequant(x, *w) if M > 1 else int4.w4mm_dequant(x.expand(2, k).contiguous(), *w)[:1]
            base = int4.w4gemv(x, *w, pairs=True) if M == 1 else w4wgmma(x, *w, None, (n, k, 128))
            line = f"{n}x{k} {'sym' if sym else 'asym'} M={M}: landed {rel_err(base, ref):.5f}"
            for v in VARIANTS:
                try:
                    e = rel_err(w4mv(x, *w, *v), ref)
                    worst = max(worst, e)
                    line += f" {v}:{e:.5f}"
                except Exception as exc:  # noqa: BLE001
                    line += f" {v}:FAIL {type(exc).__name__}: {str(exc)[:160]}"
            print(line, flush=True)
    print(f"worst {worst:.5f}", flush=True)


def time():
    from bench.common import SHAPES, graph_time_ms, linear_shapes

    cfg = SHAPES["llama3.1-8b"]
    layers = {name: ([_weights(n, k, True) for _ in range(cfg["num_hidden_layers"])], n, k)
              for name, (n, k) in linear_shapes(cfg).items()}
    for M in [int(v) for v in os.environ.get("PROBE_ROWS", "1,8").split(",")]:
        best = {}
        base_total = 0.0
        for name, (ws, n, k) in layers.items():
            x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
            nbytes = sum(w[0].numel() + w[1].numel() * w[1].element_size() for w in ws)
            if M == 1:
                base = graph_time_ms(lambda x=x, ws=ws: [int4.w4gemv(x, *w, pairs=True) for w in ws], reps=20)
            else:
                base = graph_time_ms(lambda x=x, ws=ws, n=n, k=k: [w4wgmma(x, *w, None, (n, k, 128)) for w in ws],
                                     reps=20)
            base_total += base
            line = f"time M={M} {name} landed {base:.3f} ms ({nbytes / base / 1e9:.2f} TB/s)"
            for v in VARIANTS:
                try:
                    ms = graph_time_ms(lambda x=x, ws=ws, v=v: [w4mv(x, *w, *v) for w in ws], reps=20)
                except Exception as exc:  # noqa: BLE001
                    print(f"FAIL {v} {name}: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
                    continue
                line += f" {v}:{ms:.3f}"
                if name not in best or ms < best[name][0]:
                    best[name] = (ms, v)
            print(line, flush=True)
        print(f"total M={M}: landed {base_total:.3f} ms, w4mv best {sum(b[0] for b in best.values()):.3f} ms "
              + str({k: v for k, v in best.items()}), flush=True)


if __name__ == "__main__":
    {"check": check, "time": time}[sys.argv[1]]()
