"""CPU check (session 37) of llmserve/kernels/int4_mma.py's arithmetic, before a GPU runs it: its data flow transcribed
line by line into numpy (the same reshapes, permutes, splits and joins on logical tensors; layouts only place data),
the inline PTX word conversion bit for bit (prmt / shr / lop3), a batched mma as a float32 matmul, both K loops'
group order and masks, and the program's rows (gate_out, rope pairs); compared with int4's dequantize + matmul.
    PYTHONPATH=. python bench/results/2026-12-07-s37/emulate_mma.py"""
import numpy as np
import torch

from llmserve.model.int4 import dequantize_int4, quantize_int4


def prmt(a, sel):  # prmt.b32 d, a, 0, sel: byte i of d = byte (sel >> 4 i) & 7 of {0, a}
    out = np.zeros_like(a)
    for i in range(4):
        src = (sel >> (4 * i)) & 7
        byte = (a >> (8 * src)) & 0xFF if src < 4 else np.zeros_like(a)
        out |= byte << (8 * i)
    return out


def word_asm(w):  # _WORD_ASM, on uint32
    t0, t1 = prmt(w, 0x4140), prmt(w, 0x4342)
    u0, u1 = t0 >> 4, t1 >> 4
    nib, mag = np.uint32(0x000F000F), np.uint32(0x43004300)
    return [(t & nib) | mag for t in (t0, u0, t1, u1)]  # lop3 0xEA: (a & b) | c


def bf16(v):  # _bf16: int32 pairs [...] -> float32 values of the bf16 halves, [..., 2]
    lo = ((v & 0xFFFF).astype(np.uint32) << 16).view(np.float32)
    hi = ((v >> 16).astype(np.uint32) << 16).view(np.float32)
    return np.stack([lo, hi], -1)


def pick(v, i, n):  # _pick: reshape to [..., n/2, 2], split, recurse
    if n == 1:
        return v.reshape(v.shape[:-1])
    a, b = v.reshape(*v.shape[:-1], n // 2, 2)[..., 0], v.reshape(*v.shape[:-1], n // 2, 2)[..., 1]
    return pick(a if i % 2 == 0 else b, i // 2, n // 2)


def w_operand(pa, pb):
    v = bf16(np.stack([pa, pb], -1)).transpose(0, 1, 3, 2, 4)  # join -> [B, rows, c, AB] -> bf16 [.., e] -> permute
    return v.reshape(v.shape[0], v.shape[1], 16)


def x_operand(xw, w, h):
    B = xw.shape[0]
    v = xw.reshape(B, 8, 4, 2, 4, 2).transpose(0, 1, 2, 5, 3, 4)
    v = bf16(pick(v.reshape(B, 8, 4, 2, 8), 4 * h + w, 8))  # [B, n, c, AB, e]
    return v.transpose(0, 3, 2, 4, 1).reshape(B, 16, 8)


def dot_group(words, xw, s, c, acc):
    p0, p1, p2, p3 = word_asm(words)
    part = np.zeros_like(acc)
    xsum = np.zeros_like(acc)
    ones = np.ones((acc.shape[0], acc.shape[1], 16), np.float32)
    for w in range(4):
        x0, x1 = x_operand(xw, w, 0), x_operand(xw, w, 1)
        part = w_operand(pick(p0, w, 4), pick(p2, w, 4)) @ x0 + part
        part = w_operand(pick(p1, w, 4), pick(p3, w, 4)) @ x1 + part
        xsum = ones @ x0 + xsum
        xsum = ones @ x1 + xsum
    return acc + part * s[:, :, None] + xsum * c[:, :, None]


def rows(idx, pid, N, BLOCK_N, gate_out, rope_half):
    if gate_out or rope_half > 0:
        i = pid * (BLOCK_N // 2) + idx // 2
        if rope_half > 0:
            return (i // rope_half) * (2 * rope_half) + i % rope_half + (idx % 2) * rope_half
        return i + (idx % 2) * (N // 2)
    return pid * BLOCK_N + idx


def program(pid, x32, w32, scale, minimum, M, N, K, R, S, U, stages, gate_out=False, rope_half=0):
    """One program's out^T [BLOCK_N, 8] and its rows, as _w4mma_kernel computes them."""
    B, BLOCK_N, n_groups = S * U, 16 * R, K // 128
    idx = np.arange(BLOCK_N)
    wn = np.minimum(rows(idx, pid, N, BLOCK_N, gate_out, rope_half), N - 1)
    wb, wc, ww = np.arange(B), np.arange(4), np.arange(4)
    w_rows = wn[None, :, None, None] * (K // 8) + (wc[None, None, :, None] * 4 + ww[None, None, None, :])
    xb, xn, xc, xh, xj = np.arange(B), np.arange(8), np.arange(4), np.arange(2), np.arange(8)
    x_rows = (np.minimum(xn, M - 1)[None, :, None, None, None] * (K // 2)
              + xc[None, None, :, None, None] * 8 + xh[None, None, None, :, None] * 32 + xj[None, None, None, None, :])
    sb = np.arange(B)
    s_rows = wn[None, :] * n_groups + sb[:, None]

    def scales(g):
        ok = (g + sb < n_groups)[:, None]
        s = np.where(ok, scale.reshape(-1)[np.minimum(s_rows + g, scale.size - 1)], 0.0).astype(np.float32)
        if minimum is not None:
            m = np.where(ok, minimum.reshape(-1)[np.minimum(s_rows + g, scale.size - 1)], 0.0).astype(np.float32)
            return s, m - 128.0 * s
        return s, -136.0 * s

    def fetch(g):  # the buffered loop's loads (masked W: any codes, here garbage)
        ok = (g + wb < n_groups)[:, None, None, None]
        words = np.where(ok, w32[np.minimum(w_rows + (g + wb)[:, None, None, None] * 16, w32.size - 1)],
                         np.uint32(0xDEADBEEF))
        xw = x32[x_rows + np.where(g + xb < n_groups, g + xb, 0)[:, None, None, None, None] * 64]
        return (words, xw, *scales(g))

    def copy(g):  # the staged loop's cp.async (masked: zeros)
        ok = (g + wb < n_groups)[:, None, None, None]
        words = np.where(ok, w32[np.minimum(w_rows + (g + wb)[:, None, None, None] * 16, w32.size - 1)], 0)
        okx = (g + xb < n_groups)[:, None, None, None, None] & (xn < M)[None, :, None, None, None]
        xw = np.where(okx, x32[np.minimum(x_rows + (g + xb)[:, None, None, None, None] * 64, x32.size - 1)], 0)
        return words.astype(np.uint32), xw.astype(np.uint32)

    acc = np.zeros((B, BLOCK_N, 8), np.float32)
    if stages > 0:
        ring = [copy(i * B) for i in range(stages - 1)] + [None]
        s0, c0 = scales(0)
        for g in range(0, n_groups, B):
            t = g // B
            nxt = t + stages - 1
            ring[nxt % stages] = copy(nxt * B)
            s1, c1 = scales(g + B)
            words, xw = ring[t % stages]
            acc = dot_group(words, xw, s0, c0, acc)
            s0, c0 = s1, c1
    else:
        w0 = fetch(0)
        for g in range(0, n_groups, 2 * B):
            w1 = fetch(g + B)
            acc = dot_group(*w0, acc)
            w0 = fetch(g + 2 * B)
            acc = dot_group(*w1, acc)
    return acc.sum(0), rows(idx, pid, N, BLOCK_N, gate_out, rope_half)


def emulate(x, q, M, N, K, R, S, U, stages, **kw):
    x32 = np.ascontiguousarray(x.view(torch.int16).numpy()).view(np.uint32).reshape(-1)
    w32 = np.ascontiguousarray(q["weight"].numpy()).view(np.uint32).reshape(-1)
    scale = q["weight_scale"].float().numpy()
    minimum = q["weight_min"].float().numpy() if "weight_min" in q else None
    out = np.zeros((M, N), np.float32)
    for pid in range(-(-N // (16 * R))):
        tot, rws = program(pid, x32, w32, scale, minimum, M, N, K, R, S, U, stages, **kw)
        for i, r in enumerate(rws):
            if r < N:
                out[:, r] = tot[i, :M]
    return out


def main():
    torch.manual_seed(0)
    worst = 0.0
    for N, K in ((40, 128), (72, 5 * 128), (96, 3 * 128), (256, 14 * 128)):
        for sym in (True, False):
            q = quantize_int4(torch.randn(N, K) * 0.02, 128, sym)
            ref_w = dequantize_int4(q["weight"], q["weight_scale"], q.get("weight_min"))
            for M in (1, 2, 5, 8):
                x = torch.randn(M, K).to(torch.bfloat16)
                ref = (x.float() @ ref_w.T).numpy()
                for cfg in ((1, 4, 1, 0), (2, 8, 2, 0), (1, 4, 1, 3), (2, 4, 2, 4), (1, 2, 1, 2)):
                    got = emulate(x, q, M, N, K, *cfg)
                    err = np.abs(got - ref).max() / np.abs(ref).max()
                    worst = max(worst, err)
                    assert err < 1e-4, (N, K, sym, M, cfg, err)
    print(f"plain rows: worst relative error {worst:.2e}")
    q = quantize_int4(torch.randn(64, 256) * 0.02, 128, True)
    x = torch.randn(1, 256).to(torch.bfloat16)
    ref = (x.float() @ dequantize_int4(q["weight"], q["weight_scale"], None).T).numpy()
    for kw in ({"gate_out": True}, {"rope_half": 4}):
        got = emulate(x, q, 1, 64, 256, 1, 4, 1, 0, **kw)
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4, kw
    print("gate_out / rope row orders: each output lands on its own row")


if __name__ == "__main__":
    main()
