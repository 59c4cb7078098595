# ruff: noqa: B023, E402, E501, F821  (kept as run on the device; each lambda runs inside its own loop iteration)
"""Prototype: decode attention with V stored per block as [kvh, D, page] (tokens contiguous)."""
import itertools
import json
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, ".")
from bench.common import graph_time_ms
from llmserve.kernels.attention import decode_attention, decode_config


@triton.jit
def _vt_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, scale,
               stride_qb, stride_qh, stride_bt, stride_blk, stride_tok, stride_ob, stride_oh,
               G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
               PAGES: tl.constexpr, KV_FP8: tl.constexpr, STAGES: tl.constexpr, VT: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    ctx = tl.load(ctx_ptr + b)
    rows = tl.arange(0, G_PAD)
    rmask = rows < G
    heads = kvh * G + rows
    d = tl.arange(0, D)
    t = tl.arange(0, PAGE)
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=rmask[:, None], other=0.0)
    if KV_FP8:
        q = q.to(tl.float16)
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full((G_PAD,), float("-inf"), tl.float32)
    l_i = tl.zeros((G_PAD,), tl.float32)
    acc = tl.zeros((G_PAD, D), tl.float32)
    TILE: tl.constexpr = PAGE * PAGES
    for n0 in tl.range(0, ctx, TILE, num_stages=STAGES):
        pg = n0 // PAGE
        blk = tl.load(bt_ptr + b * stride_bt + pg).to(tl.int64)
        toks = n0 + t
        tmask = toks < ctx
        kb = k_ptr + blk * stride_blk + kvh * D
        k = tl.load(kb + t[:, None] * stride_tok + d[None, :]).to(q.dtype)
        if VT:
            vt = tl.trans(tl.load(v_ptr + blk * stride_blk + kvh * D * PAGE + d[:, None] * PAGE + t[None, :]).to(q.dtype))
        else:
            vt = tl.load(v_ptr + blk * stride_blk + kvh * D + t[:, None] * stride_tok + d[None, :]).to(q.dtype)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where(tmask[None, :], s, float("-inf"))
        if PAGES == 2:
            blk2 = tl.load(bt_ptr + b * stride_bt + pg + 1, mask=n0 + PAGE < ctx, other=0).to(tl.int64)
            toks2 = n0 + PAGE + t
            tmask2 = toks2 < ctx
            k2 = tl.load(k_ptr + blk2 * stride_blk + kvh * D + t[:, None] * stride_tok + d[None, :]).to(q.dtype)
            if VT:
                vt2 = tl.trans(tl.load(v_ptr + blk2 * stride_blk + kvh * D * PAGE + d[:, None] * PAGE + t[None, :]).to(q.dtype))
            else:
                vt2 = tl.load(v_ptr + blk2 * stride_blk + kvh * D + t[:, None] * stride_tok + d[None, :]).to(q.dtype)
            s2 = tl.dot(q, tl.trans(k2)) * qk_scale
            s2 = tl.where(tmask2[None, :], s2, float("-inf"))
            m_new = tl.maximum(m_i, tl.maximum(tl.max(s, 1), tl.max(s2, 1)))
            p = tl.math.exp2(s - m_new[:, None])
            p2 = tl.math.exp2(s2 - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1) + tl.sum(p2, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), vt) + tl.dot(p2.to(q.dtype), vt2)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), vt)
        m_i = m_new
    o = acc / l_i[:, None]
    tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :], o.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None])


def vt_attention(q, k, vt, bt, ctxs, scale, pages, warps, stages, VT=1):
    B, H, D = q.shape
    _, page, KVH, _ = k.shape
    out = torch.empty_like(q)
    ck = _vt_kernel[(B, KVH)](q, k, vt, bt, ctxs, out, scale, q.stride(0), q.stride(1), bt.stride(0), k.stride(0),
                         k.stride(1), out.stride(0), out.stride(1), G=H // KVH, G_PAD=max(16, H // KVH), D=D,
                         PAGE=page, PAGES=pages, KV_FP8=int(k.dtype == torch.float8_e4m3fn), STAGES=stages, VT=VT,
                         num_warps=warps, num_stages=stages)
    if os.environ.get("PTX_STATS"):
        ptx = ck.asm["ptx"]
        print("   ptx:", {k: ptx.count(k) for k in ("ld.shared.b8", "ld.shared.u8", "ldmatrix", "cp.async", "ld.global",
                                                  "cvt.rn.f16x2.e4m3x2", "mma.sync")}, "regs", ck.n_regs, flush=True)
    return out


def torch_ref(q, cache, bt, ctx):
    """Decode attention over a cache with V stored like K (every sequence `ctx` tokens)."""
    B, H, D = q.shape
    nb = -(-ctx // cache.shape[2])
    keys = cache[0][bt[:, :nb].long()].flatten(1, 2)[:, :ctx].transpose(1, 2).to(q.dtype)
    vals = cache[1][bt[:, :nb].long()].flatten(1, 2)[:, :ctx].transpose(1, 2).to(q.dtype)
    out = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], keys, vals, scale=D ** -0.5, enable_gqa=True)
    return out[:, :, 0].float()


def main():
    H, KVH, D, page, top = 32, 8, 128, 16, 4096
    res = {}
    for B, ctx, kv in [(256, 2100, "fp8"), (1024, 600, "fp8"), (256, 2100, "bf16"), (1024, 600, "bf16"),
                       (64, 2100, "fp8"), (64, 2100, "bf16")]:
        bp = -(-ctx // page)
        nb = B * bp + 1
        dtype = torch.float8_e4m3fn if kv == "fp8" else torch.bfloat16
        cache = torch.randn(2, nb, page, KVH, D, device="cuda", dtype=torch.bfloat16).to(dtype)
        vt = cache[1].permute(0, 2, 3, 1).contiguous()  # [nb, KVH, D, page]
        bt = torch.randperm(nb - 1, device="cuda")[:B * bp].view(B, bp).to(torch.int32)
        bt = torch.cat([bt, torch.zeros(B, top // page - bp, dtype=torch.int32, device="cuda")], 1)
        ctxs = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
        q = torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16)
        nbytes = 2 * B * ctx * KVH * D * cache.element_size()
        ref = torch_ref(q, cache, bt, ctx)
        t_cur = graph_time_ms(lambda: [decode_attention(q, cache, bt, ctxs, D ** -0.5, top) for _ in range(32)],
                              reps=10) * 1000 / 32
        row = {"current": t_cur, "current_cfg": list(decode_config(top, B, KVH, kv == "fp8"))}
        print(f"{B}x{ctx} {kv}: current {t_cur:.1f} us ({nbytes / t_cur / 1e6:.2f} TB/s)", flush=True)
        for VT, pages, warps, stages in itertools.product((1, 0), (2,), (1, 2), (2, 3)):
            name = f"vt{VT}p{pages}w{warps}s{stages}"
            vv = vt if VT else cache[1]
            try:
                out = vt_attention(q, cache[0], vv, bt, ctxs, D ** -0.5, pages, warps, stages, VT)
                err = (out.float() - ref).abs().max().item()
                t = graph_time_ms(lambda: [vt_attention(q, cache[0], vv, bt, ctxs, D ** -0.5, pages, warps, stages, VT)
                                           for _ in range(32)], reps=10) * 1000 / 32
            except Exception as exc:
                print("skip", name, str(exc)[:200], flush=True)
                continue
            row[name] = t
            print(f"  vt {name}: {t:.1f} us ({nbytes / t / 1e6:.2f} TB/s) err {err:.2e}", flush=True)
        res[f"{B}x{ctx}_{kv}"] = row
        del cache, vt
    out = os.environ.get("OUT", "/tmp")
    json.dump(res, open(f"{out}/vt_proto.json", "w"), indent=1)


if __name__ == "__main__":
    main()
