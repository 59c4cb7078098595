"""Sections on the attention kernels: varlen prefill (timing and launch-config sweep) and paged decode (launch
shapes per case, fp8 KV cache)."""

from __future__ import annotations

import itertools
import os

import torch

from bench.common import graph_time_ms
from bench.kernel_check.report import section


def _varlen_case(B: int, L: int, config: tuple | None = None, decode_rows: int = 0, decode_ctx: int = 0,
                 kv_fp8: bool = False, fp8_convert: int = 1, fresh: int = 0, pad_to: int = 0,
                 persist: bool = False, chunk: tuple[int, int] = (0, 0), overlap: bool = True,
                 split: bool = False) -> dict:
    """B prompts of L tokens (and decode_rows sequences of one new token at decode_ctx, first in the step, as the
    engine lays out a mixed step): our varlen kernel per layer with `config`, and SDPA dense over the prompts.
    q is a view of a qkv buffer as in the engine; fresh (> 0): the prompts read their K/V from it (`new_kv`),
    loaded as `new_loads` = fresh says (1 pointers, 2 TMA). pad_to: the work list padded to that many entries of an
    empty sequence, as a prefill graph's is (one launch over the cache, as there); persist: a persistent launch
    walks the real entries only (`work_bounds`). chunk (queries, context): a prompt's next chunk after its cached
    prefix, last in the step, over the cache (the launch beside the fresh prompts', on a side stream if `overlap`).
    split: the decode rows through the decode kernel, the work list over the rest (an eager mixed step's split)."""
    from llmserve.kernels.attention import decode_attention
    from llmserve.kernels.shapes import varlen_query_blocks
    from llmserve.kernels.varlen import varlen_attention

    H, KVH, D, page = 32, 8, 128, 16
    qlens, ctxs = [1] * decode_rows + [L] * B, [decode_ctx] * decode_rows + [L] * B
    if chunk[0]:
        qlens, ctxs = qlens + [chunk[0]], ctxs + [chunk[1]]
    width = -(-max(ctxs) // page)
    cache = torch.randn(2, len(ctxs) * width + 1, page, KVH, D, device="cuda", dtype=torch.bfloat16)
    if kv_fp8:
        cache = cache.to(torch.float8_e4m3fn)
    bt_all = torch.arange(len(ctxs) * width, device="cuda", dtype=torch.int32).view(len(ctxs), width)
    n = decode_rows if split else 0  # rows the decode kernel takes; the work list covers the rest
    vq, vc, bt = qlens[n:], ctxs[n:], bt_all[n:]
    seqs, starts = varlen_query_blocks(vq, H // KVH, D, config[0] if config else 0)
    bounds = torch.tensor([0, 0, len(seqs)], dtype=torch.int32, device="cuda") if persist else None
    fresh_blocks = None
    if fresh:  # the fresh prompts' blocks first, as AttentionMetadata.add_varlen orders them
        order = sorted(range(len(seqs)), key=lambda i: vq[seqs[i]] != vc[seqs[i]])
        fresh_blocks = sum(vq[s] == vc[s] for s in seqs)
        seqs, starts = [seqs[i] for i in order], [starts[i] for i in order]
    if pad_to:  # entries past the real ones name an empty sequence (row len(vc)): no tokens, no context
        seqs, starts = seqs + [len(vc)] * (pad_to - len(seqs)), starts + [0] * (pad_to - len(starts))
        bt = torch.cat([bt, bt[:1]])
    ctx = torch.tensor(vc + [0] * bool(pad_to), dtype=torch.int32, device="cuda")
    offsets = [0] + list(itertools.accumulate(vq))
    qstart = torch.tensor(offsets + offsets[-1:] * bool(pad_to), dtype=torch.int32, device="cuda")
    qb = (torch.tensor(seqs, dtype=torch.int32, device="cuda"), torch.tensor(starts, dtype=torch.int32, device="cuda"))
    qkv = torch.randn(sum(qlens), H + 2 * KVH, D, device="cuda", dtype=torch.bfloat16)
    q, new_kv = qkv[:, :H], (qkv[n:, H:] if fresh else None)
    kw = {"new_kv": new_kv, "new_loads": fresh or 1, "fresh_blocks": fresh_blocks, "work_bounds": bounds,
          "overlap": overlap}
    dctx = torch.tensor(ctxs[:n], dtype=torch.int32, device="cuda")

    def step():
        if n:
            decode_attention(q[:n], cache, bt_all[:n], dctx, D ** -0.5, max(ctxs))
        varlen_attention(q[n:], cache, bt, ctx, qstart, *qb, D ** -0.5, config=config, fp8_convert=fp8_convert, **kw)

    ours = graph_time_ms(lambda: [step() for _ in range(32)], reps=10) * 1000 / 32
    qd = q[decode_rows:decode_rows + B * L].view(B, L, H, D).transpose(1, 2)
    kd = torch.randn(B, KVH, L, D, device="cuda", dtype=torch.bfloat16)
    sdpa = graph_time_ms(lambda: [torch.nn.functional.scaled_dot_product_attention(
        qd, kd, kd, is_causal=True, enable_gqa=True) for _ in range(32)], reps=10) * 1000 / 32
    flops = 4 * B * H * D * L * L / 2
    return {"ours_us": ours, "sdpa_us": sdpa, "ours_TFLOPs": flops / ours / 1e6, "sdpa_TFLOPs": flops / sdpa / 1e6}


@section("varlen")
def s_varlen(args):
    """Prefill attention for B prompts of L tokens (Llama-3.1-8B heads: 32 query, 8 KV, dim 128): our varlen kernel
    per layer, with the engine's query-block tiling, over a bf16 and an fp8 cache, and over the prompts' own K/V
    (what the engine runs for a prompt with no cached prefix) loaded through pointers and through TMA, against
    torch's SDPA over the same tokens laid out densely (causal, GQA); first, a prefill graph's launch (its padded
    work list, a program an entry or persistent) against an exact list."""
    res = args.report.results.setdefault("varlen", {})
    # A prefill graph's launch: 8 / 16 prompts of 128 in the 1,024 / 2,048-token buckets with max_batch_size 1,024,
    # the work list padded to the most query blocks those buckets can have (PrefillGraphs._work_rows), a program an
    # entry or persistent; and one 2,048-token prompt (entries of growing cost), exact against persistent
    for B, L, pad in ((8, 128, 1024 // 16 + 1024 + 1), (16, 128, 2048 // 16 + 1024 + 1), (1, 2048, 2048 // 16 + 2)):
        for name, p, persist in (("exact", 0, False), (f"padded{pad}", pad, False), ("persistent", pad, True)):
            r = res[f"B{B}_L{L}_kv16_{name}"] = _varlen_case(B, L, pad_to=p, persist=persist)
            args.report.say(f"varlen B={B} L={L} work list {name}: {r['ours_us']:.1f} us/layer")
            print(args.report.summary[-1], flush=True)
    args.report.save()
    for B, L in ((8, 128), (32, 128), (2, 2048), (4, 2048), (4, 1000), (1, 8192)):
        for name, kv8, fresh in (("kv16", False, 0), ("kv8", True, 0), ("fresh", True, 1), ("fresh_tma", True, 2)):
            name = f"B{B}_L{L}_{name}"
            r = res[name] = _varlen_case(B, L, kv_fp8=kv8, fp8_convert=2 if kv8 else 1, fresh=fresh)
            args.report.say(f"varlen {name}: ours {r['ours_us']:.1f} us/layer ({r['ours_TFLOPs']:.0f} TFLOP/s), "
                            f"SDPA dense {r['sdpa_us']:.1f} us ({r['sdpa_TFLOPs']:.0f})")
            print(args.report.summary[-1], flush=True)
        args.report.save()


@section("varlen_chunk")
def s_varlen_chunk(args):
    """A mixed step's prompts as 2048/128 at 256 streams has them (3 fresh prompts of 2,048 and a chunk after its
    cached prefix, fp8 cache): every block over the cache (one launch), fresh prompts over their own K/V (pointer
    or TMA loads) with the chunk's launch after theirs, and beside theirs on a side stream. us per layer."""
    res = args.report.results.setdefault("varlen_chunk", {})
    for q_len, ctx in ((256, 2048), (1024, 2048), (1792, 2048)):
        for name, fresh, overlap in (("cache", 0, False), ("fresh_serial", 1, False), ("fresh_overlap", 1, True),
                                     ("tma_serial", 2, False), ("tma_overlap", 2, True)):
            key = f"B3_L2048_chunk{q_len}of{ctx}_{name}"
            r = res[key] = _varlen_case(3, 2048, kv_fp8=True, fp8_convert=2, fresh=fresh, chunk=(q_len, ctx),
                                        overlap=overlap)
            args.report.say(f"varlen {key}: {r['ours_us']:.1f} us/layer")
            print(args.report.summary[-1], flush=True)
        args.report.save()


@section("mixed_graph")
def s_mixed_graph(args):
    """A small mixed step as decode-heavy workloads make them (D decode rows at C tokens of context beside one fresh
    prompt or chunk of P tokens, fp8 cache) in a prefill graph's bucket: one persistent launch over the padded work
    list (every row over the cache: before session 30), against one launch over the exact list, an eager step's
    split (the decode kernel for the rows, the prompt over its own K/V), and that split as a graph runs it (the
    decode kernel's fixed grid walking the D rows counted on the device; persistent launches over the padded
    list). us per layer."""
    res = args.report.results.setdefault("mixed_graph", {})
    for D, C, P in ((256, 1500, 1000), (256, 1100, 128), (64, 1000, 1000), (256, 2100, 256), (128, 1000, 1536)):
        bucket = next(b for b in (384, 512, 768, 1024, 1536, 2048) if b >= D + P)
        pad = bucket // 16 + 1024 + 1  # PrefillGraphs._work_rows with max_batch_size 1,024
        for name, kw in (("graph_persistent", {"pad_to": pad, "persist": True}), ("exact", {}),
                         ("split_fresh_tma", {"split": True, "fresh": 2}), ("graph_split", {})):
            key = f"dec{D}x{C}_prompt{P}_{name}"
            r = res[key] = _graph_split_case(D, C, P, bucket, **kw) if name.startswith("graph_split") else \
                _varlen_case(1, P, decode_rows=D, decode_ctx=C, kv_fp8=True, fp8_convert=2, **kw)
            args.report.say(f"mixed {key}: {r['ours_us']:.1f} us/layer")
            print(args.report.summary[-1], flush=True)
        args.report.save()


def _graph_split_case(D: int, C: int, P: int, bucket: int, slots: int = 1024) -> dict:
    """D decode rows at C tokens of context and a fresh prompt of P, fp8 cache, as a prefill graph of `bucket`
    tokens runs them (max_batch_size `slots`, max_model_len 4,096): the decode kernel over the D rows counted on the
    device; two persistent launches over the padded work list, bounds on the device. us per layer."""
    from llmserve.kernels.attention import decode_attention
    from llmserve.kernels.varlen import varlen_attention
    from llmserve.model.attention import fresh_first_blocks

    H, KVH, Dh, page = 32, 8, 128, 16
    qlens, ctxs = [1] * D + [P], [C] * D + [P]
    width, rows = -(-max(ctxs) // page), min(bucket, slots)
    i32 = {"dtype": torch.int32, "device": "cuda"}
    cache = torch.randn(2, len(ctxs) * width + 1, page, KVH, Dh, device="cuda").to(torch.float8_e4m3fn)
    bt = torch.zeros(max(rows, len(ctxs) + 1), width, **i32)  # the graph's rows: a table and context each
    bt[:len(ctxs)] = torch.arange(len(ctxs) * width, **i32).view(len(ctxs), width)
    seqs, firsts, fresh = fresh_first_blocks(qlens[D:], ctxs[D:], H // KVH, Dh)
    pad = bucket // 16 + slots + 1 - len(seqs)  # entries past the real ones name the empty row len(ctxs)
    work = (torch.tensor([s + D for s in seqs] + [len(ctxs)] * pad, **i32), torch.tensor(firsts + [0] * pad, **i32))
    bounds = torch.tensor([0, fresh, len(seqs)], **i32)
    ctx, count = torch.tensor(ctxs + [0] * (bt.shape[0] - len(ctxs)), **i32), torch.tensor([D], **i32)
    qstart = torch.tensor(list(itertools.accumulate([0] + qlens)) + [D + P], **i32)
    qkv = torch.randn(bucket, H + 2 * KVH, Dh, device="cuda", dtype=torch.bfloat16)

    def step():
        decode_attention(qkv[:rows, :H], cache, bt[:rows], ctx[:rows], Dh ** -0.5, 4096, rows=count)
        varlen_attention(qkv[:, :H], cache, bt, ctx, qstart, *work, Dh ** -0.5, fp8_convert=2, new_kv=qkv[:, H:],
                         new_loads=2, work_bounds=bounds)

    return {"ours_us": graph_time_ms(lambda: [step() for _ in range(32)], reps=10) * 1000 / 32}


# stages 1: the K/V loads not software-pipelined (how the kernel ran before its loops asked for stages)
VARLEN_CONFIGS = [(64, 64, 4, 1), (64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 2), (64, 128, 8, 3), (128, 64, 8, 1),
                  (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 32, 4, 3)]


@section("varlen_sweep")
def s_varlen_sweep(args):
    """The varlen kernel's launch configs (BLOCK_M, BLOCK_N, warps, stages) over prompts of 128-2,048 tokens and a
    mixed step's shape (256 decode rows at 2,048 tokens of context beside 3 prompts of 2,048): us per layer."""
    res = args.report.results.setdefault("varlen_sweep", {})
    # (B, L, decode rows, fp8 cache conversion mode or 0, fresh): fresh 1 / 2 read the prompts' own K/V through
    # pointers / TMA
    cases = [(32, 128, 0, 0, 1), (2, 2048, 0, 0, 0), (4, 2048, 0, 0, 1), (4, 2048, 0, 0, 2), (4, 1000, 0, 0, 1),
             (3, 2048, 256, 0, 0), (3, 2048, 256, 2, 0), (3, 2048, 256, 2, 1), (3, 2048, 256, 2, 2),
             (1, 8192, 0, 2, 1)]
    configs = [tuple(int(x) for x in c.split("/")) for c in os.environ["VARLEN_CONFIGS"].split(",")] \
        if os.environ.get("VARLEN_CONFIGS") else VARLEN_CONFIGS
    for cfg in configs:
        for B, L, rows, mode, fresh in cases:
            key = f"{cfg}:B{B}_L{L}_dec{rows}" + (f"_kv8m{mode}" if mode else "") + ("", "_fresh", "_tma")[fresh]
            try:
                r = res[key] = _varlen_case(B, L, cfg, rows, 2048, mode > 0, mode or 1, fresh)
            except Exception as exc:  # a config past the SM's shared memory
                res[key] = f"failed: {type(exc).__name__}"
                continue
            args.report.say(f"varlen {key}: {r['ours_us']:.1f} us ({r['ours_TFLOPs']:.0f} TFLOP/s of the prompts), "
                           f"SDPA {r['sdpa_us']:.1f}")
            print(args.report.summary[-1], flush=True)
        args.report.save()


def _ints(name: str, default: str) -> list[int]:
    return [int(x) for x in os.environ.get(name, default).split(",") if x]


@section("attn")
def s_attn(args):
    """Decode attention launch configs (partitions, BLOCK_N, warps, stages) at the graphs' launch shape (max
    context 4096), bf16 and fp8 KV: the best per case against `decode_config`. Llama-2-7B heads by default;
    ATTN_HEADS=32,8 (query, kv heads) and ATTN_CASES=256:2100:fp8,... (batch:context:kv) for other shapes;
    ATTN_BLOCKS, ATTN_WARPS, ATTN_STAGES, ATTN_PARTS (comma-separated) widen or narrow the sweep."""
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
        cur = decode_config(top, B, KVH)
        cands = {cur} | {(n, bn, 4, 2) for n in (1, 2, 4, 8, 16, 32) for bn in (32, 64) if B * KVH * n <= 8192}
        parts = {1, cur[0], *_ints("ATTN_PARTS", "")}
        cands |= {(n, bn, w, st) for n in parts for bn in _ints("ATTN_BLOCKS", "32,64,128")
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
        args.report.say(f"decode attn {kv} KV H={H}/{KVH} B={B} ctx={ctx}: best {best} {times[best]:.1f} us "
                       f"({nbytes / times[best] / 1e6:.2f} TB/s); default {key} {times[key]:.1f} us/layer "
                       f"({nbytes / times[key] / 1e6:.2f} TB/s); max diff {max(err.values()):.2e}")
        print(args.report.summary[-1], flush=True)
        del cache
        args.report.results.setdefault("attn", {}).update(res)
        args.report.save()


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
        args.report.say(f"decode attn B={B} ctx={ctx}: " + ", ".join(
            f"{k} {v['us_per_layer']:.1f} us ({v['TBps']:.2f} TB/s)" for k, v in row.items()))
    args.report.results["attn_kv"] = res

