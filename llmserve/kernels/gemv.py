"""`y = x @ (W * scale)^T` for one row of x (batch-1 decode), W stored as bf16/fp16, int8 or fp8 (e4m3), in Triton.

CUDA-core FMAs over [BLOCK_N, BLOCK_K] weight tiles, int8/fp8 converted in registers (int8 through a float bit
trick, no I2F), the per-output-channel scale applied once at the end. Faster than cuBLAS at M = 1 on Llama-2-7B's
weights (docs/performance.md, "Measurements behind the code"). What it can take over from the launches around it:
- `gated`: the MLP's silu(gate) * up computed while loading x (x = [gate | up]);
- `gate_out`: the same in the epilogue of the [gate | up] product instead (each program pairs gate and up rows);
- `add_to`: the residual add and the next RMSNorm's sum of squares in the epilogue (o_proj, down_proj), and
  `norm`: that RMSNorm folded into the next product (qkv, gate_up): x times the norm's weight in the loop, the
  row's 1/rms on each output. At batch 1 the two RMSNorm launches a layer go away.
`pdl=True`: programmatic dependent launch (see llmserve.kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llmserve.kernels import launch_args
from llmserve.kernels.pdl import pdl_launch_next, pdl_prologue


@triton.jit
def program_rows(pid, BLOCK_N: tl.constexpr, HALF_N, GATE_OUT: tl.constexpr, ROPE_HALF: tl.constexpr):
    """The weight rows a program computes: BLOCK_N in a run; with GATE_OUT, BLOCK_N / 2 gate rows each followed by
    its up row (HALF_N further); with ROPE_HALF, each of a head's first ROPE_HALF rows followed by its rotary
    partner (ROPE_HALF further). The epilogue then holds both rows of each pair."""
    if GATE_OUT or ROPE_HALF > 0:
        i = pid * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        if ROPE_HALF > 0:
            a = (i // ROPE_HALF) * (2 * ROPE_HALF) + i % ROPE_HALF
            return tl.reshape(tl.join(a, a + ROPE_HALF), (BLOCK_N,))
        return tl.reshape(tl.join(i, i + HALF_N), (BLOCK_N,))
    return pid * BLOCK_N + tl.arange(0, BLOCK_N)


@triton.jit
def pair_index(pid, BLOCK_N: tl.constexpr, half=None):
    """The index of each pair of this program's rows (`program_rows`), unless the caller made it (`half`)."""
    if half is None:
        half = pid * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    return half


@triton.jit
def silu_mul_pairs(g, u, dtype: tl.constexpr):
    """silu(g) * u of float32 outputs, each rounded to `dtype` as gate_up's stored output and silu_mul round it."""
    gf = g.to(dtype).to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(dtype)
    return (act.to(tl.float32) * u.to(dtype).to(tl.float32)).to(dtype)


@triton.jit
def store_gate_out(y, pid, out_ptr, HALF_N, BLOCK_N: tl.constexpr, half=None):
    """y [BLOCK_N] of gate and up rows in turn (`program_rows`), stored as silu(gate) * up [BLOCK_N / 2]. `half`:
    the pairs' indices (`pair_index`; a Gluon caller's, in the layout its split of y gives)."""
    g, u = tl.split(tl.reshape(y, (BLOCK_N // 2, 2)))
    offs_h = pair_index(pid, BLOCK_N, half)
    tl.store(out_ptr + offs_h, silu_mul_pairs(g, u, out_ptr.dtype.element_ty), mask=offs_h < HALF_N)


@triton.jit
def _to_f32(w, W_KIND: tl.constexpr):
    if W_KIND == 1:  # int8 via the float trick: bits(1.5 * 2**23) + v is the float 1.5 * 2**23 + v (no I2F)
        return (w.to(tl.int32) + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0
    elif W_KIND == 2:  # e4m3 bits moved into a float32 (sign, then exponent+mantissa); 2**120 goes into the scale
        b = w.to(tl.uint8, bitcast=True).to(tl.uint32)
        return (((b & 0x80) << 24) | ((b & 0x7F) << 20)).to(tl.float32, bitcast=True)
    else:
        return w.to(tl.float32)


@triton.jit
def add_residual(y, r, res_ptr, sumsq_ptr, pid, offs_n, n_mask, nw_ptr=None, hw_ptr=None,
                 WEIGHTED: tl.constexpr = False):
    """residual[n] (r, loaded) += y[n], rounded as the RMSNorm kernel rounds its add; this program's sum of squares.
    WEIGHTED: also the new row times the next RMSNorm's weight (nw_ptr), rounded, at hw_ptr: the next product's x
    when it scales its outputs by 1 / rms instead of multiplying x by the weight in its loop (int4_pairs.py)."""
    h = (y.to(r.dtype).to(tl.float32) + r.to(tl.float32)).to(r.dtype)
    tl.store(res_ptr + offs_n, h, mask=n_mask)
    hf = tl.where(n_mask, h.to(tl.float32), 0.0)
    tl.store(sumsq_ptr + pid, tl.sum(hf * hf, axis=0))
    if WEIGHTED:
        nw = tl.load(nw_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(hw_ptr + offs_n, (hf * nw).to(r.dtype), mask=n_mask)


@triton.jit
def inv_rms(part, K, eps):
    """1 / rms of a row from its programs' sums of squares (`add_residual`)."""
    return tl.rsqrt(tl.sum(part, axis=0) / K + eps)


@triton.jit
def rope_store(y, pid, out_ptr, c, s, slot, kc_ptr, vc_ptr, stride_slot,
               NH: tl.constexpr, NKV: tl.constexpr, HALF: tl.constexpr, BLOCK_N: tl.constexpr, half=None):
    """qkv's outputs in rotary pairs (`program_rows`; c, s: the token's cos and sin of each pair, slot: its cache
    slot): q rotated into the qkv row, k rotated and v as it is into the row and into the cache slot (none when the slot
    is < 0): fused.rope_and_cache on the same 16-bit values."""
    dt = out_ptr.dtype.element_ty
    x1, x2 = tl.split(tl.reshape(y.to(dt).to(tl.float32), (BLOCK_N // 2, 2)))
    i = pair_index(pid, BLOCK_N, half)
    head, j = i // HALF, i % HALF
    a = head * (2 * HALF) + j
    rotated = head < NH + NKV
    r1 = tl.where(rotated, x1 * c - x2 * s, x1)
    r2 = tl.where(rotated, x2 * c + x1 * s, x2)
    valid = head < NH + 2 * NKV
    tl.store(out_ptr + a, r1.to(dt), mask=valid)
    tl.store(out_ptr + a + HALF, r2.to(dt), mask=valid)
    kv = head - NH
    cached = valid & (kv >= 0) & ((slot + j * 0) >= 0)  # a tensor mask: the interpreter rejects a scalar one
    g = tl.where(kv >= NKV, kv - NKV, kv)
    c_ptr = tl.where(kv >= NKV, vc_ptr, kc_ptr) + slot * stride_slot + g * (2 * HALF) + j
    tl.store(c_ptr, r1.to(kc_ptr.dtype.element_ty), mask=cached)
    tl.store(c_ptr + HALF, r2.to(kc_ptr.dtype.element_ty), mask=cached)


@triton.jit
def fold_inputs(pid, offs_n, n_mask, out_ptr, sumsq_in, P, cos_ptr, sin_ptr, slot_ptr, NORM: tl.constexpr,
                ADD_TO: tl.constexpr, ROPE_HALF: tl.constexpr, P_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
                half=None, p_offs=None):
    """What a one-row product's epilogue folds in (`store_folded`), loaded before the weight stream so that no
    program waits on a load at its end: the sums of squares the programs before left (NORM), the residual row
    (ADD_TO), the token's cos, sin and cache slot (ROPE_HALF). 0 for what it does not fold. `half`, `p_offs`: the
    pairs' and the P sums' indices where the caller makes them (Gluon: in its layouts)."""
    part, res, cos, sin, slot = 0.0, 0.0, 0.0, 0.0, 0
    if NORM:
        if p_offs is None:
            p_offs = tl.arange(0, P_BLOCK)
        part = tl.load(sumsq_in + p_offs, mask=p_offs < P, other=0.0)
    if ADD_TO:
        res = tl.load(out_ptr + offs_n, mask=n_mask, other=0.0)
    if ROPE_HALF > 0:
        j = pair_index(pid, BLOCK_N, half) % ROPE_HALF
        cos = tl.load(cos_ptr + j)
        sin = tl.load(sin_ptr + j)
        slot = tl.load(slot_ptr).to(tl.int64)
    return part, res, cos, sin, slot


@triton.jit
def store_folded(y, pid, offs_n, n_mask, N, K, out_ptr, b_ptr, eps, part, res, sumsq_out, nw_ptr, hw_ptr, cos, sin,
                 slot, kc_ptr, vc_ptr, stride_slot, HAS_BIAS: tl.constexpr, NORM: tl.constexpr,
                 ADD_TO: tl.constexpr, WEIGHTED: tl.constexpr, GATE_OUT: tl.constexpr, NH: tl.constexpr,
                 NKV: tl.constexpr, ROPE_HALF: tl.constexpr, BLOCK_N: tl.constexpr, half=None):
    """A one-row product's end (this GEMV's, int4_pairs.py's and int4_mma.py's): y [BLOCK_N] (float32) times 1 / rms
    (NORM), plus the bias, then added into the residual (ADD_TO, `add_residual`), rotated and cached (ROPE_HALF,
    `rope_store`), returned as silu(gate) * up (GATE_OUT, `store_gate_out`) or stored; part, res, cos, sin, slot:
    `fold_inputs`."""
    if NORM:  # 1 / rms of the row
        y = y * inv_rms(part, K, eps)
    if HAS_BIAS:
        y = y + tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    if ADD_TO:
        add_residual(y, res, out_ptr, sumsq_out, pid, offs_n, n_mask, nw_ptr, hw_ptr, WEIGHTED)
    elif ROPE_HALF > 0:
        rope_store(y, pid, out_ptr, cos, sin, slot, kc_ptr, vc_ptr, stride_slot, NH, NKV, ROPE_HALF, BLOCK_N, half)
    elif GATE_OUT:
        store_gate_out(y, pid, out_ptr, N // 2, BLOCK_N, half)
    else:
        tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, N, K, stride_wn, nw_ptr, sumsq_in, sumsq_out, P, eps,
                 cos_ptr, sin_ptr, slot_ptr, kc_ptr, vc_ptr, stride_slot,
                 HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
                 EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, W_KIND: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr,
                 GATE_OUT: tl.constexpr = False, NORM: tl.constexpr = False, ADD_TO: tl.constexpr = False,
                 P_BLOCK: tl.constexpr = 1, NH: tl.constexpr = 0, NKV: tl.constexpr = 0, ROPE_HALF: tl.constexpr = 0,
                 LATE: tl.constexpr = False):
    """One row of x: each weight element read once. NORM: x times the norm's weight (nw_ptr), the outputs times
    1 / rms from the P sums at sumsq_in. ADD_TO: out_ptr is the residual row, this program's sum to sumsq_out.
    ROPE_HALF: the qkv product's rotary embedding and KV-cache write (`rope_store`)."""
    pdl_prologue(PDL, LATE)
    pid = tl.program_id(0)
    offs_n = program_rows(pid, BLOCK_N, N // 2, GATE_OUT, ROPE_HALF)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    part, res, cos, sin, slot = fold_inputs(pid, offs_n, n_mask, out_ptr, sumsq_in, P, cos_ptr, sin_ptr, slot_ptr,
                                            NORM, ADD_TO, ROPE_HALF, P_BLOCK, BLOCK_N)
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        if EVEN_K and EVEN_N:
            w = tl.load(w_ptrs)
        elif EVEN_K:
            w = tl.load(w_ptrs, mask=n_mask[:, None], other=0.0)
        else:
            w = tl.load(w_ptrs, mask=n_mask[:, None] & ((k0 + offs_k) < K)[None, :], other=0.0)
        if EVEN_K:
            x = tl.load(x_ptr + k0 + offs_k).to(tl.float32)
            if GATED:
                u = tl.load(x_ptr + K + k0 + offs_k)
            if NORM:
                x = x * tl.load(nw_ptr + k0 + offs_k).to(tl.float32)
        else:
            x = tl.load(x_ptr + k0 + offs_k, mask=(k0 + offs_k) < K, other=0.0).to(tl.float32)
            if GATED:
                u = tl.load(x_ptr + K + k0 + offs_k, mask=(k0 + offs_k) < K, other=0.0)
            if NORM:
                x = x * tl.load(nw_ptr + k0 + offs_k, mask=(k0 + offs_k) < K, other=0.0).to(tl.float32)
        if GATED:  # silu(gate) * up, rounded like the eager ops
            x = (x / (1.0 + tl.exp(-x))).to(u.dtype).to(tl.float32)
            x = (x * u.to(tl.float32)).to(u.dtype).to(tl.float32)
        acc += _to_f32(w, W_KIND) * x[None, :]
        w_ptrs += BLOCK_K
    pdl_launch_next(PDL, LATE)
    y = tl.sum(acc, axis=1)
    if HAS_SCALE:
        y = y * tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)
    if W_KIND == 2:
        y = y * 1.329227995784916e36  # 2**120: e4m3 exponent bias 7 vs float32's 127
    store_folded(y, pid, offs_n, n_mask, N, K, out_ptr, b_ptr, eps, part, res, sumsq_out, None, None, cos, sin, slot,
                 kc_ptr, vc_ptr, stride_slot, HAS_BIAS, NORM, ADD_TO, False, GATE_OUT, NH, NKV, ROPE_HALF, BLOCK_N)


# Under PDL, whether the GEMV lets the next kernel launch after its loop (LATE) rather than at its start: the paired
# int4 GEMV's next kernel, let in at the start, took the SMs with room first (docs/performance.md, forty-fourth
# session). Off until the decode step is timed with it (bench/results/2026-12-08-s44/callC.sh).
LATE_TRIGGER = False

# How int8 / fp8 weights become float32 in the GEMV: 0 = Triton's conversion, 1 / 2 = the bit tricks above.
# Each the faster one in bench/kernel_check gemv1 (docs/performance.md).
GEMV_W_KIND = {"int8": 1, "fp8": 0}


def gemv_config(key: str, N: int, K: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, stages), from the same sweep (Llama-2-7B shapes, one row)."""
    if key == "16bit":
        if K > 8192:
            return 16, 1024, 8, 3  # down_proj
        if N > 8192:
            return 16, 1024, 8, 1  # qkv, gate_up, lm_head
        return 16, 512, 4, 3  # o_proj
    if K > 8192:
        return 8, 1024, 4, 1  # down_proj
    return 16, 512, 4, 3  # qkv, o_proj, gate_up


@dataclass(frozen=True)
class RopeCache:
    """The rotary embedding and KV-cache write of one token, for the qkv GEMV's epilogue: cos/sin [1, head_dim / 2]
    float32 (the tables' rows at its position), slot_mapping [1] (a slot < 0 writes no cache), the layer's cache
    [2, blocks, block_size, num_kv_heads, head_dim]."""

    cos: torch.Tensor
    sin: torch.Tensor
    slot_mapping: torch.Tensor
    kv_cache: torch.Tensor
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class RowNorm:
    """An RMSNorm for the GEMV to fold in: its weight and eps, and the per-program sums of squares of the row
    that the GEMV before it left (`gemv(..., add_to=)`)."""

    weight: torch.Tensor  # [K]
    sumsq: torch.Tensor  # float32 [programs of the GEMV before]
    eps: float


def gemv(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
         gated: bool = False, config: tuple[int, int, int, int] | None = None, w_kind: int | None = None,
         pdl: bool = False, gate_out: bool = False, norm: RowNorm | None = None,
         add_to: torch.Tensor | None = None, rope: RopeCache | None = None) -> torch.Tensor:
    """x: [1, K] (or [1, 2K] gated) -> [1, N]; with `gate_out` (w: [gate | up] rows), silu(gate) * up, [1, N/2].
    norm: x is the un-normalized row; computes rmsnorm(x) @ W^T. add_to: the residual row [1, N]: y is added
    into it in place and the result is the new row's sums of squares, one per program (float32), for `norm`.
    rope: w is qkv's [q | k | v] rows; the result has q and k rotated, and k and v are in the cache."""
    N, K = w.shape
    assert x.shape == (1, 2 * K if gated else K) and x.stride(-1) == 1 and w.stride(1) == 1
    assert not gate_out or N % 2 == 0
    assert add_to is None or (add_to.shape == (1, N) and add_to.is_contiguous() and not gate_out and norm is None)
    key = "16bit" if w.element_size() == 2 else "int8" if w.dtype == torch.int8 else "fp8"
    bn, bk, warps, stages = config or gemv_config(key, N, K)
    kind = w_kind if w_kind is not None else GEMV_W_KIND.get(key, 0)
    if kind == 2:
        assert key == "fp8" and scale is not None
    grid = triton.cdiv(N, bn)
    if add_to is not None:
        out, sums_out = add_to, torch.empty(grid, dtype=torch.float32, device=x.device)
    else:
        out, sums_out = torch.empty(1, N // 2 if gate_out else N, dtype=x.dtype, device=x.device), w
    nw, sums, eps = (norm.weight, norm.sumsq, norm.eps) if norm is not None else (w, w, 0.0)
    P = sums.numel() if norm is not None else 1
    r = rope_args(rope, N) if rope is not None else (w,) * 5 + (0,)
    heads = (rope.num_heads, rope.num_kv_heads, rope.head_dim // 2) if rope is not None else (0, 0, 0)
    _gemv_kernel[(grid,)](x, w, scale if scale is not None else w, bias if bias is not None else w, out, N, K,
                          w.stride(0), nw, sums, sums_out, P, eps, *r,
                          HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, GATED=gated, EVEN_K=K % bk == 0,
                          EVEN_N=N % bn == 0, W_KIND=kind, BLOCK_N=bn, BLOCK_K=bk, STAGES=stages, num_warps=warps,
                          GATE_OUT=gate_out, NORM=norm is not None, ADD_TO=add_to is not None,
                          P_BLOCK=triton.next_power_of_2(P), NH=heads[0], NKV=heads[1], ROPE_HALF=heads[2],
                          LATE=LATE_TRIGGER, **launch_args(pdl))
    return sums_out if add_to is not None else out


def rope_args(rope: RopeCache, N: int) -> tuple:
    """The kernel arguments of `rope`: cos, sin, the slot, the layer's K and V caches, a slot's stride."""
    h, kvh, d = rope.num_heads, rope.num_kv_heads, rope.head_dim
    cache = rope.kv_cache
    assert N == (h + 2 * kvh) * d and rope.slot_mapping.numel() == 1
    assert rope.cos.shape == rope.sin.shape == (1, d // 2) and rope.cos.is_contiguous() and rope.sin.is_contiguous()
    assert cache.is_contiguous() and cache.shape[-2:] == (kvh, d)
    return rope.cos, rope.sin, rope.slot_mapping, cache[0], cache[1], kvh * d
