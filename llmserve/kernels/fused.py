"""Fused elementwise kernels: residual add + RMSNorm, rotary embedding + KV-cache write, SiLU-and-multiply.

Each replaces a chain of small torch ops (an RMSNorm alone is seven kernels in eager torch) with one
launch; at batch 1 a decode step is ~300 launches, so launch count is most of what is not weight reading.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmserve.kernels import launch_args
from llmserve.kernels.pdl import pdl_prologue


@triton.jit
def _rmsnorm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, stride_x, stride_res, stride_out, N, eps,
                    HAS_RES: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(r.dtype)  # rounded like the eager add
        tl.store(res_ptr + row * stride_res + cols, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / N
    y = (xf * tl.rsqrt(var + eps)).to(out_ptr.dtype.element_ty)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * stride_out + cols, (y.to(tl.float32) * w.to(tl.float32)).to(out_ptr.dtype.element_ty),
             mask=mask)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
            pdl: bool = False) -> torch.Tensor:
    """Returns norm(x) (or, with `residual`, norm(x + residual) and writes x + residual into `residual`).
    `pdl`: programmatic dependent launch (here and in the other wrappers; see llmserve.kernels)."""
    T, N = x.shape
    out = torch.empty_like(x)
    if T == 0:
        return out
    res = residual if residual is not None else x
    _rmsnorm_kernel[(T,)](x, res, weight, out, x.stride(0), res.stride(0), out.stride(0), N, eps,
                          HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(N), num_warps=4,
                          **launch_args(pdl))
    return out


@triton.jit
def _rope_cache_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, slot_ptr, k_cache_ptr, v_cache_ptr,
                       stride_t, stride_cos, stride_slot,
                       NH: tl.constexpr, NKV: tl.constexpr, HALF: tl.constexpr,
                       BLOCK_H: tl.constexpr, BLOCK_KV: tl.constexpr, K_IN_PLACE: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    d = tl.arange(0, HALF)
    c = tl.load(cos_ptr + pos * stride_cos + d)[None, :]
    s = tl.load(sin_ptr + pos * stride_cos + d)[None, :]
    D: tl.constexpr = 2 * HALF
    base = qkv_ptr + t * stride_t
    # q heads: rotated in place (attention reads them from the qkv buffer)
    h = tl.arange(0, BLOCK_H)[:, None]
    hm = h < NH
    p = base + h * D + d[None, :]
    x1 = tl.load(p, mask=hm, other=0.0).to(tl.float32)
    x2 = tl.load(p + HALF, mask=hm, other=0.0).to(tl.float32)
    tl.store(p, (x1 * c - x2 * s).to(qkv_ptr.dtype.element_ty), mask=hm)
    tl.store(p + HALF, (x2 * c + x1 * s).to(qkv_ptr.dtype.element_ty), mask=hm)
    # k heads: rotated into the cache slot; v heads: copied
    g = tl.arange(0, BLOCK_KV)[:, None]
    km = g < NKV
    gm = km & ((g * 0 + slot) >= 0)  # the slot test as a tensor: Triton's interpreter rejects a scalar mask
    p = base + NH * D + g * D + d[None, :]
    k1 = tl.load(p, mask=km, other=0.0).to(tl.float32)
    k2 = tl.load(p + HALF, mask=km, other=0.0).to(tl.float32)
    kc = k_cache_ptr + slot * stride_slot + g * D + d[None, :]
    r1, r2 = k1 * c - k2 * s, k2 * c + k1 * s
    tl.store(kc, r1.to(k_cache_ptr.dtype.element_ty), mask=gm)
    tl.store(kc + HALF, r2.to(k_cache_ptr.dtype.element_ty), mask=gm)
    if K_IN_PLACE:  # rotated k also in the qkv buffer, for attention over a fresh prompt's own keys
        tl.store(p, r1.to(qkv_ptr.dtype.element_ty), mask=km)
        tl.store(p + HALF, r2.to(qkv_ptr.dtype.element_ty), mask=km)
    p = base + (NH + NKV) * D + g * D + d[None, :]
    vc = v_cache_ptr + slot * stride_slot + g * D + d[None, :]
    tl.store(vc, tl.load(p, mask=gm, other=0.0).to(v_cache_ptr.dtype.element_ty), mask=gm)
    tl.store(vc + HALF, tl.load(p + HALF, mask=gm, other=0.0).to(v_cache_ptr.dtype.element_ty), mask=gm)


def rope_and_cache(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   slot_mapping: torch.Tensor, kv_cache: torch.Tensor, num_heads: int, num_kv_heads: int,
                   head_dim: int, pdl: bool = False, k_in_place: bool = False) -> None:
    """qkv: [T, (H + 2 KVH) * D]; rotates q in place, writes rotated k and v to `kv_cache` [2, blocks, bs, KVH, D]
    at `slot_mapping` (slots < 0 are skipped). cos/sin: [max_pos, D/2] float32. k_in_place: rotates k in the qkv
    buffer too (every row, whatever its slot)."""
    T = qkv.shape[0]
    if T == 0:
        return
    assert qkv.stride(1) == 1 and kv_cache.is_contiguous()
    stride_slot = num_kv_heads * head_dim
    _rope_cache_kernel[(T,)](qkv, positions, cos, sin, slot_mapping, kv_cache[0], kv_cache[1],
                             qkv.stride(0), cos.stride(0), stride_slot,
                             NH=num_heads, NKV=num_kv_heads, HALF=head_dim // 2,
                             BLOCK_H=triton.next_power_of_2(num_heads), BLOCK_KV=triton.next_power_of_2(num_kv_heads),
                             K_IN_PLACE=k_in_place, num_warps=4, **launch_args(pdl))


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, N, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    g = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    u = tl.load(x_ptr + row * stride_x + N + cols, mask=mask, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)  # rounded like eager F.silu
    tl.store(out_ptr + row * stride_out + cols, (act.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=mask)


def silu_mul(x: torch.Tensor, pdl: bool = False) -> torch.Tensor:
    """x: [T, 2N] = [gate | up] -> silu(gate) * up, [T, N]."""
    T, N2 = x.shape
    N = N2 // 2
    out = torch.empty(T, N, dtype=x.dtype, device=x.device)
    if T == 0:
        return out
    BLOCK = 1024
    _silu_mul_kernel[(T, triton.cdiv(N, BLOCK))](x, out, x.stride(0), out.stride(0), N, BLOCK=BLOCK, num_warps=4,
                                                 **launch_args(pdl))
    return out


# -- the same with the per-token e4m3 quantization of the fp8 linears fused in -------------------------------------
# Each returns what quant_fp8_per_token (kernels/linear.py) returns for the 16-bit output of the unfused kernel,
# bit for bit: the row's values are rounded to 16 bits exactly as the unfused kernel stores them, then scaled by
# the row's amax / 448 with the same float32 operations. One program holds a whole row, so the 16-bit row never
# goes through memory.
FP8_MAX = 448.0


@triton.jit
def _store_fp8_row(v, mask, q_ptr, s_ptr, row, stride_q, cols):
    """v: a row's 16-bit-rounded values in float32 -> e4m3 at q_ptr[row], its scale at s_ptr[row]."""
    scale = tl.maximum(tl.max(tl.where(mask, tl.abs(v), 0.0), 0), 1e-12) / 448.0
    q = tl.clamp(v / scale, -448.0, 448.0)
    tl.store(q_ptr + row * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + row, scale)


@triton.jit
def _rmsnorm_fp8_kernel(x_ptr, res_ptr, w_ptr, q_ptr, s_ptr, stride_x, stride_res, stride_q, N, eps,
                        HAS_RES: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(r.dtype)
        tl.store(res_ptr + row * stride_res + cols, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / N
    y = (xf * tl.rsqrt(var + eps)).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    v = (y.to(tl.float32) * w.to(tl.float32)).to(x.dtype).to(tl.float32)
    _store_fp8_row(v, mask, q_ptr, s_ptr, row, stride_q, cols)


def _fp8_out(T: int, N: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty(T, N, dtype=torch.float8_e4m3fn, device=device),
            torch.empty(T, 1, dtype=torch.float32, device=device))


def _row_warps(block: int) -> int:
    return 4 if block <= 4096 else 8 if block <= 8192 else 16


def rmsnorm_quant_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
                      pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """quant_fp8_per_token(rmsnorm(x, weight, eps, residual)) in one launch (`residual` updated alike)."""
    T, N = x.shape
    q, s = _fp8_out(T, N, x.device)
    if T == 0:
        return q, s
    res = residual if residual is not None else x
    block = triton.next_power_of_2(N)
    _rmsnorm_fp8_kernel[(T,)](x, res, weight, q, s, x.stride(0), res.stride(0), q.stride(0), N, eps,
                              # rmsnorm's warps: the row's sum of squares then adds up in the same order
                              HAS_RES=residual is not None, BLOCK=block, num_warps=4, **launch_args(pdl))
    return q, s


@triton.jit
def _silu_mul_fp8_kernel(x_ptr, q_ptr, s_ptr, stride_x, stride_q, N, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    g = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    u = tl.load(x_ptr + row * stride_x + N + cols, mask=mask, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)
    v = (act.to(tl.float32) * u.to(tl.float32)).to(g.dtype).to(tl.float32)
    _store_fp8_row(v, mask, q_ptr, s_ptr, row, stride_q, cols)


def silu_mul_quant_fp8(x: torch.Tensor, pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """quant_fp8_per_token(silu_mul(x)) in one launch: x [T, 2N] = [gate | up] -> (e4m3 [T, N], scale [T, 1])."""
    T, N2 = x.shape
    N = N2 // 2
    q, s = _fp8_out(T, N, x.device)
    if T == 0:
        return q, s
    block = triton.next_power_of_2(N)
    _silu_mul_fp8_kernel[(T,)](x, q, s, x.stride(0), q.stride(0), N, BLOCK=block, num_warps=_row_warps(block),
                               **launch_args(pdl))
    return q, s
