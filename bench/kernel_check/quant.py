"""Sections on quantized linears: int4 (correctness, timing, launch-shape sweep) and int8 groups."""

from __future__ import annotations

import itertools

import torch

from bench.common import graph_time_ms
from bench.kernel_check.report import section

INT4_ROWS = (1, 8, 64, 256)  # batch-1 decode, the batch-8 target, the tensor-core path, 256 streams


@section("int4")
def s_int4(args):
    """W4A16 (int4 g128, symmetric and asymmetric) over all linears of the Llama-3.1-8B shape in one CUDA graph, at
    M = 1, 8, 64, 256: our kernels against bf16 cuBLAS over the same shapes and the chunked torch.sum of the int4
    bytes (weights + scales); the lm_head is left out (it stays 16-bit)."""
    from bench.common import SHAPES, chunked_sum_ms, flat_buffers, linear_shapes
    from llmserve.kernels.int4 import w4mm
    from llmserve.model.int4 import quantize_int4

    cfg = SHAPES["llama3.1-8b"]
    res = args.report.results.setdefault("int4", {})
    for sym in (True, False):
        layers = []
        for _ in range(cfg["num_hidden_layers"]):
            for name, (n, k) in linear_shapes(cfg).items():
                q = quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, sym)
                layers.append((q, name == "down", k))
        tensors = [t for q, _, _ in layers for t in q.values()]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        floor = chunked_sum_ms(flat_buffers(tensors))
        tag = "sym" if sym else "asym"
        res[f"{tag}/floor_ms"] = floor
        for M in INT4_ROWS:
            xs = {k: torch.randn(M, 2 * k if g else k, device="cuda", dtype=torch.bfloat16) for _, g, k in layers}
            ms = graph_time_ms(lambda xs=xs, ls=layers: [w4mm(xs[k], q["weight"], q["weight_scale"],
                                                               q.get("weight_min"), gated=g) for q, g, k in ls])
            res[f"{tag}/M{M}_ms"] = ms
            args.report.say(f"int4 {tag} g128 M={M}: {ms:.3f} ms over all linears, floor {floor:.3f} ms "
                           f"({nbytes / 1e9:.2f} GB, {ms / floor:.2f}x)")
            print(args.report.summary[-1], flush=True)
        del layers, tensors
        torch.cuda.empty_cache()
    ws = [(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, k) for _ in range(cfg["num_hidden_layers"])
          for n, k in linear_shapes(cfg).values()]
    for M in INT4_ROWS:
        xs = {k: torch.randn(M, k, device="cuda", dtype=torch.bfloat16) for _, k in ws}
        res[f"bf16/M{M}_ms"] = graph_time_ms(lambda xs=xs: [torch.nn.functional.linear(xs[k], w) for w, k in ws])
        args.report.say(f"bf16 cuBLAS M={M}: {res[f'bf16/M{M}_ms']:.3f} ms over all linears")
        print(args.report.summary[-1], flush=True)


@section("int8_group")
def s_int8_group(args):
    """W8A16 in groups of 32 (GGUF Q8_0 repacked: int8 codes, float16 scales) over all linears of the Llama-3.1-8B
    shape in one CUDA graph, at M = 1, 8, 64, against the chunked torch.sum of the same bytes."""
    from bench.common import SHAPES, chunked_sum_ms, flat_buffers, linear_shapes
    from llmserve.kernels.int8_group import w8gmm

    cfg = SHAPES["llama3.1-8b"]
    res = args.report.results.setdefault("int8_group", {})
    layers = []
    for _ in range(cfg["num_hidden_layers"]):
        for name, (n, k) in linear_shapes(cfg).items():
            q = torch.randint(-128, 128, (n, k), device="cuda", dtype=torch.int8)
            layers.append((q, torch.rand(n, k // 32, device="cuda", dtype=torch.float16) * 0.01, name == "down", k))
    floor = res["floor_ms"] = chunked_sum_ms(flat_buffers([t for q, s, _, _ in layers for t in (q, s)]))
    for M in (1, 8, 64):
        xs = {k: torch.randn(M, 2 * k if g else k, device="cuda", dtype=torch.bfloat16) for _, _, g, k in layers}
        ms = res[f"M{M}_ms"] = graph_time_ms(lambda xs=xs: [w8gmm(xs[k], q, s, gated=g) for q, s, g, k in layers])
        args.report.say(f"int8_group g32 M={M}: {ms:.3f} ms over all linears, floor {floor:.3f} ms ({ms / floor:.2f}x)")
        print(args.report.summary[-1], flush=True)


@section("int4_sweep")
def s_int4_sweep(args):
    """Launch configs of the int4 kernels (g128, symmetric) per Llama-3.1-8B linear shape, 32 layers' worth of weights
    (past the L2), one CUDA graph each: GEMV (BLOCK_N, BLOCK_K, warps, stages) at M = 1, w4mm (BLOCK_M, BLOCK_N,
    BLOCK_K, warps, stages, split-K) at M = 8 and 64, each against the default config and the shape's int4 read
    floor."""

    from bench.common import SHAPES, chunked_sum_ms, flat_buffers, linear_shapes
    from llmserve.kernels.int4 import gemv_config, mm_config, w4gemv, w4mm
    from llmserve.model.int4 import quantize_int4

    cfg = SHAPES["llama3.1-8b"]
    res = args.report.results.setdefault("int4_sweep", {})
    gemv = [(bn, bk, w, s) for bn, bk, w, s in itertools.product((4, 8, 16, 32), (256, 512, 1024), (2, 4, 8), (3,))
            if bn * bk <= 16384 and not (bn >= 16 and w == 2)]
    tiles = list(itertools.product((32, 64, 128), (128, 256), (4, 8), (1, 2, 4, 8)))
    mm = {M: [(16 if M <= 16 else 64, bn, bk, w, 3, sk) for bn, bk, w, sk in tiles] for M in (8, 64)}
    for name, (n, k) in linear_shapes(cfg).items():
        gated = name == "down"
        layers = [quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, 128, True)
                  for _ in range(cfg["num_hidden_layers"])]
        floor = chunked_sum_ms(flat_buffers([t for q in layers for t in q.values()]))
        for M, configs in ((1, gemv), (8, mm[8]), (64, mm[64])):
            x = torch.randn(M, 2 * k if gated else k, device="cuda", dtype=torch.bfloat16)
            default = gemv_config(n, k, 128) if M == 1 else mm_config(M, n, k, 128)
            times = {}
            for c in [default] + [c for c in configs if c != default]:
                try:
                    times[str(c)] = graph_time_ms(lambda c=c, x=x, g=gated, ls=layers, f=w4gemv if M == 1 else w4mm: [
                        f(x, q["weight"], q["weight_scale"], gated=g, config=c) for q in ls], reps=10)
                except Exception as exc:  # noqa: BLE001
                    times[str(c)] = f"fail {type(exc).__name__}: {str(exc)[:120]}"
            numeric = {c: t for c, t in times.items() if isinstance(t, float)}
            best = min(numeric, key=numeric.get)
            res[f"{name}/M{M}"] = {"floor_ms": floor, "default": str(default), "default_ms": times[str(default)],
                                   "best": best, "best_ms": numeric[best], "times_ms": times}
            args.report.say(f"int4 {name} M={M}: default {default} {times[str(default)]} ms, best {best} "
                           f"{numeric[best]:.3f} ms, floor {floor:.3f} ms")
            print(args.report.summary[-1], flush=True)
            args.report.save()
        del layers
        torch.cuda.empty_cache()

