"""GPU (session 42): why the paired int4 GEMV (int4_pairs.py) loses under programmatic dependent launch (int4.PAIRS_PDL;
docs/performance.md, thirty-first session: the batch-1 graph 3.561 ms with it, 2.909 without), and x's natural pairs:
1. Times: Llama-3.1-8B's four linears, 32 layers each, at one row, in one CUDA graph, each kernel (a) launched plainly,
   (b) under PDL, (c) with the PDL code (the grid wait and trigger) but launched plainly: (c) against (a) is the code's
   cost, (b) against (c) the launch's; (d) and (e) under PDL with the trigger after the loop or none (the next kernel
   launched as this one's programs end). Also each matrix alone, 32 times in a row.
2. Placement: a recorder kernel (down_proj's grid, 4 warps) launched after gate_up's paired GEMV, plainly or under PDL,
   writes each program's SM (%smid) and its start and wait-end clocks (%globaltimer): under PDL are its programs
   spread over the SMs as a plain launch spreads them, or piled on the SMs that had room while gate_up ran?
3. x's natural pairs (int4_pairs.NATURAL_MAX_K, this folder's natural-pairs.patch): each matrix plainly launched
   with the spread pairs (NATURAL_MAX_K 0, before and after) and the natural ones (any K), the outputs' difference;
   last, if time is left, the natural pairs at other launch shapes.
    git apply bench/results/2026-12-07-s42/natural-pairs.patch  # first (callA.sh does)
    PYTHONPATH=. python bench/results/2026-12-07-s42/probe_pdl.py"""
import contextlib

import torch
import triton
import triton.language as tl

from bench.common import SHAPES, graph_time_ms, linear_shapes
from llmserve.kernels import int4_pairs, launch_args
from llmserve.kernels.int4_pairs import w4gemv_pairs
from llmserve.kernels.pdl import pdl_prologue
from llmserve.model.int4 import quantize_int4


@triton.jit
def _clock(v):
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [v], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _where(sm_ptr, t_ptr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    one = tl.full((1,), 0, tl.int32) + pid
    t0 = _clock(one)
    pdl_prologue(PDL)
    t1 = _clock(one)
    sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [one], dtype=tl.int32, is_pure=False, pack=1)
    at = tl.arange(0, 1)
    tl.store(sm_ptr + pid + at, sm)
    tl.store(t_ptr + 2 * pid + at, t0)
    tl.store(t_ptr + 2 * pid + 1 + at, t1)


def _layer_weights(cfg):
    out = {}
    for name, (n, k) in linear_shapes(cfg).items():
        ws = []
        for _ in range(cfg["num_hidden_layers"]):
            q = quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, True)
            ws.append((q["weight"], q["weight_scale"]))
        out[name] = (n, k, ws)
    return out


MODE_ARGS = {"code": {"PDL": 1}, "late": {"PDL": 2, "launch_pdl": True}, "end": {"PDL": 3, "launch_pdl": True}}


@contextlib.contextmanager
def _launched(mode):
    """The paired GEMV's launches inside as `mode` asks: plain, pdl (code and launch), code (the PDL code, plain
    launch), late (under PDL, the next kernel let launch after the loop, not at the start: PDL 2, this folder's
    natural-pairs.patch), end (under PDL, no trigger: the next kernel launches as this one's programs end, PDL 3)."""
    real = int4_pairs.launch_args
    if mode in MODE_ARGS:
        int4_pairs.launch_args = lambda pdl: MODE_ARGS[mode]
    try:
        yield mode != "plain"
    finally:
        int4_pairs.launch_args = real


def _call(x, w, s, n, k, mode, config=None):
    with _launched(mode) as pdl:
        return w4gemv_pairs(x, w, s, None, None, False, config, pdl, (n, k, 128))


def _chain(x, n, k, ws, mode, config=None):
    """One matrix's 32 layers back to back (one graph)."""
    return [_call(x, w, s, n, k, mode, config) for w, s in ws]


def times(mats):
    xs = {name: torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for name, (n, k, _) in mats.items()}
    modes = ("plain", "pdl", "code", "late", "end")
    for name, (n, k, ws) in mats.items():
        row = {}
        for m in modes:
            try:
                row[m] = graph_time_ms(lambda m=m, x=xs[name], n=n, k=k, ws=ws: _chain(x, n, k, ws, m), reps=20)
            except Exception as e:  # noqa: BLE001 (a mode that fails to compile leaves the others' figures)
                print(f"times {name} {m}: {type(e).__name__}: {str(e)[:300]}", flush=True)
        print(f"times {name} {n}x{k} x32: " + ", ".join(f"{m} {v:.3f} ms" for m, v in row.items()), flush=True)

    def model(m):
        for i in range(len(mats["qkv"][2])):
            for name, (n, k, ws) in mats.items():
                _call(xs[name], *ws[i], n, k, m)
    row = {m: graph_time_ms(lambda m=m: model(m), reps=20) for m in modes}
    print("times all four, layer by layer x32: " + ", ".join(f"{m} {v:.3f} ms" for m, v in row.items()), flush=True)


def natural(mats):
    rule = int4_pairs.NATURAL_MAX_K
    totals = {}
    for name, (n, k, ws) in mats.items():
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        row, outs = {}, {}
        for label, mk in (("spread", 0), ("natural", 1 << 30), ("spread", 0)):
            int4_pairs.NATURAL_MAX_K = mk
            outs[label] = _call(x, *ws[0], n, k, "plain").float()
            ms = graph_time_ms(lambda n=n, k=k, ws=ws, x=x: _chain(x, n, k, ws, "plain"), reps=30)
            row[label] = min(row.get(label, ms), ms)
            totals[label] = totals.get(label, 0.0) + ms / (2 if label == "spread" else 1)
        int4_pairs.NATURAL_MAX_K = rule
        d = ((outs["natural"] - outs["spread"]).abs().max() / outs["spread"].abs().max()).item()
        print(f"natural {name} {n}x{k} x32: spread {row['spread']:.3f} ms (best of 2), natural {row['natural']:.3f}"
              f" ms, max diff {d:.2e} of the max output", flush=True)
    print("natural totals: " + ", ".join(f"{k} {v:.3f} ms" for k, v in totals.items()), flush=True)


def shapes(mats):
    """Natural pairs at launch shapes other than pairs_config's (swept with the spread pairs in s31): a thread's
    words and rows change the instructions a word, so the best shape may have moved."""
    for name, (n, k, ws) in mats.items():
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        row = {}
        for cfg in (None, (16, 1024, 4, 3), (32, 512, 4, 3), (16, 512, 8, 3), (8, 1024, 4, 3)):
            run = lambda n=n, k=k, ws=ws, x=x, cfg=cfg: _chain(x, n, k, ws, "plain", cfg)  # noqa: E731
            row[cfg or "default"] = graph_time_ms(run, reps=20)
        print(f"shapes {name} {n}x{k} x32 (natural up to K {int4_pairs.NATURAL_MAX_K}): " +
              ", ".join(f"{c} {v:.3f} ms" for c, v in row.items()), flush=True)


def placement(mats, grid: int, warps: int):
    n, k, ws = mats["gate_up"]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    sm = torch.zeros(grid, dtype=torch.int32, device="cuda")
    t = torch.zeros(2 * grid, dtype=torch.int64, device="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for mode in ("plain", "pdl", "late", "end"):
        def fn(mode=mode):
            with _launched(mode) as pdl:
                w4gemv_pairs(x, *ws[0], None, None, False, None, pdl, (n, k, 128), gate_out=True)
            _where[(grid,)](sm, t, num_warps=warps, **launch_args(mode != "plain"))
        graph_time_ms(fn, reps=3)  # runs it in a graph, as the decode graphs do; the buffers keep the last replay
        per_sm = torch.bincount(sm.long(), minlength=sms)
        tt = t.view(grid, 2).double()
        start, waited = tt[:, 0] - tt[:, 0].min(), tt[:, 1] - tt[:, 0].min()
        print(f"placement grid {grid} warps {warps} {mode}: SMs used {(per_sm > 0).sum().item()}, programs per SM "
              f"max {per_sm.max().item()} min {per_sm.min().item()}, histogram {torch.bincount(per_sm).tolist()}; "
              f"start spread {start.max().item() / 1e3:.2f} us, wait ends at {waited.min().item() / 1e3:.2f}-"
              f"{waited.max().item() / 1e3:.2f} us", flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    cfg = SHAPES["llama3.1-8b"]
    mats = _layer_weights(cfg)
    natural(mats)
    times(mats)
    for grid, warps in ((256, 4), (384, 4), (132, 4)):
        placement(mats, grid, warps)
    shapes(mats)
