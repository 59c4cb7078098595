# ruff: noqa: B023, E501  (each lambda runs inside its own loop iteration)
"""fp8 x fp8 -> bf16 with per-row / per-column scales: torch._scaled_mm (cuBLAS, what Fp8Linear calls) against a
Triton tile sweep on Llama-3.1-8B's linears at 128-1,024 rows. Prints us per call and the best config per shape."""
import itertools
import json
import sys

import torch
import triton
import triton.language as tl

from bench.common import graph_time_ms


@triton.jit
def _fp8_mm(a, w, sa, sb, out, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr,
            PRECISE: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    per_group = GROUP * num_n
    g = pid // per_group
    first_m = g * GROUP
    gm = min(num_m - first_m, GROUP)
    pid_m = first_m + (pid % per_group) % gm
    pid_n = (pid % per_group) // gm
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_p = a + rm[:, None] * K + rk[None, :]
    w_p = w + rn[None, :] * K + rk[:, None]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    mmask = rm[:, None] < M
    for _ in range(0, K, BK):
        x = tl.load(a_p, mask=mmask, other=0.0)
        y = tl.load(w_p)
        if PRECISE:  # the products of each BK slice summed apart, then added in fp32 (as cuBLAS does)
            acc = tl.dot(x, y, acc, max_num_imprecise_acc=BK)
        else:
            acc = tl.dot(x, y, acc)
        a_p += BK
        w_p += BK
    s_a = tl.load(sa + rm, mask=rm < M, other=0.0)
    s_b = tl.load(sb + rn)
    acc = acc * s_a[:, None] * s_b[None, :]
    tl.store(out + rm[:, None] * N + rn[None, :], acc.to(tl.bfloat16), mask=mmask)


def fp8_mm(xq, xs, w, ws, cfg):
    BM, BN, BK, stages, warps, group, precise = cfg
    M, K = xq.shape
    N = w.shape[0]
    out = torch.empty(M, N, device=xq.device, dtype=torch.bfloat16)
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    _fp8_mm[grid](xq, w, xs, ws, out, M, N, K, BM=BM, BN=BN, BK=BK, GROUP=group, PRECISE=precise, num_stages=stages, num_warps=warps)
    return out


def cublas(xq, xs, w, ws, fast=False):
    return torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=ws[None, :], out_dtype=torch.bfloat16,
                            use_fast_accum=fast)


SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
CFGS = [c for c in itertools.product((64, 128), (64, 128, 256), (128,), (3, 4, 5), (4,), (8,), (1, 0))
        if not (c[0] == 128 and c[1] == 256 and c[4] == 4)]
res = {}
for M in (48, 128, 256, 512, 1024, 8192):
    for name, (N, K) in SHAPES.items():
        torch.manual_seed(0)
        w = (torch.randn(N, K, device="cuda") * 0.5).to(torch.float8_e4m3fn)
        ws = torch.rand(N, device="cuda") * 0.01 + 0.001
        xq = (torch.randn(M, K, device="cuda") * 2).to(torch.float8_e4m3fn)
        xs = torch.rand(M, 1, device="cuda") * 0.1 + 0.01
        exact = (xq.float() * xs) @ (w.float() * ws[:, None]).t()
        ref = cublas(xq, xs, w, ws).float()
        err = {"cublas": ((ref - exact).norm() / exact.norm()).item()}
        fast_ref = cublas(xq, xs, w, ws, True).float()
        err["cublas_fast"] = ((fast_ref - exact).norm() / exact.norm()).item()
        t = {"cublas": graph_time_ms(lambda: [cublas(xq, xs, w, ws) for _ in range(10)], reps=10) * 100,
             "cublas_fast": graph_time_ms(lambda: [cublas(xq, xs, w, ws, True) for _ in range(10)], reps=10) * 100}
        diff = {}
        for cfg in CFGS if M <= 1024 else CFGS[:2]:
            key = "/".join(map(str, cfg))
            try:
                y = fp8_mm(xq, xs.view(-1), w, ws, cfg).float()
                diff[key] = ((y - ref).abs().max() / ref.abs().max()).item()
                err[key] = ((y - exact).norm() / exact.norm()).item()
                t[key] = graph_time_ms(lambda cfg=cfg: [fp8_mm(xq, xs.view(-1), w, ws, cfg) for _ in range(10)], reps=10) * 100
            except Exception as e:  # noqa: BLE001 - a config that does not fit shared memory
                t[key] = None
                diff[key] = str(e)[:80]
        ok = {k: v for k, v in t.items() if v is not None and k.endswith("/1")} or {"cublas": t["cublas"]}
        best = min(ok, key=ok.get)
        fast = {k: v for k, v in t.items() if v is not None and k.endswith("/0")} or {"cublas": t["cublas"]}
        bfast = min(fast, key=fast.get)
        tb = (N * K + M * K) / (t["cublas"] * 1e-6) / 1e12
        res[f"{name}_M{M}"] = {"us": t, "rel_diff": diff, "rel_err": err, "best": best, "best_fast": bfast}
        print(f"{name} M={M}: cublas {t['cublas']:.1f} us ({tb:.2f} TB/s, {2 * M * N * K / t['cublas'] / 1e6:.0f} TFLOPS); "
              f"cublas fast {t['cublas_fast']:.1f} us (x{t['cublas'] / t['cublas_fast']:.2f}, err {err['cublas_fast']:.1e}); "
              f"best triton {best} {ok[best]:.1f} us; x{t['cublas'] / ok[best]:.2f}; fast-acc {bfast} {fast[bfast]:.1f}; "
              f"err cublas {err['cublas']:.1e} precise {err[best]:.1e} fast {err[bfast]:.1e}", flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
