"""Sections on the linear kernels: GEMV launch-shape sweeps, the weight-read floor, one-row and 16-row kernels."""

from __future__ import annotations

import os

import torch

from bench.common import graph_time_ms
from bench.kernel_check.report import section

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008),
          "lm_head": (32000, 4096)}


CONFIGS_16 = [(16, 16, 256, 4, 4), (16, 32, 256, 4, 4), (16, 32, 512, 4, 3), (16, 64, 256, 4, 4),
              (16, 64, 128, 4, 5), (16, 32, 128, 4, 6), (16, 64, 512, 8, 3), (16, 16, 512, 4, 3),
              (16, 16, 256, 2, 6), (16, 32, 256, 4, 6), (16, 128, 128, 4, 4), (16, 128, 256, 8, 3)]


CONFIGS_BIG = {32: [(32, 64, 128, 4, 4), (32, 64, 256, 4, 3), (32, 32, 256, 4, 4)],
               64: [(64, 64, 128, 4, 4), (64, 128, 128, 8, 3), (64, 32, 256, 4, 4)]}


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
    for kind in os.environ.get("GEMV1_KINDS", "bf16,int8,fp8").split(","):
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
            args.report.say(f"GEMV all layers {kind} M={M}: triton best {tot_best:.3f} ms, library {tot_lib:.3f} ms")
            args.report.save()
        del W
        torch.cuda.empty_cache()
    args.report.results["gemv"] = res
    args.report.results["gemv_totals"] = best_total


@section("floor")
def s_floor(args):
    """Time to read every weight once: torch.sum over each tensor (viewed as bf16 and as float32: bytes are
    bytes) in one CUDA graph; for 16-bit weights also cuBLAS F.linear at M = 1."""
    res = {}
    for kind in os.environ.get("GEMV1_KINDS", "bf16,int8,fp8").split(","):
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
        args.report.say(f"floor {kind}: {nbytes / 1e9:.2f} GB, torch.sum {r['sum_ms']:.3f} ms "
                       f"({r['sum_TBps']:.2f} TB/s) [bf16-view {r['sum_bfloat16_ms']:.3f}, f32-view "
                       f"{r['sum_float32_ms']:.3f}]" + (f", cuBLAS M=1 {r['cublas_m1_ms']:.3f} ms"
                                                      if "cublas_m1_ms" in r else ""))
        del W, tensors, views
        torch.cuda.empty_cache()
    args.report.results["floor"] = res


@section("gemv1")
def s_gemv1(args):
    """Batch-1 GEMV (CUDA-core kernel): configurations x weight conversions, all 32 layers of each matrix, each as the
    model launches it (with GATE_OUT, gate_up's epilogue computes the gate and down_proj reads plain rows).
    GEMV1_KINDS: the storage kinds (default bf16,int8,fp8)."""
    from llmserve.kernels import linear as klinear
    from llmserve.kernels.linear import gemv

    cfgs = [(8, 512, 4, 1), (16, 256, 4, 1), (16, 512, 4, 1), (32, 256, 4, 1), (8, 1024, 4, 1), (16, 512, 8, 1),
            (32, 512, 8, 1), (16, 1024, 8, 1), (64, 256, 8, 1), (16, 512, 4, 3), (16, 1024, 8, 3)]
    cfgs += [(16, 1024, 4, 3), (32, 512, 4, 3), (8, 2048, 4, 2), (16, 2048, 8, 2)]  # more bytes a tile for 8-bit
    res, totals = {}, {}
    for kind in os.environ.get("GEMV1_KINDS", "bf16,int8,fp8").split(","):
        W = _weights(kind)
        variants = {"bf16": [0], "int8": [0, 1], "fp8": [0, 2]}[kind]
        for wk in variants:
            total = 0.0
            picks = {}
            for name, layers in W.items():
                if name == "lm_head" and kind != "bf16":
                    continue
                N, K = layers[0][0].shape
                gated = name == "down" and not klinear.GATE_OUT
                gate_out = name == "gate_up" and klinear.GATE_OUT
                x = torch.randn(1, 2 * K if gated else K, device="cuda", dtype=torch.bfloat16)
                times = {}
                for cfg in cfgs:
                    try:
                        times[str(cfg)] = graph_time_ms(lambda cfg=cfg, x=x, layers=layers, gated=gated, wk=wk,
                                                        go=gate_out: [gemv(x, w, s, gated=gated, config=cfg,
                                                                           w_kind=wk, gate_out=go) for w, s in layers],
                                                        reps=10)
                    except Exception as exc:  # noqa: BLE001
                        times[str(cfg)] = f"fail {type(exc).__name__}: {str(exc)[:100]}"
                numeric = {k: v for k, v in times.items() if isinstance(v, float)}
                best = min(numeric, key=numeric.get)
                nbytes = _nbytes(layers)
                picks[name] = (best, numeric[best], nbytes / numeric[best] / 1e9)
                total += numeric[best]
                res[f"{kind}/wk{wk}/{name}"] = {"times_ms": times, "best": best, "TBps": nbytes / numeric[best] / 1e9}
            totals[f"{kind}/wk{wk}"] = total
            args.report.say(f"gemv M=1 {kind} wk={wk}: total {total:.3f} ms; " + "; ".join(
                f"{n} {b} {t:.3f}ms {bw:.2f}TB/s" for n, (b, t, bw) in picks.items()))
            print(args.report.summary[-1], flush=True)
            args.report.save()
        del W
        torch.cuda.empty_cache()
    args.report.results["gemv1"] = res
    args.report.results["gemv1_totals"] = totals


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
            args.report.say(f"mm M={M} {kind}: triton best total {tot_t:.3f} ms, default configs {tot_def:.3f} ms, "
                           f"library {tot_lib:.3f} ms; best per matrix: " + ", ".join(
                               f"{k.split('/')[-1]} {r['best']}" for k, r in res.items()
                               if k.startswith(f"{kind}/M{M}/")))
            print(args.report.summary[-1], flush=True)
        del W
        torch.cuda.empty_cache()
    args.report.results["mm16"] = res

