# ruff: noqa: B023, E501  (each lambda runs inside its own loop iteration)
"""Follow-up of prefill_attn_ab.py (s21 call 2: SDPA's cuDNN backend 1.5-2x our varlen kernel on fresh prompts, with
K/V repeated to 32 heads outside the timing). Which torch 2.11 calls could serve a step's fresh prompts as they come:
unequal lengths, 8 KV heads. Cases, us a layer (Llama-3.1-8B heads), each against our varlen kernel's output:
- sdpa_cudnn_gqa: SDPA cuDNN on [B, H, S, D] with enable_gqa (no repeat), equal lengths;
- sdpa_cudnn_repeat: the same with K/V repeated inside the timing;
- njt_*: nested jagged tensors (unequal lengths, K/V repeated to 32 heads in the timing: they take no GQA) through
  SDPA with one backend allowed (flash / cudnn / efficient);
- varlen_attn: torch.nn.attention.varlen.varlen_attn (its signature printed), causal, 8 KV heads as they are;
- first, cudnn_first_calls: wall ms of the first and second SDPA cuDNN call at unseen prompt lengths (a plan per shape?).
GPU only: python prefill_attn_ab2.py OUT.json"""
import inspect
import json
import sys
import time

import torch
import torch.nn.functional as F
from prefill_attn_ab import time_cases  # this folder's first script (run from here: its folder is on sys.path)
from torch.nn.attention import SDPBackend, sdpa_kernel

from llmserve.kernels.shapes import varlen_query_blocks
from llmserve.kernels.varlen import varlen_attention

H, KVH, D, PAGE = 32, 8, 128, 16


def _ours(q, k, v, lens):
    blocks = [-(-n // PAGE) for n in lens]
    cache = torch.zeros(2, sum(blocks) + 1, PAGE, KVH, D, device="cuda", dtype=torch.bfloat16)
    bt = torch.zeros(len(lens), max(blocks), dtype=torch.int32, device="cuda")
    first, t0 = 0, 0
    for i, n in enumerate(lens):
        flat = cache[:, first:first + blocks[i]].flatten(1, 2)
        flat[0, :n], flat[1, :n] = k[t0:t0 + n], v[t0:t0 + n]
        bt[i, :blocks[i]] = torch.arange(first, first + blocks[i])
        first, t0 = first + blocks[i], t0 + n
    ctx = torch.tensor(lens, dtype=torch.int32, device="cuda")
    starts = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
    seqs, firsts = varlen_query_blocks(lens, H // KVH, D)
    qb = (torch.tensor(seqs, dtype=torch.int32, device="cuda"), torch.tensor(firsts, dtype=torch.int32, device="cuda"))
    out = torch.empty_like(q)
    return lambda: varlen_attention(q, cache, bt, ctx, starts, *qb, D ** -0.5, out=out)


def _dense(q, k, v, lens, repeat):
    B, S = len(lens), lens[0]
    qh = q.view(B, S, H, D).transpose(1, 2)
    kh, vh = (t.view(B, S, KVH, D).transpose(1, 2) for t in (k, v))

    def run():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            if repeat:
                o = F.scaled_dot_product_attention(qh, kh.repeat_interleave(H // KVH, 1),
                                                   vh.repeat_interleave(H // KVH, 1), is_causal=True, scale=D ** -0.5)
            else:
                o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=D ** -0.5, enable_gqa=True)
        return o.transpose(1, 2).reshape(B * S, H, D)
    return run


def _njt(q, k, v, lens, backend):
    """Nested jagged SDPA takes no GQA (it wants as many K/V heads as query heads): K/V repeated inside the timing."""
    offsets = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int64, device="cuda")

    def run():
        kr, vr = (t.repeat_interleave(H // KVH, 1) for t in (k, v))
        nq, nk, nv = (torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2) for t in (q, kr, vr))
        with sdpa_kernel([backend]):
            o = F.scaled_dot_product_attention(nq, nk, nv, is_causal=True, scale=D ** -0.5)
        return o.transpose(1, 2).values()
    return run


def _varlen(q, k, v, lens):
    from torch.nn.attention.varlen import varlen_attn
    params = inspect.signature(varlen_attn).parameters
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
    kw = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    if "scale" in params:
        kw["scale"] = D ** -0.5
    return lambda: varlen_attn(q, k, v, cu, cu, max(lens), max(lens), **kw)


def _first_calls(lengths):
    """ms of SDPA cuDNN's first call at each prompt length (one prompt, enable_gqa) and of its second: a plan built
    per shape would cost each new length in a step's fresh prompts (real traffic's lengths vary), which a timing
    of one warmed shape hides."""
    out = {}
    for n in lengths:
        q = torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, KVH, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        times = []
        for _ in range(2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            try:
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=D ** -0.5, enable_gqa=True)
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 (a backend refusing the shape is a result)
                out[n] = f"{type(e).__name__}: {str(e)[:200]}"
                break
            times.append((time.perf_counter() - t0) * 1e3)
        else:
            out[n] = {"first_ms": round(times[0], 3), "second_ms": round(times[1], 3)}
        print(n, out[n], flush=True)
    return out


def main(path):
    res = {"torch": torch.__version__}
    res["cudnn_first_calls"] = _first_calls([2048, 2047, 1500, 777, 3001, 129])
    try:
        from torch.nn.attention.varlen import varlen_attn
        res["varlen_attn_signature"] = str(inspect.signature(varlen_attn))
    except ImportError as e:
        res["varlen_attn_signature"] = f"ImportError: {e}"
    print(res, flush=True)
    for lens in ([2048] * 4, [2048, 1500, 3000, 1644], [128] * 64, [900, 37, 2600, 4000, 655]):
        torch.manual_seed(0)
        T = sum(lens)
        q = torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(T, KVH, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(T, KVH, D, device="cuda", dtype=torch.bfloat16)
        flops = sum(2 * H * D * n * n for n in lens)
        cases = {"ours_kv16": lambda: _ours(q, k, v, lens)}
        if len(set(lens)) == 1:
            cases["sdpa_cudnn_gqa"] = lambda: _dense(q, k, v, lens, False)
            cases["sdpa_cudnn_repeat"] = lambda: _dense(q, k, v, lens, True)
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
            cases[f"njt_{name}"] = lambda backend=backend: _njt(q, k, v, lens, backend)
        cases["varlen_attn"] = lambda: _varlen(q, k, v, lens)
        key = "+".join(map(str, lens)) if len(set(lens)) > 1 else f"{len(lens)}x{lens[0]}"
        res[key] = time_cases(cases, flops, key)
    json.dump(res, open(path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
