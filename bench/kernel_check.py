"""One device call: environment, kernel correctness, GEMV configuration sweep, floors, engine smoke timings.

    python -m bench.kernel_check --out $OUT [--sections env,tests,engine_small,gemv,floor,attn,engine7b]

Every section catches its own failure, writes what it measured to OUT/kernel_check.json as it goes, and
prints a short table at the end (the device tool returns only the tail of the output).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from bench.common import LLAMA2_7B, environment, graph_time_ms, replay_median_ms, write_random_checkpoint

RESULTS: dict = {}
SUMMARY: list[str] = []
SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008),
          "lm_head": (32000, 4096)}
CONFIGS_16 = [(16, 16, 256, 4, 4), (16, 32, 256, 4, 4), (16, 32, 512, 4, 3), (16, 64, 256, 4, 4),
              (16, 64, 128, 4, 5), (16, 32, 128, 4, 6), (16, 64, 512, 8, 3), (16, 16, 512, 4, 3),
              (16, 16, 256, 2, 6), (16, 32, 256, 4, 6), (16, 128, 128, 4, 4), (16, 128, 256, 8, 3)]
CONFIGS_BIG = {32: [(32, 64, 128, 4, 4), (32, 64, 256, 4, 3), (32, 32, 256, 4, 4)],
               64: [(64, 64, 128, 4, 4), (64, 128, 128, 8, 3), (64, 32, 256, 4, 4)]}


def save(out: Path) -> None:
    (out / "kernel_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def section(name):
    def wrap(fn):
        def run(args):
            t0 = time.time()
            print(f"== {name}", flush=True)
            try:
                fn(args)
                RESULTS.setdefault("sections", {})[name] = f"ok {time.time() - t0:.0f}s"
            except Exception as exc:  # noqa: BLE001 - keep going: one device call, many questions
                traceback.print_exc()
                RESULTS.setdefault("sections", {})[name] = f"FAILED {type(exc).__name__}: {exc}"[:400]
            torch.cuda.empty_cache()
            save(args.out)
        return run
    return wrap


@section("env")
def s_env(args):
    RESULTS["env"] = environment()
    print(RESULTS["env"], flush=True)


@section("tests")
def s_tests(args):
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels.py"],
                       capture_output=True, text=True, timeout=300)
    tail = (r.stdout + r.stderr)[-3000:]
    print(tail, flush=True)
    RESULTS["tests"] = {"rc": r.returncode, "tail": tail[-600:]}
    SUMMARY.append(f"test_kernels.py rc={r.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}")


def _small_engine_tokens(ckpt: Path, mode: str, graphs: bool, sampling: bool = False):
    from llmserve.config import ServingConfig
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams
    from llmserve.engine.torch_engine import TorchEngine

    os.environ["LLMSERVE_TRITON_KERNELS"] = mode
    eng = TorchEngine(ServingConfig.of(dtype="bfloat16", cuda_graphs=graphs, max_batch_size=16, max_num_tokens=64,
                                    kv_cache_memory_bytes=256 << 20), ckpt)
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        ids = torch.randint(3, 1000, (3 + 11 * i,), generator=g).tolist()
        p = SamplingParams(temperature=1.0, top_p=0.9, seed=i, max_tokens=20, ignore_eos=True) if sampling and i % 2 \
            else SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
        eng.add_request(EngineRequest(str(i), ids, p))
    out: dict[str, list[int]] = {}
    while eng.has_work():
        for o in eng.step():
            out.setdefault(o.request_id, []).extend(o.new_token_ids)
    os.environ["LLMSERVE_TRITON_KERNELS"] = "1"
    return out


def _agree(a, b):
    same = sum(x == y for k in a for x, y in zip(a[k], b[k]))
    total = sum(len(v) for v in a.values())
    prefix = sum(next((i for i, (x, y) in enumerate(zip(a[k], b[k])) if x != y), len(a[k])) for k in a)
    return same / max(total, 1), prefix / max(total, 1)


@section("engine_small")
def s_engine_small(args):
    """A small random GQA model (SmolLM2's shape, vocab 1000): graphs vs eager Triton vs the torch path."""
    res = {}
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d)
        cfg = {"vocab_size": 1000, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 6,
               "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 512,
               "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "llmserve_random_init": {"seed": 1, "std": 0.15}}
        for quant in (None, "int8_wo", "fp8"):
            c = dict(cfg)
            if quant:
                c["quantization"] = {"mode": quant}
            (ckpt / "config.json").write_text(json.dumps(c))
            ref = _small_engine_tokens(ckpt, "0", False)
            eager = _small_engine_tokens(ckpt, "1", False)
            graph = _small_engine_tokens(ckpt, "1", True)
            sampled = _small_engine_tokens(ckpt, "1", True, sampling=True)
            sampled2 = _small_engine_tokens(ckpt, "1", True, sampling=True)
            seeded_same = all(sampled[k] == sampled2[k] for k in sampled if int(k) % 2)
            r = {"eager_vs_torch": _agree(eager, ref), "graph_vs_eager": _agree(graph, eager),
                 "graph_vs_torch": _agree(graph, ref), "seeded_sampling_repeats": seeded_same,
                 "lengths_ok": all(len(v) == 20 for v in graph.values())}
            res[quant or "bf16"] = r
            SUMMARY.append(f"small engine {quant or 'bf16'}: token agreement (all, prefix) eager/torch "
                           f"{r['eager_vs_torch'][0]:.2f},{r['eager_vs_torch'][1]:.2f} graph/eager "
                           f"{r['graph_vs_eager'][0]:.2f},{r['graph_vs_eager'][1]:.2f} seeded={seeded_same} "
                           f"len={r['lengths_ok']}")
            print(SUMMARY[-1], flush=True)
    RESULTS["engine_small"] = res


def _mm_shapes() -> dict[str, tuple[int, int]]:
    """Each linear's (N, K): Llama-2-7B's, or MM_SHAPE's (a bench.common shape, e.g. llama3.1-8b)."""
    from bench.common import linear_shapes, shape_config

    name = os.environ.get("MM_SHAPE")
    if not name:
        return SHAPES
    cfg = shape_config(name)
    return {**linear_shapes(cfg), "lm_head": (cfg["vocab_size"], cfg["hidden_size"])}


def _weights(kind: str):
    """32 layers of each matrix (+ one lm_head) of `_mm_shapes`, as bf16, int8 or fp8 with per-row scales."""
    from llmserve.model.linear import quantize_weight

    g = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for name, (N, K) in _mm_shapes().items():
        layers = []
        for _ in range(1 if name == "lm_head" else 32):
            w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
            if kind == "bf16" or name == "lm_head":
                layers.append((w, None))
            else:
                q, s = quantize_weight(w, "int8_wo" if kind == "int8" else "fp8")
                layers.append((q, s))
                del w
        out[name] = layers
    return out


def _nbytes(layers):
    return sum(w.numel() * w.element_size() for w, _ in layers)


@section("gemv")
def s_gemv(args):
    from llmserve.kernels.linear import quant_fp8_per_token, wmm

    res: dict = {}
    best_total: dict = {}
    for kind in ("bf16", "int8", "fp8"):
        W = _weights(kind)
        for M in (1, 16, 32, 64):
            configs = CONFIGS_16 if M <= 16 else CONFIGS_BIG[M]
            tot_best, tot_lib = 0.0, 0.0
            for name, layers in W.items():
                N, K = layers[0][0].shape
                gated = name == "down"
                x = torch.randn(M, 2 * K if gated else K, device="cuda", dtype=torch.bfloat16)
                xg = torch.nn.functional.silu(x[:, :K]) * x[:, K:] if gated else x
                nbytes = _nbytes(layers)
                times = {}
                for cfg in configs:
                    if name == "lm_head" and kind != "bf16":
                        continue
                    try:
                        times[str(cfg)] = graph_time_ms(lambda cfg=cfg, x=x, layers=layers, gated=gated: [
                            wmm(x, w, s, gated=gated, config=cfg) for w, s in layers], reps=10)
                    except Exception as exc:  # noqa: BLE001
                        times[str(cfg)] = f"fail {type(exc).__name__}: {str(exc)[:120]}"
                if kind == "bf16" or name == "lm_head":
                    lib = graph_time_ms(lambda x=xg, layers=layers: [torch.nn.functional.linear(x, w)
                                                                     for w, _ in layers], reps=10)
                    lib_name = "cublas"
                elif kind == "fp8":
                    def fp8(x=xg, layers=layers):
                        xq, xs = quant_fp8_per_token(x)
                        return [torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=s[None, :], out_dtype=torch.bfloat16)
                                for w, s in layers]
                    lib = graph_time_ms(fp8, reps=10)
                    lib_name = "scaled_mm"
                else:
                    lib, lib_name = None, None
                numeric = {k: v for k, v in times.items() if isinstance(v, float)}
                best = min(numeric, key=numeric.get) if numeric else None
                bt = numeric[best] if best else (lib or 0.0)
                tot_best += min(bt, lib) if lib is not None and name == "lm_head" else bt
                tot_lib += lib if lib is not None else bt
                res[f"{kind}/M{M}/{name}"] = {"times_ms": times, "best": best, "best_ms": bt,
                                              "best_TBps": nbytes / bt / 1e9 if bt else None, lib_name or "lib": lib,
                                              "bytes": nbytes}
                print(f"{kind} M={M} {name}: best {best} {bt:.3f} ms ({nbytes / bt / 1e9:.2f} TB/s); "
                      f"{lib_name} {lib}", flush=True)
            best_total[f"{kind}/M{M}"] = {"triton_best_ms": tot_best, "library_ms": tot_lib}
            SUMMARY.append(f"GEMV all layers {kind} M={M}: triton best {tot_best:.3f} ms, library {tot_lib:.3f} ms")
            save(args.out)
        del W
        torch.cuda.empty_cache()
    RESULTS["gemv"] = res
    RESULTS["gemv_totals"] = best_total


@section("floor")
def s_floor(args):
    """Time to read every weight once: torch.sum over each tensor (viewed as bf16 and as float32: bytes are
    bytes) in one CUDA graph; for 16-bit weights also cuBLAS F.linear at M = 1."""
    res = {}
    for kind in ("bf16", "int8", "fp8"):
        W = _weights(kind)
        tensors = [w for layers in W.values() for w, _ in layers]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        r = {"bytes": nbytes}
        for view in (torch.bfloat16, torch.float32):
            views = [t.view(view) for t in tensors]
            t_sum = graph_time_ms(lambda views=views: [v.sum() for v in views], reps=10)
            r[f"sum_{str(view)[6:]}_ms"] = t_sum
        r["sum_ms"] = min(r["sum_bfloat16_ms"], r["sum_float32_ms"])
        r["sum_TBps"] = nbytes / r["sum_ms"] / 1e9
        if kind == "bf16":
            xs = {K: torch.randn(1, K, device="cuda", dtype=torch.bfloat16) for K in (4096, 11008)}
            r["cublas_m1_ms"] = graph_time_ms(lambda xs=xs, tensors=tensors: [
                torch.nn.functional.linear(xs[w.shape[1]], w) for w in tensors], reps=10)
        res[kind] = r
        SUMMARY.append(f"floor {kind}: {nbytes / 1e9:.2f} GB, torch.sum {r['sum_ms']:.3f} ms "
                       f"({r['sum_TBps']:.2f} TB/s) [bf16-view {r['sum_bfloat16_ms']:.3f}, f32-view "
                       f"{r['sum_float32_ms']:.3f}]" + (f", cuBLAS M=1 {r['cublas_m1_ms']:.3f} ms"
                                                      if "cublas_m1_ms" in r else ""))
        del W, tensors, views
        torch.cuda.empty_cache()
    RESULTS["floor"] = res


def _varlen_case(B: int, L: int, config: tuple | None = None, decode_rows: int = 0, decode_ctx: int = 0,
                 kv_fp8: bool = False, fp8_convert: int = 1) -> dict:
    """B prompts of L tokens (and decode_rows sequences of one new token at decode_ctx, first in the step, as the
    engine lays out a mixed step): our varlen kernel per layer with `config`, and SDPA dense over the prompts."""
    from llmserve.kernels.attention import varlen_attention
    from llmserve.kernels.shapes import varlen_query_blocks

    H, KVH, D, page = 32, 8, 128, 16
    qlens, ctxs = [1] * decode_rows + [L] * B, [decode_ctx] * decode_rows + [L] * B
    width = -(-max(ctxs) // page)
    cache = torch.randn(2, len(ctxs) * width + 1, page, KVH, D, device="cuda", dtype=torch.bfloat16)
    if kv_fp8:
        cache = cache.to(torch.float8_e4m3fn)
    bt = torch.arange(len(ctxs) * width, device="cuda", dtype=torch.int32).view(len(ctxs), width)
    ctx = torch.tensor(ctxs, dtype=torch.int32, device="cuda")
    qstart = torch.tensor([0] + list(itertools.accumulate(qlens)), dtype=torch.int32, device="cuda")
    seqs, starts = varlen_query_blocks(qlens, H // KVH, D, config[0] if config else 0)
    qb = (torch.tensor(seqs, dtype=torch.int32, device="cuda"), torch.tensor(starts, dtype=torch.int32, device="cuda"))
    q = torch.randn(sum(qlens), H, D, device="cuda", dtype=torch.bfloat16)
    ours = graph_time_ms(lambda: [varlen_attention(q, cache, bt, ctx, qstart, *qb, D ** -0.5, config=config,
                                                   fp8_convert=fp8_convert) for _ in range(32)], reps=10) * 1000 / 32
    qd = q[decode_rows:].view(B, L, H, D).transpose(1, 2)
    kd = torch.randn(B, KVH, L, D, device="cuda", dtype=torch.bfloat16)
    sdpa = graph_time_ms(lambda: [torch.nn.functional.scaled_dot_product_attention(
        qd, kd, kd, is_causal=True, enable_gqa=True) for _ in range(32)], reps=10) * 1000 / 32
    flops = 4 * B * H * D * L * L / 2
    return {"ours_us": ours, "sdpa_us": sdpa, "ours_TFLOPs": flops / ours / 1e6, "sdpa_TFLOPs": flops / sdpa / 1e6}


@section("varlen")
def s_varlen(args):
    """Prefill attention over the paged cache for B prompts of L tokens (Llama-3.1-8B heads: 32 query, 8 KV, dim
    128): our varlen kernel per layer, with the engine's query-block tiling, against torch's SDPA over the same
    tokens laid out densely (causal, GQA)."""
    res = RESULTS.setdefault("varlen", {})
    for B, L in ((8, 128), (32, 128), (2, 2048), (4, 1000)):
        r = res[f"B{B}_L{L}"] = _varlen_case(B, L)
        SUMMARY.append(f"varlen B={B} L={L}: ours {r['ours_us']:.1f} us/layer ({r['ours_TFLOPs']:.0f} TFLOP/s), "
                       f"SDPA dense {r['sdpa_us']:.1f} us ({r['sdpa_TFLOPs']:.0f})")
        print(SUMMARY[-1], flush=True)


# stages 1: the K/V loads not software-pipelined (how the kernel ran before its loops asked for stages)
VARLEN_CONFIGS = [(64, 64, 4, 1), (64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 2), (64, 128, 8, 3), (128, 64, 8, 1),
                  (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 32, 4, 3)]


@section("varlen_sweep")
def s_varlen_sweep(args):
    """The varlen kernel's launch configs (BLOCK_M, BLOCK_N, warps, stages) over prompts of 128-2,048 tokens and a
    mixed step's shape (256 decode rows at 2,048 tokens of context beside 3 prompts of 2,048): us per layer."""
    res = RESULTS.setdefault("varlen_sweep", {})
    cases = [(32, 128, 0, 0), (2, 2048, 0, 0), (4, 1000, 0, 0), (3, 2048, 256, 0), (2, 2048, 0, 1),
             (3, 2048, 256, 1), (2, 2048, 0, 2), (3, 2048, 256, 2)]  # the last four: an fp8 cache, converted as mode
    configs = [tuple(int(x) for x in c.split("/")) for c in os.environ["VARLEN_CONFIGS"].split(",")] \
        if os.environ.get("VARLEN_CONFIGS") else VARLEN_CONFIGS
    for cfg in configs:
        for B, L, rows, mode in cases:
            key = f"{cfg}:B{B}_L{L}_dec{rows}" + (f"_kv8m{mode}" if mode else "")
            try:
                r = res[key] = _varlen_case(B, L, cfg, rows, 2048, mode > 0, mode or 1)
            except Exception as exc:  # a config past the SM's shared memory
                res[key] = f"failed: {type(exc).__name__}"
                continue
            SUMMARY.append(f"varlen {key}: {r['ours_us']:.1f} us ({r['ours_TFLOPs']:.0f} TFLOP/s of the prompts), "
                           f"SDPA {r['sdpa_us']:.1f}")
            print(SUMMARY[-1], flush=True)
        save(args.out)


@section("int4")
def s_int4(args):
    """W4A16 (int4 g128, symmetric and asymmetric) over all linears of the Llama-3.1-8B shape in one CUDA graph, at
    M = 1, 8, 64: our kernels against bf16 cuBLAS over the same shapes and the chunked torch.sum of the int4 bytes
    (weights + scales); the lm_head is left out (it stays 16-bit)."""
    from bench.common import SHAPES, chunked_sum_ms, flat_buffers, linear_shapes
    from llmserve.kernels.int4 import w4mm
    from llmserve.model.int4 import quantize_int4

    cfg = SHAPES["llama3.1-8b"]
    res = RESULTS.setdefault("int4", {})
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
        for M in (1, 8, 64):
            xs = {k: torch.randn(M, 2 * k if g else k, device="cuda", dtype=torch.bfloat16) for _, g, k in layers}
            ms = graph_time_ms(lambda xs=xs, ls=layers: [w4mm(xs[k], q["weight"], q["weight_scale"],
                                                               q.get("weight_min"), gated=g) for q, g, k in ls])
            res[f"{tag}/M{M}_ms"] = ms
            SUMMARY.append(f"int4 {tag} g128 M={M}: {ms:.3f} ms over all linears, floor {floor:.3f} ms "
                           f"({nbytes / 1e9:.2f} GB, {ms / floor:.2f}x)")
            print(SUMMARY[-1], flush=True)
        del layers, tensors
        torch.cuda.empty_cache()
    ws = [(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, k) for _ in range(cfg["num_hidden_layers"])
          for n, k in linear_shapes(cfg).values()]
    for M in (1, 8, 64):
        xs = {k: torch.randn(M, k, device="cuda", dtype=torch.bfloat16) for _, k in ws}
        res[f"bf16/M{M}_ms"] = graph_time_ms(lambda xs=xs: [torch.nn.functional.linear(xs[k], w) for w, k in ws])
        SUMMARY.append(f"bf16 cuBLAS M={M}: {res[f'bf16/M{M}_ms']:.3f} ms over all linears")
        print(SUMMARY[-1], flush=True)


@section("int8_group")
def s_int8_group(args):
    """W8A16 in groups of 32 (GGUF Q8_0 repacked: int8 codes, float16 scales) over all linears of the Llama-3.1-8B
    shape in one CUDA graph, at M = 1, 8, 64, against the chunked torch.sum of the same bytes."""
    from bench.common import SHAPES, chunked_sum_ms, flat_buffers, linear_shapes
    from llmserve.kernels.int8_group import w8gmm

    cfg = SHAPES["llama3.1-8b"]
    res = RESULTS.setdefault("int8_group", {})
    layers = []
    for _ in range(cfg["num_hidden_layers"]):
        for name, (n, k) in linear_shapes(cfg).items():
            q = torch.randint(-128, 128, (n, k), device="cuda", dtype=torch.int8)
            layers.append((q, torch.rand(n, k // 32, device="cuda", dtype=torch.float16) * 0.01, name == "down", k))
    floor = res["floor_ms"] = chunked_sum_ms(flat_buffers([t for q, s, _, _ in layers for t in (q, s)]))
    for M in (1, 8, 64):
        xs = {k: torch.randn(M, 2 * k if g else k, device="cuda", dtype=torch.bfloat16) for _, _, g, k in layers}
        ms = res[f"M{M}_ms"] = graph_time_ms(lambda xs=xs: [w8gmm(xs[k], q, s, gated=g) for q, s, g, k in layers])
        SUMMARY.append(f"int8_group g32 M={M}: {ms:.3f} ms over all linears, floor {floor:.3f} ms ({ms / floor:.2f}x)")
        print(SUMMARY[-1], flush=True)


@section("int4_sweep")
def s_int4_sweep(args):
    """Launch configs of the int4 kernels (g128, symmetric) per Llama-3.1-8B linear shape, 32 layers' worth of weights
    (past the L2), one CUDA graph each: GEMV (BLOCK_N, BLOCK_K, warps, stages) at M = 1, w4mm (BLOCK_M, BLOCK_N,
    BLOCK_K, warps, stages, split-K) at M = 8 and 64, each against the default config and the shape's int4 read
    floor."""
    import itertools

    from bench.common import SHAPES, chunked_sum_ms, flat_buffers, linear_shapes
    from llmserve.kernels.int4 import gemv_config, mm_config, w4gemv, w4mm
    from llmserve.model.int4 import quantize_int4

    cfg = SHAPES["llama3.1-8b"]
    res = RESULTS.setdefault("int4_sweep", {})
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
            SUMMARY.append(f"int4 {name} M={M}: default {default} {times[str(default)]} ms, best {best} "
                           f"{numeric[best]:.3f} ms, floor {floor:.3f} ms")
            print(SUMMARY[-1], flush=True)
            save(args.out)
        del layers
        torch.cuda.empty_cache()


def _ints(name: str, default: str) -> list[int]:
    return [int(x) for x in os.environ.get(name, default).split(",")]


@section("attn")
def s_attn(args):
    """Decode attention launch configs (partitions, BLOCK_N, warps, stages) at the graphs' launch shape (max
    context 4096), bf16 and fp8 KV: the best per case against `decode_config`. Llama-2-7B heads by default;
    ATTN_HEADS=32,8 (query, kv heads) and ATTN_CASES=256:2100:fp8,... (batch:context:kv) for other shapes;
    ATTN_BLOCKS, ATTN_WARPS, ATTN_STAGES (comma-separated) widen or narrow the sweep."""
    from llmserve.kernels.attention import decode_attention, decode_config

    res = {}
    H, KVH = (int(x) for x in os.environ.get("ATTN_HEADS", "32,32").split(","))
    D, page, top = 128, 16, 4096
    cases = [(int(b), int(c), kv) for b, c, kv in (x.split(":") for x in os.environ.get("ATTN_CASES", (
        "1:170:bf16,1:2048:bf16,8:170:bf16,8:1100:bf16,32:2048:bf16,64:170:bf16,256:170:bf16,8:170:fp8,"
        "64:256:fp8,256:192:fp8")).split(","))]
    for B, ctx, kv in cases:
        blocks_per = -(-ctx // page)
        nblocks = B * blocks_per + 1
        dtype = torch.float8_e4m3fn if kv == "fp8" else torch.bfloat16
        cache = torch.randn(2, nblocks, page, KVH, D, device="cuda", dtype=torch.bfloat16).to(dtype)
        bt = torch.randperm(nblocks - 1, device="cuda")[:B * blocks_per].view(B, blocks_per).to(torch.int32)
        bt = torch.cat([bt, torch.zeros(B, top // page - blocks_per, dtype=torch.int32, device="cuda")], 1)
        ctxs = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
        q = torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16)
        nbytes = 2 * B * ctx * KVH * D * cache.element_size()
        cur = decode_config(top, B, KVH, kv == "fp8")
        cands = {cur} | {(n, bn, 4, 2) for n in (1, 2, 4, 8, 16, 32) for bn in (32, 64) if B * KVH * n <= 8192}
        cands |= {(n, bn, w, st) for n in ({1, cur[0]}) for bn in _ints("ATTN_BLOCKS", "32,64,128")
                  for w in _ints("ATTN_WARPS", "4,8")
                  for st in _ints("ATTN_STAGES", "1,2,3,4")}  # stages 1: loads not software-pipelined
        ref = decode_attention(q, cache, bt, ctxs, D ** -0.5, top, config=cur).float()
        modes = [int(m) for m in os.environ.get("ATTN_FP8_MODES", "1,2").split(",")] if kv == "fp8" else [0]
        times, err = {}, {}
        for c, mode in itertools.product(sorted(cands), modes):
            name = "/".join(map(str, c)) + (f"/m{mode}" if mode else "")
            try:
                out = decode_attention(q, cache, bt, ctxs, D ** -0.5, top, config=c, fp8_convert=mode or 1)
                err[name] = (out.float() - ref).abs().max().item()
                times[name] = graph_time_ms(
                    lambda q=q, cache=cache, bt=bt, ctxs=ctxs, c=c, mode=mode: [
                        decode_attention(q, cache, bt, ctxs, D ** -0.5, top, config=c, fp8_convert=mode or 1)
                        for _ in range(32)], reps=10) * 1000 / 32
            except Exception as exc:  # noqa: BLE001 - e.g. a block shape over the shared-memory limit
                print("skip", c, str(exc)[:100])
        best = min(times, key=times.get)
        key = "/".join(map(str, cur)) + (f"/m{modes[0]}" if kv == "fp8" else "")
        res[f"B{B}_ctx{ctx}_{kv}"] = {"us_per_layer": times, "best": best, "default": key,
                                      "best_TBps": nbytes / times[best] / 1e6, "max_abs_diff": err}
        SUMMARY.append(f"decode attn {kv} KV H={H}/{KVH} B={B} ctx={ctx}: best {best} {times[best]:.1f} us "
                       f"({nbytes / times[best] / 1e6:.2f} TB/s); default {key} {times[key]:.1f} us/layer "
                       f"({nbytes / times[key] / 1e6:.2f} TB/s); max diff {max(err.values()):.2e}")
        print(SUMMARY[-1], flush=True)
        del cache
        RESULTS.setdefault("attn", {}).update(res)
        save(args.out)


@section("attn_kv")
def s_attn_kv(args):
    """Decode attention with a 16-bit and an fp8 (e4m3) KV cache, at the heuristic partition, Llama-2-7B heads."""
    from llmserve.kernels.attention import decode_attention

    res = {}
    H, D, page = 32, 128, 16
    for B, ctx in ((8, 256), (64, 256), (256, 192), (256, 256), (32, 2048)):
        blocks_per = -(-ctx // page)
        nblocks = B * blocks_per + 1
        bt = torch.randperm(nblocks - 1, device="cuda")[:B * blocks_per].view(B, blocks_per).to(torch.int32)
        bt = torch.cat([bt, torch.zeros(B, 256 - blocks_per, dtype=torch.int32, device="cuda")], 1)
        ctxs = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
        q = torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16)
        row = {}
        for name, dtype in (("bf16", torch.bfloat16), ("fp8", torch.float8_e4m3fn)):
            cache = torch.randn(2, nblocks, page, H, D, device="cuda", dtype=torch.bfloat16).to(dtype)
            us = graph_time_ms(lambda q=q, cache=cache, bt=bt, ctxs=ctxs: [
                decode_attention(q, cache, bt, ctxs, D ** -0.5, 4096) for _ in range(32)], reps=10) * 1000 / 32
            nbytes = 2 * B * ctx * H * D * cache.element_size()
            row[name] = {"us_per_layer": us, "TBps": nbytes / us / 1e6}
            del cache
        res[f"B{B}_ctx{ctx}"] = row
        SUMMARY.append(f"decode attn B={B} ctx={ctx}: " + ", ".join(
            f"{k} {v['us_per_layer']:.1f} us ({v['TBps']:.2f} TB/s)" for k, v in row.items()))
    RESULTS["attn_kv"] = res


@section("gemv1")
def s_gemv1(args):
    """Batch-1 GEMV (CUDA-core kernel): configurations x weight conversions, all 32 layers of each matrix."""
    from llmserve.kernels.linear import gemv

    cfgs = [(8, 512, 4, 1), (16, 256, 4, 1), (16, 512, 4, 1), (32, 256, 4, 1), (8, 1024, 4, 1), (16, 512, 8, 1),
            (32, 512, 8, 1), (16, 1024, 8, 1), (64, 256, 8, 1), (16, 512, 4, 3), (16, 1024, 8, 3)]
    res, totals = {}, {}
    for kind in ("bf16", "int8", "fp8"):
        W = _weights(kind)
        variants = {"bf16": [0], "int8": [0, 1], "fp8": [0, 2]}[kind]
        for wk in variants:
            total = 0.0
            picks = {}
            for name, layers in W.items():
                if name == "lm_head" and kind != "bf16":
                    continue
                N, K = layers[0][0].shape
                gated = name == "down"
                x = torch.randn(1, 2 * K if gated else K, device="cuda", dtype=torch.bfloat16)
                times = {}
                for cfg in cfgs:
                    try:
                        times[str(cfg)] = graph_time_ms(lambda cfg=cfg, x=x, layers=layers, gated=gated, wk=wk: [
                            gemv(x, w, s, gated=gated, config=cfg, w_kind=wk) for w, s in layers], reps=10)
                    except Exception as exc:  # noqa: BLE001
                        times[str(cfg)] = f"fail {type(exc).__name__}: {str(exc)[:100]}"
                numeric = {k: v for k, v in times.items() if isinstance(v, float)}
                best = min(numeric, key=numeric.get)
                nbytes = _nbytes(layers)
                picks[name] = (best, numeric[best], nbytes / numeric[best] / 1e9)
                total += numeric[best]
                res[f"{kind}/wk{wk}/{name}"] = {"times_ms": times, "best": best, "TBps": nbytes / numeric[best] / 1e9}
            totals[f"{kind}/wk{wk}"] = total
            SUMMARY.append(f"gemv M=1 {kind} wk={wk}: total {total:.3f} ms; " + "; ".join(
                f"{n} {b} {t:.3f}ms {bw:.2f}TB/s" for n, (b, t, bw) in picks.items()))
            print(SUMMARY[-1], flush=True)
            save(args.out)
        del W
        torch.cuda.empty_cache()
    RESULTS["gemv1"] = res
    RESULTS["gemv1_totals"] = totals


@section("mm16")
def s_mm16(args):
    """M = 8 and 16 through the tensor-core kernel (gate applied by a separate silu_mul) vs cuBLAS / _scaled_mm."""
    from llmserve.kernels.linear import quant_fp8_per_token, wmm

    res = {}
    for kind in os.environ.get("MM_KINDS", "bf16,int8,fp8").split(","):
        W = _weights(kind)
        for M in (int(m) for m in os.environ.get("MM_MS", "8,16").split(",")):
            tot_t, tot_lib = 0.0, 0.0
            for name, layers in W.items():
                if name == "lm_head" and kind != "bf16":
                    continue
                N, K = layers[0][0].shape
                gated = name == "down"
                x = torch.randn(M, 2 * K if gated else K, device="cuda", dtype=torch.bfloat16)
                xg = torch.nn.functional.silu(x[:, :K]) * x[:, K:] if gated else x
                times = {}
                for cfg in CONFIGS_16 if M <= 16 else CONFIGS_BIG[M]:
                    try:
                        times[str(cfg)] = graph_time_ms(lambda cfg=cfg, x=x, layers=layers, gated=gated: [
                            wmm(x, w, s, gated=gated, config=cfg) for w, s in layers], reps=10)
                    except Exception as exc:  # noqa: BLE001 - e.g. a block shape over the shared-memory limit
                        print("skip", cfg, str(exc)[:100])
                times["default"] = graph_time_ms(lambda x=x, layers=layers, gated=gated: [
                    wmm(x, w, s, gated=gated) for w, s in layers], reps=10)
                best = min(times, key=times.get)
                if kind == "bf16":
                    lib = graph_time_ms(lambda x=x, layers=layers, gated=gated, K=K: [torch.nn.functional.linear(
                        torch.nn.functional.silu(x[:, :K]) * x[:, K:] if gated else x, w) for w, _ in layers], reps=10)
                elif kind == "fp8":
                    lib = graph_time_ms(lambda xg=xg, layers=layers: [torch._scaled_mm(
                        *quant_fp8_per_token(xg)[:1], w.t(), scale_a=quant_fp8_per_token(xg)[1], scale_b=s[None, :],
                        out_dtype=torch.bfloat16) for w, s in layers], reps=10)
                else:
                    lib = None
                res[f"{kind}/M{M}/{name}"] = {"times_ms": times, "best": best, "lib_ms": lib}
                tot_t += times[best]
                tot_lib += lib if lib is not None else times[best]
            tot_def = sum(r["times_ms"]["default"] for k, r in res.items() if k.startswith(f"{kind}/M{M}/"))
            SUMMARY.append(f"mm M={M} {kind}: triton best total {tot_t:.3f} ms, default configs {tot_def:.3f} ms, "
                           f"library {tot_lib:.3f} ms; best per matrix: " + ", ".join(
                               f"{k.split('/')[-1]} {r['best']}" for k, r in res.items()
                               if k.startswith(f"{kind}/M{M}/")))
            print(SUMMARY[-1], flush=True)
        del W
        torch.cuda.empty_cache()
    RESULTS["mm16"] = res


def _prefilling(eng) -> bool:
    """Whether a sequence of the engine still has prompt tokens to compute (the eager ramp of a burst)."""
    return any(s.num_computed_tokens < s.num_prompt_tokens for s in eng.seqs.values())


def _kernel_table(prof) -> dict[str, float]:
    """Device microseconds per kernel name over a torch.profiler run (kernels inside graph replays included)."""
    out: dict[str, float] = {}
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        if us is None:
            us = getattr(e, "self_cuda_time_total", 0.0)
        if us and e.key and not e.key.startswith(("cudaGraph", "cuda", "aten::", "ProfilerStep")):
            out[e.key] = out.get(e.key, 0.0) + us
    return out


def _profiled(fn, reps: int) -> tuple[dict[str, float], float]:
    """Per-kernel device us per call of fn over `reps` calls, and the wall ms per call."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) * 1e3 / reps
    return {k: v / reps for k, v in sorted(_kernel_table(prof).items(), key=lambda kv: -kv[1])}, wall


def _record_profile(res: dict, key: str, table: dict[str, float], ms: float) -> None:
    total = sum(table.values())
    res[key] = {"ms": ms, "kernel_us_total": total, "kernels_us": table}
    top = "; ".join(f"{k[:40]} {v:.0f}" for k, v in list(table.items())[:8])
    SUMMARY.append(f"profile {key}: {ms:.3f} ms, kernels {total / 1000:.3f} ms: {top}")
    print(SUMMARY[-1], flush=True)


def _profile_mixed(eng, res: dict, key: str, reps: int = 2) -> None:
    """Steps as the engine runs them (host work included: wall ms a step, no profiler), then as many under the
    profiler for the kernels: the gap between the two is the GPU's idle time in a step."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        eng.step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) * 1e3 / reps
    rows = sum(s.num_computed_tokens >= s.num_prompt_tokens for s in eng.seqs.values())
    table, _ = _profiled(eng.step, reps)
    _record_profile(res, f"{key}({rows}_decoding)", table, wall)


def _profile_batch(eng, res: dict, mode: str, B: int, prompt: int, vocab: int) -> None:
    """The first prefill step of a burst of B prompts, then the decode step ~40 tokens later: its graph replay
    when one takes B rows, else 5 eager steps (host time included in ms)."""
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams

    g = torch.Generator().manual_seed(0)
    for i in range(B):
        ids = torch.randint(3, vocab - 3, (prompt,), generator=g).tolist()
        eng.add_request(EngineRequest(f"{B}-{i}", ids, SamplingParams(temperature=0.0, max_tokens=200,
                                                                      ignore_eos=True)))
    _record_profile(res, f"{mode}:{B}:first_prefill_step", *_profiled(eng.step, 1))
    mid = B * prompt // (2 * eng.cfg.batching.max_num_tokens)
    if mid >= 4:  # a burst long enough to have steps of decode rows plus a prefill chunk: profile two of them
        for _ in range(mid - 4):
            eng.step()
        _profile_mixed(eng, res, f"{mode}:{B}:mixed_step")
    while _prefilling(eng):
        eng.step()
    for _ in range(40):  # ~40 tokens past the prompt
        eng.step()
    if B in eng.runner.decode_graph_sizes:
        graph = eng.runner.graph_for(B)
        table, _ = _profiled(graph.replay, 10)
        _record_profile(res, f"{mode}:{B}:decode_graph", table, replay_median_ms(graph, 20))
    else:
        _record_profile(res, f"{mode}:{B}:decode_eager", *_profiled(eng.step, 5))
    for sid in list(eng.seqs):
        eng.abort(sid)
    while eng.has_work():
        eng.step()


@section("profile")
def s_profile(args):
    """Where a step's GPU time goes, per kernel, on random weights of PROFILE_SHAPE (default llama2-7b): for each
    mode:batch of PROFILE_CASES, the first prefill step of a burst of PROFILE_PROMPT-token prompts and a decode step
    40 tokens later. PROFILE_SERVING adds knobs (k=v,k=v), e.g. max_num_tokens=4096."""
    from bench.common import SHAPES
    from llmserve.config import ServingConfig
    from llmserve.engine.torch_engine import TorchEngine

    res = RESULTS.setdefault("profile", {})
    shape = os.environ.get("PROFILE_SHAPE", "llama2-7b")
    vocab = SHAPES[shape]["vocab_size"]
    prompt = int(os.environ.get("PROFILE_PROMPT", "128"))
    extra = dict(kv.split("=") for kv in os.environ.get("PROFILE_SERVING", "").split(",") if kv)
    cases = os.environ.get("PROFILE_CASES", "bf16:1,bf16:8,fp8:256,fp8+kv8:256").split(",")
    by_mode: dict[str, list[int]] = {}
    for c in cases:
        m, b = c.split(":")
        by_mode.setdefault(m, []).append(int(b))
    for mode, batches in by_mode.items():
        with tempfile.TemporaryDirectory() as d:
            ckpt = write_random_checkpoint(Path(d), vocab, None if mode.startswith("bf16") else "fp8", shape=shape)
            # PDL off: with it a kernel's time includes its wait for the one before (overlap, not work)
            knobs = {"dtype": "bfloat16", "max_batch_size": max(256, *batches), "max_num_tokens": 1024, "pdl": "false",
                     "kv_cache_free_mem_fraction": 0.9, "kv_cache_dtype": "fp8" if "kv8" in mode else "auto",
                     "max_model_len": min(4096, SHAPES[shape]["max_position_embeddings"]), "max_queue_size": 4096,
                     "max_queued_tokens": 1 << 22, **extra}
            eng = TorchEngine(ServingConfig.from_parameters(knobs), ckpt)
            for B in batches:
                _profile_batch(eng, res, mode, B, prompt, vocab)
                save(args.out)
            eng.shutdown()
            del eng
            torch.cuda.empty_cache()


@section("engine7b")
def s_engine7b(args):
    from llmserve.config import ServingConfig
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams
    from llmserve.engine.torch_engine import TorchEngine

    res = RESULTS.setdefault("engine7b", {})
    modes = os.environ.get("BENCH_MODES", "bf16,fp8,int8_wo").split(",")
    tag = os.environ.get("BENCH_TAG", "")
    for quant in [None if m == "bf16" else m for m in modes]:
        with tempfile.TemporaryDirectory() as d:
            ckpt = write_random_checkpoint(Path(d), 32000, quant)
            t0 = time.time()
            cfg = ServingConfig.of(dtype="bfloat16", max_batch_size=256, kv_cache_free_mem_fraction=0.5)
            eng = TorchEngine(cfg, ckpt)
            t_init = time.time() - t0
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(3, 32000, (128,), generator=g).tolist()
            eng.add_request(EngineRequest("a", ids, SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)))
            times = []
            while eng.has_work():
                t = time.perf_counter()
                eng.step()
                times.append(time.perf_counter() - t)
            dec = sorted(times[1:])
            step_ms = dec[len(dec) // 2] * 1000
            t_graph = replay_median_ms(eng.runner.graph_for(1), 20)
            # batch 8 too
            for i in range(8):
                eng.add_request(EngineRequest(f"b{i}", ids, SamplingParams(temperature=0.0, max_tokens=64,
                                                                             ignore_eos=True)))
            t8 = []
            while eng.has_work():
                t = time.perf_counter()
                eng.step()
                t8.append(time.perf_counter() - t)
            d8 = sorted(t8[2:])
            res[f"{quant or 'bf16'} {tag}"] = {"init_s": t_init, "bs1_step_ms": step_ms, "bs1_graph_ms": t_graph,
                                               "prefill_ms": times[0] * 1000, "bs8_step_ms": d8[len(d8) // 2] * 1000}
            SUMMARY.append(f"engine 7B {quant or 'bf16'} {tag}: init {t_init:.0f}s, bs1 step {step_ms:.3f} ms "
                           f"(graph replay {t_graph:.3f} ms), bs8 step {d8[len(d8) // 2] * 1000:.3f} ms, "
                           f"prefill128 {times[0] * 1000:.1f} ms")
            print(SUMMARY[-1], flush=True)
            eng.shutdown()
            del eng
            torch.cuda.empty_cache()


@section("graphs_bs1")
def s_graphs_bs1(args):
    """The batch-1 decode graph's replay time with and without the prefill graphs beside it (bench runs found it
    ~1% slower with them): GRAPH_CASES, each prefill_graph_max_tokens, "own" = the prefill graphs in a memory
    pool of their own instead of the decode graphs' pool, "warm" = their eager warm-up runs without the capture.
    One engine at a time, the first case again last."""
    from llmserve.config import ServingConfig
    from llmserve.engine.prefill_graphs import PrefillGraphs
    from llmserve.engine.torch_engine import TorchEngine

    res = RESULTS.setdefault("graphs_bs1", {})
    capture_all = PrefillGraphs.capture_all
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_random_checkpoint(Path(d), 32000, None)
        for i, case in enumerate(os.environ.get("GRAPH_CASES", "0,2048,2048own,256,0").split(",")):
            if case.endswith("own"):
                PrefillGraphs.capture_all = lambda self, pool: capture_all(self, torch.cuda.graph_pool_handle())
            elif case.endswith("warm"):
                PrefillGraphs.capture_all = lambda self, pool: [self._layers(T) for T in self.buckets for _ in "ab"]
            else:
                PrefillGraphs.capture_all = capture_all
            tokens = int("".join(c for c in case if c.isdigit()))
            eng = TorchEngine(ServingConfig.of(dtype="bfloat16", max_batch_size=256, max_num_tokens=1024,
                                            kv_cache_free_mem_fraction=0.9, prefill_graph_max_tokens=tokens), ckpt)
            graph = eng.runner.graph_for(1)
            times = [replay_median_ms(graph, 50) for _ in range(3)]
            res[f"{i}:{case}"] = times
            SUMMARY.append(f"graphs_bs1 {case}: bs1 decode graph replay " + ", ".join(f"{t:.3f}" for t in times)
                           + " ms")
            print(SUMMARY[-1], flush=True)
            eng.shutdown()
            del eng, graph
            torch.cuda.empty_cache()
    PrefillGraphs.capture_all = capture_all


@section("pdl")
def s_pdl(args):
    """Programmatic dependent launch per kernel module in the decode graphs: which kernels gain. (The attention
    module had a PDL switch for the run in bench/results/2026-11-25-h100-pdl; it lost, and was taken out.)"""
    from llmserve import kernels
    from llmserve.config import ServingConfig
    from llmserve.engine.torch_engine import TorchEngine
    from llmserve.kernels import fused, linear

    res = RESULTS.setdefault("pdl", {})
    # Each module's launches forced on or off, whatever the model asks (every graph the runner captures)
    on, off = (lambda pdl: kernels.launch_args(True)), (lambda pdl: kernels.launch_args(False))
    modules = {"linear": linear, "fused": fused}
    masks = [tuple(m.split("+")) if m != "none" else () for m in
             os.environ.get("BENCH_PDL_MASKS", "none,linear+fused,fused,linear").split(",")]
    sizes = [int(x) for x in os.environ.get("BENCH_PDL_SIZES", "1,8").split(",")]
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_random_checkpoint(Path(d), 32000, None)
        eng = TorchEngine(ServingConfig.of(dtype="bfloat16", max_batch_size=max(sizes), kv_cache_free_mem_fraction=0.5,
                                        pdl="false"), ckpt)
        runner = eng.runner
        for mask in masks:
            for name, mod in modules.items():
                mod.launch_args = on if name in mask else off
            runner.capture_graphs()  # drops the earlier ones first
            row = {}
            for S in sizes:
                row[f"bs{S}_ms"] = replay_median_ms(runner.graph_for(S), 30)
            key = "+".join(mask) or "none"
            res[key] = row
            SUMMARY.append(f"pdl on {key}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
            print(SUMMARY[-1], flush=True)
        for mod in modules.values():
            mod.launch_args = kernels.launch_args
        eng.shutdown()


@section("host")
def s_host(args):
    """Where the steps of 256 concurrent 128-token requests spend their time: the kernel time of the first
    prefill steps (torch.profiler) against their wall time, then cProfile of engine.step over the ramp's
    prefill/mixed steps and the graph decode steps after it, next to the decode graph's GPU time. HOST_MODE:
    bf16 (default) or fp8 weights."""
    import cProfile
    import io
    import pstats

    from llmserve.config import ServingConfig
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams
    from llmserve.engine.torch_engine import TorchEngine

    mode = os.environ.get("HOST_MODE", "bf16")
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_random_checkpoint(Path(d), 32000, None if mode == "bf16" else mode)
        eng = TorchEngine(ServingConfig.of(dtype="bfloat16", max_batch_size=256, max_num_tokens=1024,
                                        kv_cache_free_mem_fraction=0.9), ckpt)
        g = torch.Generator().manual_seed(0)
        warm = [torch.randint(3, 32000, (128,), generator=g).tolist() for _ in range(16)]
        for i, ids in enumerate(warm):  # compiles what the ramp meets, outside the profile
            eng.add_request(EngineRequest(f"w{i}", ids, SamplingParams(temperature=0.0, max_tokens=4,
                                                                         ignore_eos=True)))
        while eng.has_work():
            eng.step()
        for i in range(256):
            ids = torch.randint(3, 32000, (128,), generator=g).tolist()
            eng.add_request(EngineRequest(str(i), ids, SamplingParams(temperature=0.0, max_tokens=100,
                                                                        ignore_eos=True)))
        out = RESULTS.setdefault("host", {})
        # GPU time of the first eager steps (kernel time summed by torch.profiler), against their wall time
        from torch.profiler import ProfilerActivity, profile

        walls = []
        with profile(activities=[ProfilerActivity.CUDA]) as tprof:
            for _ in range(4):
                t = time.perf_counter()
                eng.step()
                walls.append((time.perf_counter() - t) * 1000)
        gpu_ms = sum(_kernel_table(tprof).values()) / 1000 / len(walls)
        out[f"{mode}/eager_gpu"] = {"steps": len(walls), "kernel_ms_per_step": gpu_ms, "wall_ms": walls}
        SUMMARY.append(f"host {mode} eager: kernel time {gpu_ms:.2f} ms per step, walls "
                       + ", ".join(f"{w:.1f}" for w in walls) + " ms (under torch.profiler)")
        for phase in ("eager", "decode"):
            prof = cProfile.Profile()
            walls = []
            while len(walls) < 40 and eng.has_work():
                ramp = _prefilling(eng)
                if ramp != (phase == "eager"):
                    if phase == "eager":
                        break
                    eng.step()
                    continue
                t = time.perf_counter()
                prof.enable()
                eng.step()
                prof.disable()
                walls.append((time.perf_counter() - t) * 1000)
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
            text = buf.getvalue()
            print(text[-6000:], flush=True)
            walls.sort()
            out[f"{mode}/{phase}"] = {"steps": len(walls), "step_wall_ms_median": walls[len(walls) // 2],
                                      "step_wall_ms_total": sum(walls), "profile": text[-8000:]}
            SUMMARY.append(f"host {mode} {phase}: {len(walls)} steps, wall median {walls[len(walls) // 2]:.2f} ms, "
                           f"total {sum(walls):.0f} ms (under cProfile)")
        if 256 in eng.runner.decode_graph_sizes:
            out[f"{mode}/graph_ms"] = replay_median_ms(eng.runner.graph_for(256), 10)
            SUMMARY.append(f"host {mode}: batch-256 decode graph replay {out[f'{mode}/graph_ms']:.2f} ms")
        eng.shutdown()


class _ClosedLoop:
    """`streams` requests of PROMPT/OUT tokens kept in flight on an engine: one replaces each that finishes."""

    def __init__(self, eng, streams: int, prompt: int, out: int, vocab: int):
        self.eng, self.prompt, self.out, self.vocab = eng, prompt, out, vocab
        self.g = torch.Generator().manual_seed(0)
        self.n = 0
        for _ in range(streams):
            self.submit()

    def submit(self) -> None:
        from llmserve.engine.api import EngineRequest
        from llmserve.engine.sampling_params import SamplingParams

        ids = torch.randint(3, self.vocab - 3, (self.prompt,), generator=self.g).tolist()
        self.eng.add_request(EngineRequest(f"s{self.n}", ids, SamplingParams(
            temperature=0.0, max_tokens=self.out, ignore_eos=True)))
        self.n += 1

    def step(self) -> int:
        """One engine step; returns the tokens it produced."""
        outs = self.eng.step()
        for o in outs:
            if o.finish_reason is not None:
                self.submit()
        return sum(len(o.new_token_ids) for o in outs)


def _busy(loop: _ClosedLoop, steps: int) -> dict:
    """GPU kernel time against wall time over `steps` steady steps (torch.profiler, CUDA activity only)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0, tokens = time.perf_counter(), 0
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            tokens += loop.step()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) * 1e3
    table = _kernel_table(prof)
    top = dict(sorted(table.items(), key=lambda kv: -kv[1])[:12])
    return {"steps": steps, "wall_ms": wall, "kernel_ms": sum(table.values()) / 1e3, "tokens": tokens,
            "top_kernels_us": top}


@section("steady")
def s_steady(args):
    """A closed loop of STEADY_STREAMS streams of STEADY_LEN (in/out, e.g. 128/128) tokens on random weights of
    STEADY_SHAPE (STEADY_MODE fp8|bf16, STEADY_SERVING k=v,...): after a warm-up of two answer lengths, the GPU's
    kernel time against the wall over 60 steps, then cProfile of the host over 60 more."""
    import cProfile
    import io
    import pstats

    from bench.common import SHAPES
    from llmserve.config import ServingConfig
    from llmserve.engine.torch_engine import TorchEngine

    shape = os.environ.get("STEADY_SHAPE", "llama3.1-8b")
    mode = os.environ.get("STEADY_MODE", "fp8")
    streams = int(os.environ.get("STEADY_STREAMS", "1024"))
    prompt, out = (int(x) for x in os.environ.get("STEADY_LEN", "128/128").split("/"))
    vocab = SHAPES[shape]["vocab_size"]
    extra = dict(kv.split("=") for kv in os.environ.get("STEADY_SERVING", "").split(",") if kv)
    knobs = {"dtype": "bfloat16", "max_batch_size": streams, "max_num_tokens": 4096, "kv_cache_free_mem_fraction": 0.9,
             "max_model_len": 4096, "max_queue_size": 1 << 16, "max_queued_tokens": 1 << 26, **extra}
    key = f"{shape}/{mode}/{streams}/{prompt}x{out}/" + ",".join(f"{k}={v}" for k, v in extra.items())
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_random_checkpoint(Path(d), vocab, None if mode == "bf16" else mode, shape=shape)
        eng = TorchEngine(ServingConfig.from_parameters(knobs), ckpt)
        loop = _ClosedLoop(eng, streams, prompt, out, vocab)
        t0, tokens = time.perf_counter(), 0
        while loop.n < 3 * streams:  # two answer lengths: past the first burst's ramp
            tokens += loop.step()
        r = {"warmup_tok_s": tokens / (time.perf_counter() - t0), "busy": _busy(loop, 60)}
        prof, t0, tokens = cProfile.Profile(), time.perf_counter(), 0
        prof.enable()
        for _ in range(60):
            tokens += loop.step()
        prof.disable()
        r["cprofile_tok_s"] = tokens / (time.perf_counter() - t0)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        r["cprofile"] = buf.getvalue()[-7000:]
        eng.shutdown()
    RESULTS.setdefault("steady", {})[key] = r
    b = r["busy"]
    SUMMARY.append(f"steady {key}: warm-up {r['warmup_tok_s']:,.0f} tok/s; 60 steps wall {b['wall_ms']:.0f} ms, "
                   f"kernels {b['kernel_ms']:.0f} ms ({b['kernel_ms'] / b['wall_ms']:.0%}), {b['tokens']} tokens")
    print(SUMMARY[-1], "\n", r["cprofile"][-3500:], flush=True)


@section("triton")
def s_triton(args):
    """Starts the real tritonserver on the random 7B (quick), prints what fails, keeps the server log."""
    from bench.run import SERVING
    from bench.triton_path import Server, drive_triton, exact_length_prompts, model_repository, python_overlay

    work = Path(tempfile.mkdtemp(prefix="tri-"))
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in SERVING.items()}
    repo = model_repository(work, params)
    server = Server(work, repo)
    try:
        server.start(timeout=300)
        texts, _ = exact_length_prompts(Path(".carry/tokenizer"), 8, 128, 1)
        recs, wall = drive_triton(server.port, texts, 32, 8)
        SUMMARY.append(f"triton: served 8 x 32 tokens in {wall:.2f} s, tokens {[len(r.token_times) for r in recs]}, "
                       f"errors {[r.error for r in recs if r.error][:2]}")
    except Exception as exc:  # noqa: BLE001
        log = server.tail(200000)
        bad = [ln for ln in log.splitlines() if any(m in ln for m in ("E11", "rror", "Traceback", "File \"",
                                                                       "UNAVAILABLE"))]
        print("\n".join(bad[-60:]), flush=True)
        py = python_overlay(work) / "python3"
        chk = subprocess.run([str(py), "-c", "import numpy, torch, transformers, llmserve.serving.factory; "
                              "from transformers import AutoTokenizer; "
                              "print(numpy.__version__, torch.__version__, torch.cuda.is_available())"],
                             capture_output=True, text=True)
        print("overlay python:", chk.stdout[-1500:], chk.stderr[-3000:], flush=True)
        SUMMARY.append(f"triton FAILED: {str(exc)[:200]}")
        raise
    finally:
        server.stop()
        shutil.copy2(server.log, args.out / "tritonserver.log")


SECTIONS = {"env": s_env, "tests": s_tests, "engine_small": s_engine_small, "engine7b": s_engine7b, "pdl": s_pdl,
            "floor": s_floor, "attn": s_attn, "attn_kv": s_attn_kv, "gemv": s_gemv, "gemv1": s_gemv1, "mm16": s_mm16,
            "host": s_host, "triton": s_triton, "profile": s_profile, "steady": s_steady, "varlen": s_varlen,
            "int4": s_int4, "int8_group": s_int8_group, "varlen_sweep": s_varlen_sweep,
            "int4_sweep": s_int4_sweep, "graphs_bs1": s_graphs_bs1}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results/tmp")))
    ap.add_argument("--sections", default="env,tests,floor,attn,gemv1,mm16,engine7b")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    assert LLAMA2_7B["hidden_size"] == 4096
    for name in args.sections.split(","):
        SECTIONS[name](args)
    print("\n==== summary")
    for k, v in RESULTS.get("sections", {}).items():
        print(f"{k}: {v}")
    for line in SUMMARY:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
