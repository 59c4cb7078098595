# ruff: noqa: B023, E501  (each lambda runs inside its own loop iteration)
"""Prefill attention, fresh prompts (no cached prefix), Llama-3.1-8B heads: our varlen kernel over the paged cache
(bf16 and fp8) against torch's fused attentions on the same prompts' bf16 K/V (contiguous): SDPA's flash and
cuDNN backends over [B, H, S, D] and torch.nn.attention.varlen.varlen_attn where this torch has it. us a layer
and TFLOPS (causal: 2 * 2 * H * D * S^2 / 2 a prompt). GPU only: python prefill_attn_ab.py OUT.json"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from llmserve.kernels.shapes import varlen_query_blocks
from llmserve.kernels.varlen import varlen_attention

H, KVH, D, PAGE = 32, 8, 128, 16


def time_us(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1000)
    return sorted(times)[reps // 2]


def time_cases(cases: dict, flops: float, key: str, fix=lambda out: out) -> dict:
    """Each case's us and TFLOPS and its largest difference from the first case's output (fix: an output into the
    first's layout); a case this torch or GPU lacks records its error."""
    row, ref = {}, None
    for name, make in cases.items():
        try:
            fn = make()
            out = fix(fn())
            ref = out if ref is None else ref
            us = time_us(fn)
            row[name] = {"us": round(us, 1), "tflops": round(flops / us / 1e6, 1),
                         "max_diff": float((out.float() - ref.float()).abs().max())}
        except Exception as e:  # noqa: BLE001  (a backend this torch or GPU lacks)
            row[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(key, name, row[name], flush=True)
    return row


def _ours(q, k, v, B, S, kv8):
    blocks = B * S // PAGE
    cache = torch.empty(2, blocks + 1, PAGE, KVH, D, device="cuda", dtype=torch.bfloat16)
    cache[0, :blocks] = k.view(blocks, PAGE, KVH, D)
    cache[1, :blocks] = v.view(blocks, PAGE, KVH, D)
    if kv8:
        cache = cache.to(torch.float8_e4m3fn)
    bt = torch.arange(blocks, dtype=torch.int32, device="cuda").view(B, S // PAGE)
    ctx = torch.full((B,), S, dtype=torch.int32, device="cuda")
    starts = torch.arange(0, B * S + 1, S, dtype=torch.int32, device="cuda")
    seqs, firsts = varlen_query_blocks([S] * B, H // KVH, D)
    qb = (torch.tensor(seqs, dtype=torch.int32, device="cuda"), torch.tensor(firsts, dtype=torch.int32, device="cuda"))
    out = torch.empty_like(q)
    return lambda: varlen_attention(q, cache, bt, ctx, starts, *qb, D ** -0.5, out=out)


def _sdpa(q, k, v, B, S, backend):
    qh = q.view(B, S, H, D).transpose(1, 2)
    kh = k.view(B, S, KVH, D).transpose(1, 2).repeat_interleave(H // KVH, 1).contiguous()
    vh = v.view(B, S, KVH, D).transpose(1, 2).repeat_interleave(H // KVH, 1).contiguous()
    qh = qh.contiguous()

    def run():
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=D ** -0.5)
    return run


def _varlen_torch(q, k, v, B, S):
    from torch.nn.attention.varlen import varlen_attn
    cu = torch.arange(0, B * S + 1, S, dtype=torch.int32, device="cuda")
    return lambda: varlen_attn(q, k, v, cu, cu, S, S, scale=D ** -0.5, window_size=(-1, 0), enable_gqa=True)


def main(path):
    res = {"torch": torch.__version__}
    for B, S in ((4, 2048), (8, 1024), (1, 8192), (64, 128)):
        torch.manual_seed(0)
        q = torch.randn(B * S, H, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B * S, KVH, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B * S, KVH, D, device="cuda", dtype=torch.bfloat16)
        flops = B * 2 * H * D * S * S  # causal: half of 4 * H * D * S^2
        cases = {"ours_kv16": lambda: _ours(q, k, v, B, S, False), "ours_kv8": lambda: _ours(q, k, v, B, S, True),
                 "sdpa_flash": lambda: _sdpa(q, k, v, B, S, SDPBackend.FLASH_ATTENTION),
                 "sdpa_cudnn": lambda: _sdpa(q, k, v, B, S, SDPBackend.CUDNN_ATTENTION),
                 "varlen_attn": lambda: _varlen_torch(q, k, v, B, S)}
        res[f"{B}x{S}"] = time_cases(cases, flops, f"{B}x{S}", lambda out: out.transpose(1, 2).reshape(B * S, H, D)
                                     if out.dim() == 4 else out)
    json.dump(res, open(path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
