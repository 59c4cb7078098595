"""The `floor` phase: the time to read the shape's weights (torch.sum, per tensor and in 256 MB chunks inside a
CUDA graph), the bound a batch-1 decode step is measured against."""

from __future__ import annotations

from bench.common import linear_shapes, shape_config

FLOOR_MODES = ("bf16", "fp8", "int8_wo", "int4_sym")  # int4_sym: groups of 128, what engine_int4 serves


# -- phases (each in its own process) --------------------------------------------------------------------------------
def floor_weights(cfg: dict, mode: str, g, device: str = "cuda") -> list:
    """Random weights of every linear layer of the shape (stored as `mode` stores them: int4_sym as the guide's
    groups of 128) and the bf16 lm_head: [(tensor, scale, gated)]."""
    import torch

    from llmserve.model.int4 import quantize_int4
    from llmserve.model.linear import quantize_weight

    weights = []
    for _ in range(cfg["num_hidden_layers"]):
        for name, (n, k) in linear_shapes(cfg).items():
            w = torch.randn(n, k, device=device, dtype=torch.bfloat16, generator=g) * 0.02
            if mode == "int4_sym":
                q = quantize_int4(w, 128, symmetric=True)
                weights.append((q["weight"], q["weight_scale"], name == "down"))
            elif mode != "bf16":
                q, s = quantize_weight(w, mode)
                weights.append((q, s, name == "down"))
            else:
                weights.append((w, None, name == "down"))
            del w
    lm = torch.randn(cfg["vocab_size"], cfg["hidden_size"], device=device, dtype=torch.bfloat16, generator=g) * 0.02
    weights.append((lm, None, False))
    return weights


def read_tensors(weights: list, mode: str) -> list:
    """What a batch-1 step must read: the weights, and for int4 their group scales too (1/32 of the codes' bytes;
    the 8-bit modes' per-row scales are negligible and were never counted)."""
    return [w for w, _, _ in weights] + ([s for _, s, _ in weights if s is not None] if mode == "int4_sym" else [])


def one_row_kernel(mode: str, xs: dict):
    """Our one-row kernel on a `mode` weight, x from `xs` by input width: the 4-bit GEMV (its codes hold two inputs
    a byte), or the 16/8-bit one (the bf16 lm_head too)."""
    from llmserve.kernels.int4 import w4gemv
    from llmserve.kernels.linear import gemv

    def run(w, s, gated):
        four = mode == "int4_sym" and s is not None
        k = w.shape[1] * (2 if four else 1)
        return (w4gemv if four else gemv)(xs[2 * k if gated else k], w, s, gated=gated)
    return run


def _chunked_floor(tensors: list) -> dict:
    """The floor the batch-1 targets use: torch.sum over a flat copy of the same bytes (one buffer per storage type)
    in 256 MB chunks, in one CUDA graph. The copy is freed before the other measurements."""
    import torch

    from bench.common import CHUNK_BYTES, chunked_sum_ms, flat_buffers

    flats = flat_buffers(tensors)
    nbytes = sum(f.numel() for f in flats)
    ms = chunked_sum_ms(flats)
    del flats
    torch.cuda.empty_cache()
    return {"sum_chunked_ms": ms, "sum_chunked_TBps": nbytes / ms / 1e9, "chunked_bytes": nbytes,
            "chunk_bytes": CHUNK_BYTES}


def _floor_one(cfg: dict, mode: str, g) -> dict:
    import torch

    from bench.common import graph_time_ms
    from llmserve.kernels.linear import quant_fp8_per_token

    hid, inter = cfg["hidden_size"], cfg["intermediate_size"]
    weights = floor_weights(cfg, mode, g)
    lm = weights[-1][0]
    tensors = read_tensors(weights, mode)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    r = {"weight_bytes": nbytes, **_chunked_floor(tensors)}
    views = [t.view(torch.float32) for t in tensors]
    r["sum_ms"] = graph_time_ms(lambda: [v.sum() for v in views])  # per tensor: the floor of the runs before 2026-12
    q_dim = cfg["num_attention_heads"] * cfg["head_dim"]
    xs = {k: torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for k in (hid, q_dim, inter, 2 * inter)}
    kernel = one_row_kernel(mode, xs)
    r["our_gemv_ms"] = graph_time_ms(lambda: [kernel(w, s, gated) for w, s, gated in weights])
    if mode == "bf16":
        r["cublas_m1_ms"] = graph_time_ms(lambda: [torch.nn.functional.linear(xs[w.shape[1]], w)
                                                   for w, _, _ in weights])
    if mode == "fp8":
        def scaled():
            for w, s, _ in weights[:-1]:
                xq, xsc = quant_fp8_per_token(xs[w.shape[1]])
                torch._scaled_mm(xq, w.t(), scale_a=xsc, scale_b=s[None, :], out_dtype=torch.bfloat16)
            torch.nn.functional.linear(xs[hid], lm)
        r["scaled_mm_m1_ms"] = graph_time_ms(scaled)
    r["sum_TBps"] = nbytes / r["sum_ms"] / 1e9
    r["our_gemv_TBps"] = nbytes / r["our_gemv_ms"] / 1e9
    return r


def phase_floor(args) -> dict:
    """Time to read all weights of the shape (linears + lm_head) once, in one CUDA graph: torch.sum over them in
    256 MB chunks of one flat buffer per storage type (the floor of record) and over every weight tensor (viewed
    as float32; the floor before), and for 16-bit weights cuBLAS F.linear at M = 1; plus our GEMV kernels over the
    same weights (one row), for each storage type (int8/fp8/int4 linears + the bf16 lm_head)."""
    import torch

    cfg = shape_config(args.shape)
    g = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for mode in FLOOR_MODES:
        out[mode] = _floor_one(cfg, mode, g)
        print(mode, out[mode], flush=True)
        torch.cuda.empty_cache()
    return out
