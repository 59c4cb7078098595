# ruff: noqa: B023, E501  (each lambda runs inside its own loop iteration)
"""A mixed step's attention two ways, same inputs, one process: today's one varlen launch over every sequence
(decode rows included: a query block of one token uses a sliver of its tensor-core tile) against the decode kernel
on the decode rows plus the varlen kernel on the prompt chunks. us a layer and the largest difference.
Llama-3.1-8B heads. On a GPU: python bench/results/2026-12-04-h200-s18/scripts/mixed_split_ab.py OUT.json;
without one it runs a small case under Triton's interpreter and checks the difference only."""
import itertools
import json
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from llmserve.kernels import attention as kattn  # noqa: E402
from llmserve.kernels.shapes import varlen_query_blocks  # noqa: E402
from llmserve.kernels.varlen import varlen_attention  # noqa: E402

GPU = torch.cuda.is_available()
DEV, DT = ("cuda", torch.bfloat16) if GPU else ("cpu", torch.float16)
H, KVH, D, PAGE = (32, 8, 128, 16) if GPU else (4, 2, 32, 16)


def _layout(dec_ctx, chunks):
    """Decode rows (one new token at dec_ctx each) first, then prompt chunks (new tokens, context after them)."""
    qlens = [1] * len(dec_ctx) + [q for q, _ in chunks]
    ctxs = list(dec_ctx) + [c for _, c in chunks]
    return qlens, ctxs


def _tensors(qlens, ctxs, kv8):
    width = -(-max(ctxs) // PAGE)
    cache = torch.randn(2, len(ctxs) * width + 1, PAGE, KVH, D, device=DEV).to(DT)
    if kv8:
        cache = cache.to(torch.float8_e4m3fn)
    bt = torch.randperm(len(ctxs) * width, device=DEV).to(torch.int32).view(len(ctxs), width)
    q = torch.randn(sum(qlens), H, D, device=DEV).to(DT)
    return cache, bt, q


def _varlen(q, cache, bt, qlens, ctxs):
    starts = torch.tensor([0] + list(itertools.accumulate(qlens)), dtype=torch.int32, device=DEV)
    seqs, firsts = varlen_query_blocks(qlens, H // KVH, D)
    ctx = torch.tensor(ctxs, dtype=torch.int32, device=DEV)
    qb = (torch.tensor(seqs, dtype=torch.int32, device=DEV), torch.tensor(firsts, dtype=torch.int32, device=DEV))
    return lambda out: varlen_attention(q, cache, bt, ctx, starts, *qb, D ** -0.5, out=out)


def _split(q, cache, bt, qlens, ctxs, n_dec):
    ctx_dec = torch.tensor(ctxs[:n_dec], dtype=torch.int32, device=DEV)
    bound = max(ctxs[:n_dec])
    rest = _varlen(q[n_dec:], cache, bt[n_dec:], qlens[n_dec:], ctxs[n_dec:])

    def run(out):
        kattn.decode_attention(q[:n_dec], cache, bt[:n_dec], ctx_dec, D ** -0.5, bound, out=out[:n_dec])
        rest(out[n_dec:])
        return out
    return run


def main(path: str | None) -> None:
    if GPU:
        from bench.common import graph_time_ms
        cases = {"256dec@1500+5x1587new": ([1500] * 256, [(1587, 1587)] * 5),
                 "256dec@1500+4x1984of2048": ([1500] * 256, [(1984, 2048)] * 4),
                 "64dec@1500+5x1600new": ([1500] * 64, [(1600, 1600)] * 5),
                 "16dec@600+1x2048new": ([600] * 16, [(2048, 2048)])}
    else:
        cases = {"small": ([40, 70, 33], [(20, 20), (17, 50)])}
    res = {}
    for (name, (dec, chunks)), kv8 in itertools.product(cases.items(), (False, True)):
        torch.manual_seed(0)
        qlens, ctxs = _layout(dec, chunks)
        cache, bt, q = _tensors(qlens, ctxs, kv8)
        one, two = _varlen(q, cache, bt, qlens, ctxs), _split(q, cache, bt, qlens, ctxs, len(dec))
        out1, out2 = torch.empty_like(q), torch.empty_like(q)
        one(out1)
        two(out2)
        diff = (out1.float() - out2.float()).abs().max().item()
        key = f"{name}_kv{'8' if kv8 else '16'}"
        res[key] = {"max_diff": diff}
        if GPU:
            for label, fn, out in (("one", one, out1), ("split", two, out2), ("one2", one, out1), ("split2", two, out2)):
                res[key][label] = graph_time_ms(lambda: [fn(out) for _ in range(8)], reps=8) * 1000 / 8
        print(key, {k: round(v, 1) if k != "max_diff" else f"{v:.1e}" for k, v in res[key].items()}, flush=True)
        assert diff < 2e-2, diff
    if path:
        json.dump(res, open(path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
