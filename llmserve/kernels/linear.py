"""`y = x @ (W * scale)^T` for weights stored as bf16/fp16, int8 or fp8 (e4m3), in Triton.

Decode reads every weight once per step, so at small M the whole game is memory bandwidth.
- `gemv` (M = 1, batch-1 decode; llmserve/kernels/gemv.py): CUDA-core FMAs, which also fold in the launches
  around it (the MLP's gate, the residual add and RMSNorm).
- `wmm` (M > 1): tensor cores, with W as the wide operand (`W_tile [BN, BK] @ x_tile^T [BK, BM]`, BM >= 16),
  int8/fp8 converted to the activation dtype before the product. The model uses it for 16-bit weights up to
  M = 16 (cuBLAS above), for fp8 up to M = 32 (e4m3 converted by `convert.e4m3_to_bf16`; torch._scaled_mm with
  per-token activation scales above) and for int8 at every M.
- `wmm_fp8`: `wmm`'s kernel on e4m3 rows (per-token scales) and e4m3 weights, nothing converted (Hopper's e4m3
  wgmma from 64-row weight tiles); the model's path for fp8 at 2-32 rows only when `SKINNY_MAX_M["fp8"]` says.
- `quant_fp8_per_token`: dynamic per-token e4m3 activation scales for torch._scaled_mm and `wmm_fp8`.
Block shapes come from the sweeps in bench/kernel_check (docs/performance.md).
`pdl=True` on the wrappers: programmatic dependent launch (see llmserve.kernels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve.kernels import NUM_SMS, launch_args
from llmserve.kernels.convert import e4m3_to_bf16, ptx_converts
from llmserve.kernels.gemv import GEMV_W_KIND, RopeCache, RowNorm, gemv, gemv_config, program_rows, silu_mul_pairs  # noqa: F401
from llmserve.kernels.pdl import pdl_prologue


@triton.jit
def _wmm_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, xs_ptr, M, N, K,
                stride_xm, stride_wn, stride_om,
                HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
                EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, FP8_ASM: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
                X_FP8: tl.constexpr = False, FAST: tl.constexpr = False, GATE_OUT: tl.constexpr = False):
    pdl_prologue(PDL)
    pid_m = tl.program_id(0)  # M fastest: neighbouring programs share the W tile (large M) in L2
    pid_n = tl.program_id(1)
    offs_n = program_rows(pid_n, BLOCK_N, N // 2, GATE_OUT, 0)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            if EVEN_N:
                w = tl.load(w_ptrs)
            else:
                w = tl.load(w_ptrs, mask=n_mask[:, None], other=0.0)
            x = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
            if GATED:
                u = tl.load(x_ptrs + K, mask=m_mask[:, None], other=0.0)
        else:
            k_mask = (k0 + offs_k) < K
            w = tl.load(w_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            x = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            if GATED:
                u = tl.load(x_ptrs + K, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        if GATED:
            gf = x.to(tl.float32)
            x = (gf / (1.0 + tl.exp(-gf))).to(x.dtype)
            x = (x.to(tl.float32) * u.to(tl.float32)).to(u.dtype)
        if X_FP8:  # e4m3 rows and weights straight into the tensor cores (`wmm_fp8`)
            if FAST:
                acc = tl.dot(w, tl.trans(x), acc)
            else:  # each BLOCK_K slice summed apart, then added in fp32 (as fp8_mm and cuBLAS by default)
                acc = tl.dot(w, tl.trans(x), acc, max_num_imprecise_acc=BLOCK_K)
        else:
            if FP8_ASM:
                w = e4m3_to_bf16(w)
            acc = tl.dot(w.to(x.dtype), tl.trans(x), acc)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if HAS_SCALE:
        acc = acc * tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)[:, None]
    if X_FP8:
        acc = acc * tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
    if GATE_OUT:  # [gate row, up row] pairs -> silu(gate) * up, [BLOCK_N / 2, BLOCK_M]
        g, u = tl.split(tl.permute(tl.reshape(acc, (BLOCK_N // 2, 2, BLOCK_M)), (0, 2, 1)))
        offs_h = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        out_ptrs = out_ptr + offs_m[None, :].to(tl.int64) * stride_om + offs_h[:, None]
        tl.store(out_ptrs, silu_mul_pairs(g, u, out_ptr.dtype.element_ty),
                 mask=m_mask[None, :] & (offs_h < N // 2)[:, None])
    else:
        out_ptrs = out_ptr + offs_m[None, :].to(tl.int64) * stride_om + offs_n[:, None]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_mask[None, :] & n_mask[:, None])


def _storage(w: torch.Tensor) -> str:
    return "16bit" if w.element_size() == 2 else "int8" if w.dtype == torch.int8 else "fp8"


def triton_max_m(w: torch.Tensor) -> int:
    """Largest M whose product goes through these kernels for 16-bit and fp8 weights (int8: every M)."""
    return SKINNY_MAX_M.get(_storage(w), 1 << 30)


# (BLOCK_N, BLOCK_K, num_warps, num_stages) per M bucket; overridable (bench/kernel_check sweeps them).
CONFIGS: dict[str, dict[int, tuple[int, int, int, int]]] = {
    "16bit": {16: (64, 256, 4, 4), 32: (64, 128, 4, 4), 64: (64, 128, 4, 4), 128: (128, 64, 8, 3)},
    "8bit": {16: (32, 256, 4, 4), 32: (32, 256, 4, 4), 64: (64, 128, 4, 4), 128: (128, 128, 8, 3)},
    # `wmm_fp8`: 64 weight rows a tile for Hopper's e4m3 wgmma (bench/kernel_check --sections fp8rows)
    "fp8rows": {16: (64, 256, 4, 4), 32: (64, 256, 4, 4)},
}
# The gate's SiLU inside the tensor-core kernel's x load costs more than a separate launch (docs/performance.md).
FUSE_GATE_IN_MM = False
# Largest M that goes through `wmm` for 16-bit weights (cuBLAS above) and for fp8: 1, so fp8 steps of 2+ rows take
# their rows quantized per token, e4m3 x e4m3, through `wmm_fp8` up to WMM_FP8_MAX_M (0.65 ms faster a step at 8
# rows than the weights converted in `wmm`, H200; docs/performance.md, twenty-fifth session).
SKINNY_MAX_M = {"16bit": 16, "fp8": 1}
# The MLP's silu(gate) * up in gate_up's epilogue where gate_up takes these kernels (`gate_out`), instead of in
# down_proj's x load (one row) or a silu_mul launch (2+ rows); bench.kernel_check --sections switches times them.
GATE_OUT = True
# At one row, the residual add and RMSNorm in the 8-bit GEMVs around them (`gemv`'s add_to and norm): no norm
# launches; the rotary embedding and cache write in qkv's (`gemv`'s rope): no rope_and_cache launch.
FOLD_NORM = True
ROPE_IN_GEMV = True
WMM_FP8_MAX_M = 32


def _config(M: int, N: int, w_dtype: torch.dtype, table: str | None = None) -> tuple[int, int, int, int, int]:
    kind = "8bit" if w_dtype.itemsize == 1 else "16bit"
    bm = 16 if M <= 16 else 32 if M <= 32 else 64 if M <= 64 else 128
    bn, bk, warps, stages = CONFIGS[table or kind].get(bm) or CONFIGS[kind][bm]
    # Small N (a 135M model's 576 rows): keep a quarter of the SMs busy; not more, which was slower (mm16).
    while bn > 16 and triton.cdiv(N, bn) * triton.cdiv(M, bm) < NUM_SMS // 4:
        bn //= 2
    return bm, bn, bk, warps, stages


def wmm(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
        gated: bool = False, config: tuple[int, int, int, int, int] | None = None, pdl: bool = False,
        gate_out: bool = False, norm: RowNorm | None = None, add_to: torch.Tensor | None = None,
        rope: RopeCache | None = None) -> torch.Tensor:
    """x: [M, K] (or [M, 2K] with gated), w: [N, K] (bf16/fp16/int8/fp8), scale: [N] float32. Returns [M, N];
    with `gate_out` (w: the MLP's [gate | up] rows) silu(gate) * up in the epilogue, [M, N/2]. `norm`, `add_to`,
    `rope`: one row only, see `gemv`."""
    M = x.shape[0]
    N, K = w.shape
    assert x.shape[1] == (2 * K if gated else K), (x.shape, w.shape, gated)
    assert not gate_out or N % 2 == 0
    if M == 1 and config is None:
        return gemv(x, w, scale, bias, gated, pdl=pdl, gate_out=gate_out, norm=norm, add_to=add_to, rope=rope)
    assert norm is None and add_to is None and rope is None, "only the one-row GEMV folds these in"
    if gated and not FUSE_GATE_IN_MM:
        from llmserve.kernels.fused import silu_mul

        x, gated = silu_mul(x, pdl=pdl), False
    assert x.stride(1) == 1 and w.stride(1) == 1
    out = torch.empty(M, N // 2 if gate_out else N, dtype=x.dtype, device=x.device)
    if M == 0:
        return out
    bm, bn, bk, warps, stages = config or _config(M, N, w.dtype)
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    asm = w.dtype == torch.float8_e4m3fn and ptx_converts(x)  # e4m3 weights through `e4m3_to_bf16`
    pdl = pdl and not asm  # launched early (PDL), the fp8 kernel ran slower at batch 8 (docs/performance.md)
    _wmm_kernel[grid](x, w, scale if scale is not None else w, bias if bias is not None else w, out, w, M, N, K,
                      x.stride(0), w.stride(0), out.stride(0),
                      HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, GATED=gated,
                      EVEN_K=K % bk == 0, EVEN_N=N % bn == 0, FP8_ASM=asm,
                      BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages, GATE_OUT=gate_out,
                      **launch_args(pdl))
    return out


def wmm_fp8(xq: torch.Tensor, xs: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, out_dtype: torch.dtype,
            bias: torch.Tensor | None = None, fast: bool = False, config: tuple[int, int, int, int, int] | None = None,
            pdl: bool = False) -> torch.Tensor:
    """xq [M, K] e4m3 with a scale a row xs [M, 1] float32 (`quant_fp8_per_token`), w [N, K] e4m3 with ws [N]
    -> [M, N] out_dtype: `wmm`'s tiles (W the wide operand) with nothing converted, what fp8_mm computes for
    33-64 rows with 16-row tiles of x instead of 64. `fast`: the tensor cores' own accumulation over K."""
    M, K = xq.shape
    N = w.shape[0]
    assert w.shape[1] == K and xq.stride(1) == 1 and w.stride(1) == 1 and xs.numel() == M
    out = torch.empty(M, N, dtype=out_dtype, device=xq.device)
    if M == 0:
        return out
    bm, bn, bk, warps, stages = config or _config(M, N, w.dtype, "fp8rows")
    _wmm_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn))](
        xq, w, ws, bias if bias is not None else w, out, xs, M, N, K, xq.stride(0), w.stride(0), out.stride(0),
        HAS_SCALE=True, HAS_BIAS=bias is not None, GATED=False, EVEN_K=K % bk == 0, EVEN_N=N % bn == 0,
        FP8_ASM=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages, X_FP8=True,
        FAST=fast, **launch_args(pdl))
    return out


@triton.jit
def _quant_fp8_kernel(x_ptr, q_ptr, s_ptr, a_ptr, stride_x, stride_q, K, BLOCK: tl.constexpr, HAS_AMAX: tl.constexpr,
                      PDL: tl.constexpr):
    pdl_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    if HAS_AMAX:  # the whole row's, given (a row-parallel rank holds part of the row)
        row_max = tl.load(a_ptr + row)
    else:
        amax = tl.zeros((BLOCK,), tl.float32)
        for k0 in range(0, K, BLOCK):
            cols = k0 + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        row_max = tl.max(amax, 0)
    scale = tl.maximum(row_max, 1e-12) / 448.0
    for k0 in range(0, K, BLOCK):
        cols = k0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
        q = tl.clamp(x / scale, -448.0, 448.0)
        tl.store(q_ptr + row * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=cols < K)
    tl.store(s_ptr + row, scale)


def quant_fp8_per_token(x: torch.Tensor, pdl: bool = False, amax: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token e4m3 quantization: returns (x_fp8 [M, K], scale [M, 1] float32), x ~ x_fp8 * scale.
    amax: each row's absolute maximum (float32 [M, 1]) to scale by instead of x's own (a row-parallel rank's x
    is part of the row; the max over the ranks is the whole row's, exactly)."""
    M, K = x.shape
    q = torch.empty(M, K, dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty(M, 1, dtype=torch.float32, device=x.device)
    if M:
        a = amax.contiguous() if amax is not None else s
        _quant_fp8_kernel[(M,)](x, q, s, a, x.stride(0), q.stride(0), K, BLOCK=1024, HAS_AMAX=amax is not None,
                                num_warps=4, **launch_args(pdl))
    return q, s
