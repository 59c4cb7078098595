"""GPU: the Gluon int4 kernel (llmserve/kernels/int4_wgmma.py) at launch shapes wgmma_config does not pick yet
(BLOCK_M 256, 8 warps, 3 stages) against dequantize + F.linear, then one launch of each shape in CONFIGS for ncu
(gate_up of Llama-3.1-8B at 256 rows); `ws_check`, `ws_time`: the landed kernel, the warp-specialized prototype
(w4ws.py) and the kernel as at 335bb50 (`_base/`) checked and timed side by side.
    PYTHONPATH=. python bench/results/2026-12-06-s35/probe.py check
    ncu --clock-control none -k regex:w4wgmma ... python bench/results/2026-12-06-s35/probe.py ncu"""
import importlib.util
import os
import sys
from pathlib import Path

import torch

from llmserve.kernels import int4
from llmserve.kernels.int4_wgmma import w4wgmma, wgmma_config
from llmserve.model.int4 import quantize_int4

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from w4ws import w4ws  # noqa: E402


def _old_kernel():
    """int4_wgmma.w4wgmma as at 335bb50 (W's bytes read as bytes), from the comparison tree _base/ that
    `bash bench/results/2026-12-05-next-calls/tree.sh _base 335bb50` makes; None without it."""
    path = Path(__file__).resolve().parents[3] / "_base" / "llmserve" / "kernels" / "int4_wgmma.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("int4_wgmma_335bb50", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.w4wgmma


KERNELS = {k: f for k, f in {"old": _old_kernel(), "wgmma": w4wgmma, "ws": w4ws}.items() if f is not None}

CONFIGS = [None, (128, 64, 4, 3, 1), (128, 128, 8, 4, 1), (256, 128, 8, 3, 1)]


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def check():
    torch.manual_seed(0)
    for (n, k), sym in [((4096, 4096), True), ((6144, 4096), False), ((4096, 14336), True)]:
        q = quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, sym)
        w = (q["weight"], q["weight_scale"], q.get("weight_min"))
        for M in (200, 256, 300, 1024):
            x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
            ref = int4.w4mm_dequant(x, *w)
            for c in CONFIGS[1:] + [(256, 128, 8, 2, 2), (256, 128, 8, 3, 4)]:
                y = w4wgmma(x, *w, None, (n, k, 128), config=c)
                print(f"{n}x{k} {'sym' if sym else 'asym'} M={M} {c}: rel err {rel_err(y, ref):.5f}", flush=True)


def ws_check():
    """The landed kernel (W's bytes read as 16-bit words since 335bb50), the warp-specialized prototype (w4ws) and
    the kernel as at 335bb50 against dequantize + F.linear, one kind at a time ("ok KIND" once a kind's cases ran: a
    hang is cut by the caller's timeout)."""
    torch.manual_seed(0)
    cases = []
    for (n, k), sym in [((4096, 4096), True), ((6144, 4096), False), ((4096, 14336), True)]:
        q = quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, sym)
        w = (q["weight"], q["weight_scale"], q.get("weight_min"))
        for M in (2, 8, 64, 256, 300):
            x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
            cases.append((f"{n}x{k} {'sym' if sym else 'asym'} M={M}", x, w, (n, k, 128), int4.w4mm_dequant(x, *w)))
    for kind in KERNELS:
        for label, x, w, sizes, ref in cases:
            for c in (None, (128, 128, 8, 4, 1), (256, 128, 8, 3, 1)):
                try:
                    err = f"{rel_err(KERNELS[kind](x, *w, None, sizes, config=c), ref):.5f}"
                except Exception as exc:  # noqa: BLE001
                    err = f"FAIL {type(exc).__name__}: {str(exc)[:200]}"
                print(f"{kind} {label} {c}: rel err {err}", flush=True)
        print(f"ok {kind}", flush=True)


def ws_time():
    """Each kernel of PROBE_KINDS (default all) over all linears (32 layers, one CUDA graph each) at each row count
    and launch shape."""
    from bench.common import SHAPES, graph_time_ms, linear_shapes

    kinds = os.environ.get("PROBE_KINDS", ",".join(KERNELS)).split(",")
    cfg = SHAPES["llama3.1-8b"]
    layers = {name: ([quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, True)
                      for _ in range(cfg["num_hidden_layers"])], n, k) for name, (n, k) in linear_shapes(cfg).items()}
    for M in (8, 256, 1024, 64):
        shapes = [None] + [(min(M, 128), 128, 8, 4, 1)] * (M >= 64) + [(256, 128, 8, 3, 1)] * (M >= 256)
        for c in shapes:
            tot = dict.fromkeys(kinds, 0.0)
            for name, (qs, n, k) in layers.items():
                x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
                for kind in kinds:
                    try:
                        ms = graph_time_ms(lambda fn=KERNELS[kind], x=x, qs=qs, n=n, k=k, c=c: [
                            fn(x, q["weight"], q["weight_scale"], None, None, (n, k, 128), config=c) for q in qs],
                            reps=10)
                    except Exception as exc:  # noqa: BLE001
                        print(f"FAIL {kind} M={M} {c} {name}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                        ms = float("nan")
                    tot[kind] += ms
                    print(f"time M={M} {c} {name} {kind} {ms:.3f} ms", flush=True)
            print(f"total M={M} {c}: " + " ".join(f"{kind} {ms:.3f}" for kind, ms in tot.items()) + " ms", flush=True)


def paths():
    """At PROBE_ROWS rows (default 512,2048): the landed kernel at its default launch shape and at BLOCK_M 256 (8 warps,
    3 stages, K split 1-2), against dequantize + cuBLAS (w4mm_dequant), over all linears (32 layers, one CUDA graph
    each)."""
    from bench.common import SHAPES, graph_time_ms, linear_shapes

    cfg = SHAPES["llama3.1-8b"]
    layers = {name: ([quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, True)
                      for _ in range(cfg["num_hidden_layers"])], n, k) for name, (n, k) in linear_shapes(cfg).items()}
    for M in [int(v) for v in os.environ.get("PROBE_ROWS", "512,2048").split(",")]:
        tot: dict = {}
        for name, (qs, n, k) in layers.items():
            x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
            shapes = (None, (256, 128, 8, 3, 1), (256, 128, 8, 3, 2))
            calls = {str(c): (lambda q, c=c, x=x, n=n, k=k: w4wgmma(x, q["weight"], q["weight_scale"], None, None,
                                                                    (n, k, 128), config=c)) for c in shapes}
            calls["dequant_cublas"] = lambda q, x=x: int4.w4mm_dequant(x, q["weight"], q["weight_scale"], None)
            for key, fn in calls.items():
                ms = graph_time_ms(lambda fn=fn, qs=qs: [fn(q) for q in qs], reps=5)
                tot[key] = tot.get(key, 0.0) + ms
                print(f"paths M={M} {name} {key} {ms:.3f} ms", flush=True)
        print(f"paths total M={M}: " + ", ".join(f"{key} {ms:.3f}" for key, ms in tot.items()) + " ms", flush=True)


def ncu():
    n, k = 28672, 4096
    q = quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, True)
    x = torch.randn(256, k, device="cuda", dtype=torch.bfloat16)
    for c in CONFIGS:
        print(c or wgmma_config(256, n, k), flush=True)
        w4wgmma(x, q["weight"], q["weight_scale"], None, None, (n, k, 128), config=c)
    torch.cuda.synchronize()


if __name__ == "__main__":
    {"check": check, "ncu": ncu, "ws_check": ws_check, "ws_time": ws_time, "paths": paths}[sys.argv[1]]()
