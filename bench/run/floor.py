"""The `floor` phase: the time to read the shape's weights (torch.sum, per tensor and in 256 MB chunks inside a
CUDA graph), the bound a batch-1 decode step is measured against."""

from __future__ import annotations

from bench.common import linear_shapes, shape_config


# -- phases (each in its own process) --------------------------------------------------------------------------------
def _floor_weights(cfg: dict, mode: str, g) -> list:
    """Random weights of every linear layer of the shape (stored as `mode` stores them) and the bf16 lm_head:
    [(tensor, scale, gated)]."""
    import torch

    from llmserve.model.linear import quantize_weight

    weights = []
    for _ in range(cfg["num_hidden_layers"]):
        for name, (n, k) in linear_shapes(cfg).items():
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
            if mode != "bf16":
                q, s = quantize_weight(w, mode)
                del w
                weights.append((q, s, name == "down"))
            else:
                weights.append((w, None, name == "down"))
    lm = torch.randn(cfg["vocab_size"], cfg["hidden_size"], device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    weights.append((lm, None, False))
    return weights


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
    from llmserve.kernels.linear import gemv, quant_fp8_per_token

    hid, inter = cfg["hidden_size"], cfg["intermediate_size"]
    weights = _floor_weights(cfg, mode, g)
    lm = weights[-1][0]
    nbytes = sum(w.numel() * w.element_size() for w, _, _ in weights)
    r = {"weight_bytes": nbytes, **_chunked_floor([w for w, _, _ in weights])}
    views = [w.view(torch.float32) for w, _, _ in weights]
    r["sum_ms"] = graph_time_ms(lambda: [v.sum() for v in views])  # per tensor: the floor of the runs before 2026-12
    q_dim = cfg["num_attention_heads"] * cfg["head_dim"]
    xs = {k: torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for k in (hid, q_dim, inter, 2 * inter)}
    r["our_gemv_ms"] = graph_time_ms(lambda: [gemv(xs[2 * w.shape[1] if gated else w.shape[1]], w, s, gated=gated)
                                              for w, s, gated in weights])
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
    same weights (one row), for each storage type (int8/fp8 linears + the bf16 lm_head)."""
    import torch

    cfg = shape_config(args.shape)
    g = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for mode in ("bf16", "fp8", "int8_wo"):
        out[mode] = _floor_one(cfg, mode, g)
        print(mode, out[mode], flush=True)
        torch.cuda.empty_cache()
    return out
