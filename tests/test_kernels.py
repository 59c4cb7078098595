"""Triton kernels against their torch twins: ||out - ref|| / ||ref|| on fresh random inputs. Here the elementwise
and linear kernels; beside it test_kernels_attention.py, test_kernels_model.py (the whole decoder, graphs, launch
checks), test_kernels_int4.py and test_kernels_int8_group.py.

Runs on a GPU, or on CPU under Triton's interpreter when triton is installed (TRITON_INTERPRET=1, which
tests/conftest.py sets before any test module defines the kernels; scripts/test.sh installs triton, the `kernels`
extra, where torch's CPU wheel lacks it). Skipped where triton is missing.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from llmserve import kernels  # noqa: E402
from llmserve.kernels import convert, fused, linear  # noqa: E402
from llmserve.model import linear as qlinear  # noqa: E402
from llmserve.model.llama import apply_rope  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DT = torch.bfloat16 if DEV == "cuda" else torch.float16  # the interpreter has no bf16


def rel(out, ref):
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all()
    return ((out - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("with_residual", [False, True])
def test_rmsnorm(with_residual, pdl):
    x = torch.randn(5, 200, device=DEV).to(DT)
    w = torch.rand(200, device=DEV).to(DT) + 0.5
    r = torch.randn(5, 200, device=DEV).to(DT)
    r_in = r.clone()
    out = fused.rmsnorm(x, w, 1e-5, r if with_residual else None, pdl=pdl)
    s = (x.float() + r_in.float()).to(DT) if with_residual else x
    ref = (s.float() * torch.rsqrt(s.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(DT) * w
    assert rel(out, ref) < 1e-2
    if with_residual:
        assert torch.equal(r, s)


@pytest.mark.parametrize("nh,nkv,hd", [(4, 4, 32), (6, 2, 64)])
@pytest.mark.parametrize("k_in_place", [False, True])
def test_rope_and_cache(nh, nkv, hd, pdl, k_in_place):
    T, blocks, page = 7, 6, 4
    qkv = torch.randn(T, (nh + 2 * nkv) * hd, device=DEV).to(DT)
    pos = torch.randint(0, 50, (T,), device=DEV, dtype=torch.int32)
    ang = torch.rand(64, hd // 2, device=DEV) * 6
    cos, sin = ang.cos(), ang.sin()
    slots = torch.randperm(blocks * page, device=DEV)[:T].to(torch.int32)
    slots[3] = -1  # skipped
    cache = torch.full((2, blocks, page, nkv, hd), 7.0, device=DEV).to(DT)
    ref_cache = cache.clone()
    q, k, v = qkv.clone().split([nh * hd, nkv * hd, nkv * hd], -1)
    ref_q = apply_rope(q.view(T, nh, hd), cos[pos.long()], sin[pos.long()])
    ref_k = apply_rope(k.reshape(T, nkv, hd), cos[pos.long()], sin[pos.long()])
    keep = slots >= 0
    ref_cache[0].view(-1, nkv, hd)[slots[keep].long()] = ref_k[keep]
    ref_cache[1].view(-1, nkv, hd)[slots[keep].long()] = v.reshape(T, nkv, hd)[keep]
    fused.rope_and_cache(qkv, pos, cos, sin, slots, cache, nh, nkv, hd, pdl=pdl, k_in_place=k_in_place)
    assert rel(qkv[:, :nh * hd].view(T, nh, hd), ref_q) < 1e-2
    assert rel(cache, ref_cache) < 1e-2
    # k rotated in the buffer on every row (the skipped slot's too) or left as it came; v untouched
    assert rel(qkv[:, nh * hd:(nh + nkv) * hd].view(T, nkv, hd), ref_k if k_in_place else k.view(T, nkv, hd)) < 1e-2
    assert torch.equal(qkv[:, (nh + nkv) * hd:], v)


@pytest.mark.skipif(DEV != "cuda", reason="e4m3 needs a GPU (the interpreter has none)")
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("rows,n", [(1, 4096), (37, 4096), (64, 3584), (5, 5120)])
def test_rmsnorm_quant_fp8_is_rmsnorm_then_quant_bit_for_bit(with_residual, rows, n, pdl):
    x = torch.randn(rows, n, device=DEV, dtype=DT) * 3
    w = torch.randn(n, device=DEV, dtype=DT)
    res = torch.randn(rows, n, device=DEV, dtype=DT)
    r1, r2 = (res.clone(), res.clone()) if with_residual else (None, None)
    q, s = fused.rmsnorm_quant_fp8(x, w, 1e-5, r1, pdl=pdl)
    q2, s2 = linear.quant_fp8_per_token(fused.rmsnorm(x, w, 1e-5, r2, pdl=pdl), pdl=pdl)
    assert torch.equal(s, s2) and torch.equal(q.view(torch.uint8), q2.view(torch.uint8))
    if with_residual:
        assert torch.equal(r1, r2)


@pytest.mark.skipif(DEV != "cuda", reason="e4m3 needs a GPU (the interpreter has none)")
@pytest.mark.parametrize("rows,n", [(1, 14336), (33, 14336), (64, 18944), (8, 320)])
def test_silu_mul_quant_fp8_is_silu_mul_then_quant_bit_for_bit(rows, n, pdl):
    x = torch.randn(rows, 2 * n, device=DEV, dtype=DT) * 2
    q, s = fused.silu_mul_quant_fp8(x, pdl=pdl)
    q2, s2 = linear.quant_fp8_per_token(fused.silu_mul(x, pdl=pdl), pdl=pdl)
    assert torch.equal(s, s2) and torch.equal(q.view(torch.uint8), q2.view(torch.uint8))


@pytest.mark.skipif(DEV != "cuda", reason="e4m3 needs a GPU (the interpreter has none)")
@pytest.mark.parametrize("parts", [2, 4])
def test_quant_fp8_with_the_rows_amax_gives_a_ranks_columns_bit_for_bit(parts, pdl):
    """A row-parallel rank quantizes its slice of x with the whole row's amax (the MAX all-reduce over ranks):
    codes and scales equal those columns of quantizing the whole row (tensor parallelism stays exact in fp8)."""
    x = torch.randn(37, 14336, device=DEV, dtype=DT) * 2
    q, s = linear.quant_fp8_per_token(x, pdl=pdl)
    amax = x.abs().amax(-1, keepdim=True).float()
    width = x.shape[1] // parts
    for r in range(parts):
        qr, sr = linear.quant_fp8_per_token(x[:, r * width:(r + 1) * width].contiguous(), pdl=pdl, amax=amax)
        assert torch.equal(sr, s)
        assert torch.equal(qr.view(torch.uint8), q[:, r * width:(r + 1) * width].view(torch.uint8))


def test_silu_mul(pdl):
    x = torch.randn(3, 2 * 1500, device=DEV).to(DT)
    g, u = x.chunk(2, -1)
    assert rel(fused.silu_mul(x, pdl=pdl), torch.nn.functional.silu(g) * u) < 1e-2


@pytest.mark.parametrize("M", [1, 5, 33])
@pytest.mark.parametrize("kind", ["16bit", "int8", "int8_gated", "fp8", "fp8_gated"])
def test_wmm(M, kind, pdl):
    if kind.startswith("fp8") and DEV == "cpu":
        pytest.skip("the interpreter has no float8")
    N, K = 96, 320
    gated = kind.endswith("gated")
    x = torch.randn(M, 2 * K if gated else K, device=DEV).to(DT)
    w = (torch.randn(N, K, device=DEV) * 0.05).to(DT)
    bias = None
    if kind == "16bit":
        scale, wq, bias = None, w, torch.randn(N, device=DEV).to(DT)
        ref_w = w
    else:
        wq, scale = qlinear.quantize_weight(w, "fp8" if kind.startswith("fp8") else "int8_wo")
        ref_w = qlinear.dequantize(wq, scale, torch.float32)
    xin = x
    if gated:
        g, u = x.chunk(2, -1)
        xin = torch.nn.functional.silu(g) * u
    ref = xin.float() @ ref_w.float().T + (bias.float() if bias is not None else 0)
    out = linear.wmm(x, wq, scale, bias, gated=gated, pdl=pdl)
    assert out.shape == (M, N)
    assert rel(out, ref) < 1e-2


@pytest.mark.skipif(DEV != "cuda", reason="inline PTX")
def test_e4m3_to_bf16_is_exact_for_every_code():
    """The bit-moving conversion `wmm` uses for fp8 weights equals torch's for all 254 finite e4m3 codes."""
    import triton
    import triton.language as tl

    @triton.jit
    def to_bf16(w_ptr, out_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, convert.e4m3_to_bf16(tl.load(w_ptr + offs)))

    codes = torch.tensor([c for c in range(256) if c & 0x7F != 0x7F] + [0, 0x80], dtype=torch.uint8, device=DEV)
    w = codes.view(torch.float8_e4m3fn)
    out = torch.empty(256, dtype=torch.bfloat16, device=DEV)
    to_bf16[(1,)](w, out, BLOCK=256)
    assert torch.equal(out.view(torch.int16), w.to(torch.bfloat16).view(torch.int16))


@pytest.mark.parametrize("kind", ["16bit", "int8", "int8_magic", "fp8", "fp8_bits"])
@pytest.mark.parametrize("gated", [False, True])
def test_gemv_one_row(kind, gated, pdl):
    if kind.startswith("fp8") and DEV == "cpu":
        pytest.skip("the interpreter has no float8")
    N, K = 80, 700  # neither divides the blocks
    x = torch.randn(1, 2 * K if gated else K, device=DEV).to(DT)
    w = (torch.randn(N, K, device=DEV) * 0.05).to(DT)
    if kind == "16bit":
        wq, scale, ref_w, w_kind = w, None, w.float(), 0
    else:
        wq, scale = qlinear.quantize_weight(w, "int8_wo" if kind.startswith("int8") else "fp8")
        ref_w = qlinear.dequantize(wq, scale)
        w_kind = {"int8": 0, "int8_magic": 1, "fp8": 0, "fp8_bits": 2}[kind]
    xin = x
    if gated:
        g, u = x.chunk(2, -1)
        xin = torch.nn.functional.silu(g) * u
    ref = xin.float() @ ref_w.T
    for cfg in [(16, 256, 4, 1), (8, 512, 4, 3)]:
        out = linear.gemv(x, wq, scale, None, gated=gated, config=cfg, w_kind=w_kind, pdl=pdl)
        assert rel(out, ref) < 1e-2


def same_bits(out: torch.Tensor, ref: torch.Tensor, exact: bool = False) -> bool:
    """Bit for bit on a GPU (and where `exact`); within a few float32 roundings under the interpreter."""
    return torch.equal(out, ref) if DEV == "cuda" or exact else rel(out, ref) < 1e-3


def _gate_up_case(kind: str, M: int, inter: int, K: int):
    x = torch.randn(M, K, device=DEV).to(DT)
    w = (torch.randn(2 * inter, K, device=DEV) * 0.05).to(DT)
    if kind == "16bit":
        return x, w, None, torch.randn(2 * inter, device=DEV).to(DT)
    return (x, *qlinear.quantize_weight(w, "fp8" if kind == "fp8" else "int8_wo"), None)


@pytest.mark.parametrize("M", [1, 5, 33])
@pytest.mark.parametrize("kind", ["16bit", "int8", "fp8"])
def test_gate_out_is_silu_mul_of_the_output_bit_for_bit(M, kind, pdl):
    """`gate_out`: gate_up's epilogue pairs each gate row with its up row and stores silu(gate) * up, the same
    bits as silu_mul over the stored [gate | up] output (which is what down_proj's gated load computes too).
    Under the interpreter only the GEMV: its tl.dot (numpy) rounds a product by where it sits in the tile."""
    if kind == "fp8" and DEV == "cpu":
        pytest.skip("the interpreter has no float8")
    if M == 33 and kind != "int8":
        pytest.skip("above the 16-bit kernels' rows (cuBLAS / _scaled_mm take them)")
    x, w, scale, bias = _gate_up_case(kind, M, 44, 320)  # 88 rows: 16-row tiles end in a partial one
    configs = [None] if M > 1 else [None, (16, 256, 4, 1), (8, 512, 4, 3)]
    for cfg in configs:
        mm = linear.wmm if M > 1 else lambda *a, cfg=cfg, **k: linear.gemv(*a, **k, config=cfg)
        out = mm(x, w, scale, bias, pdl=pdl, gate_out=True)
        ref = fused.silu_mul(mm(x, w, scale, bias, pdl=pdl))
        assert out.shape == (M, 44)
        assert same_bits(out, ref, exact=M == 1), (kind, M, cfg)


@pytest.mark.parametrize("kind", ["16bit", "int8", "fp8"])
@pytest.mark.parametrize("cfg", [None, (16, 256, 4, 1), (8, 512, 4, 3)])
def test_gemv_folds_the_residual_add_and_rmsnorm_around_it(kind, cfg, pdl):
    """o_proj's GEMV adding into the residual (`add_to`) then qkv's folding the RMSNorm (`norm`) against o_proj,
    fused.rmsnorm, qkv: the residual stream bit for bit, the product within rounding (the norm's output is not
    rounded to 16 bits in between)."""
    if kind == "fp8" and DEV == "cpu":
        pytest.skip("the interpreter has no float8")
    H, K1, N = 200, 300, 88  # none divides the blocks
    a = torch.randn(1, K1, device=DEV).to(DT)
    res = torch.randn(1, H, device=DEV).to(DT)
    norm_w = (1 + 0.1 * torch.randn(H, device=DEV)).to(DT)
    ws = [(torch.randn(n, k, device=DEV) * 0.05).to(DT) for n, k in ((H, K1), (N, H))]
    (w_o, s_o), (w_qkv, s_qkv) = [(w, None) if kind == "16bit" else
                                  qlinear.quantize_weight(w, "fp8" if kind == "fp8" else "int8_wo") for w in ws]
    ref_res = res.clone()
    normed = fused.rmsnorm(linear.gemv(a, w_o, s_o, config=cfg), norm_w, 1e-5, ref_res)
    ref = linear.gemv(normed, w_qkv, s_qkv, config=cfg)
    sums = linear.gemv(a, w_o, s_o, config=cfg, add_to=res, pdl=pdl)
    out = linear.gemv(res, w_qkv, s_qkv, config=cfg, norm=linear.RowNorm(norm_w, sums, 1e-5), pdl=pdl)
    assert torch.equal(res, ref_res)
    assert sums.shape == (-(-H // (cfg or linear.gemv_config("16bit" if kind == "16bit" else kind, H, K1))[0]),)
    assert torch.allclose(sums.sum(), res.float().pow(2).sum(), rtol=1e-5)
    assert rel(out, ref) < 5e-3


@pytest.mark.parametrize("kind", ["16bit", "int8", "fp8"])
@pytest.mark.parametrize("nh,nkv,hd,cfg", [(4, 2, 32, None), (6, 2, 64, (16, 256, 4, 1)), (6, 2, 64, (8, 512, 4, 3))])
@pytest.mark.parametrize("slot", [5, -1])
def test_gemv_rotates_and_writes_the_cache_as_rope_and_cache(kind, nh, nkv, hd, cfg, slot, pdl):
    """qkv's GEMV with `rope` (rotary pairs in its epilogue) leaves the qkv row and the cache as the GEMV then
    fused.rope_and_cache (k rotated in place) leave them, bit for bit; a slot < 0 writes no cache."""
    if kind == "fp8" and DEV == "cpu":
        pytest.skip("the interpreter has no float8")
    K, N = 96, (nh + 2 * nkv) * hd
    x = torch.randn(1, K, device=DEV).to(DT)
    w = (torch.randn(N, K, device=DEV) * 0.1).to(DT)
    wq, scale = (w, None) if kind == "16bit" else qlinear.quantize_weight(w, "fp8" if kind == "fp8" else "int8_wo")
    bias = torch.randn(N, device=DEV).to(DT) if kind == "16bit" else None
    assert_rotates_as_rope_and_cache(lambda rope: linear.gemv(x, wq, scale, bias, config=cfg, rope=rope,
                                                              pdl=pdl and rope is not None), nh, nkv, hd, slot, DT)


def assert_rotates_as_rope_and_cache(product, nh: int, nkv: int, hd: int, slot: int, dtype: torch.dtype) -> None:
    """product(rope) is qkv's row; with a linear.RopeCache (a token at position 37 of a random table) it leaves the
    row and the cache as product(None) then fused.rope_and_cache (k rotated in place) leave them, bit for bit, and a
    slot < 0 writes no cache."""
    ang = torch.rand(64, hd // 2, device=DEV) * 6
    cos, sin = ang.cos(), ang.sin()
    pos, slots = torch.tensor([37], device=DEV), torch.tensor([slot], device=DEV, dtype=torch.int32)
    cache = torch.full((2, 3, 4, nkv, hd), 7.0, device=DEV).to(dtype)
    ref_cache = cache.clone()
    ref = product(None)
    fused.rope_and_cache(ref, pos, cos, sin, slots, ref_cache, nh, nkv, hd, k_in_place=True)
    out = product(linear.RopeCache(cos[pos], sin[pos], slots, cache, nh, nkv, hd))
    assert torch.equal(out, ref) and torch.equal(cache, ref_cache)
    assert (slot < 0) == torch.equal(cache, torch.full_like(cache, 7.0))


def test_kernel_mode_is_read_from_the_environment_once():
    assert kernels.mode_from_env({}) == "on"
    assert kernels.mode_from_env({"LLMSERVE_TRITON_KERNELS": "1"}) == "on"
    assert kernels.mode_from_env({"LLMSERVE_TRITON_KERNELS": "0"}) == "off"
    assert kernels.mode_from_env({"LLMSERVE_TRITON_KERNELS": "interpret"}) == "off"  # no interpreter: off
    assert kernels.mode_from_env({"LLMSERVE_TRITON_KERNELS": "interpret", "TRITON_INTERPRET": "1"}) == "interpret"
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert kernels.usable("on", cuda, torch.bfloat16) and kernels.usable("interpret", cpu, torch.float16)
    assert not kernels.usable("on", cpu, torch.bfloat16)  # a CPU tensor needs the interpreter
    assert not kernels.usable("on", cuda, torch.float32)  # float32 keeps the torch path
    assert not kernels.usable("off", cuda, torch.bfloat16)
    with pytest.raises(ValueError):
        kernels.usable("1", cuda, torch.bfloat16)
