"""4-bit group weights (llmserve/kernels/int4.py) against their torch twin, Int4Linear's reference path. On a GPU,
or under Triton's interpreter on the CPU where triton is installed (see test_kernels.py)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from test_kernels import DEV, DT, rel  # noqa: E402

from llmserve.model import linear as qlinear  # noqa: E402


def _int4_case(M, N, K, group, symmetric, gated, seed=0, wide_scales=False):
    from torch.nn import functional as F

    from llmserve.model.int4 import dequantize_int4, quantize_int4

    gen = torch.Generator().manual_seed(seed)
    t = {k: v.to(DEV) for k, v in quantize_int4(torch.randn(N, K, generator=gen), group, symmetric).items()}
    if wide_scales:  # float32 values no float16 holds, as GGUF Q4_K's d * sc and dmin * m
        t.update({k: t[k].float() * (1 + 2.0 ** -13) for k in ("weight_scale", "weight_min") if k in t})
    x = torch.randn(M, 2 * K if gated else K, generator=gen).to(DEV, DT)
    bias = torch.randn(N, generator=gen).to(DEV, DT)
    h = F.silu(x[:, :K]) * x[:, K:] if gated else x
    ref = F.linear(h, dequantize_int4(t["weight"], t["weight_scale"], t.get("weight_min"), DT), bias)
    return x, t, bias, ref


def _int4_check(M, N, K, group, symmetric, gated, pdl=False, wide_scales=False):
    from llmserve.kernels.int4 import w4mm

    x, t, bias, ref = _int4_case(M, N, K, group, symmetric, gated, wide_scales=wide_scales)
    out = w4mm(x, t["weight"], t["weight_scale"], t.get("weight_min"), bias, gated=gated, pdl=pdl)
    assert out.shape == (M, N) and out.dtype == DT
    assert rel(out, ref) < 1e-2, (M, N, K, group, symmetric, gated)


@pytest.mark.skipif(DEV != "cuda", reason="the full matrix needs a GPU (a small case runs under the interpreter below)")
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("M", [1, 3, 16, 64])
@pytest.mark.parametrize("gated", [False, True])
def test_int4_kernels_match_the_torch_twin(group, symmetric, M, gated, pdl):
    """K an odd multiple of every group and tile (7 * 128), N not a multiple of any BLOCK_N, and Llama-3-8B's
    o_proj / down_proj shapes at M = 1 and 16."""
    _int4_check(M, 200, 7 * 128, group, symmetric, gated, pdl)
    if M in (1, 16):
        _int4_check(M, 4096, 14336 if gated else 4096, group, symmetric, gated, pdl)


@pytest.mark.parametrize("split", [2, 4])
def test_int4_split_k_sums_the_partials(split):
    """Split-K (a float32 partial per K slice, the last one short, the bias added once) equals the torch twin."""
    from llmserve.kernels.int4 import w4mm

    x, t, bias, ref = _int4_case(3, 40, 7 * 128, 128, False, False)
    out = w4mm(x, t["weight"], t["weight_scale"], t["weight_min"], bias, config=(16, 32, 128, 4, 3, split))
    assert out.shape == (3, 40) and out.dtype == DT
    assert rel(out, ref) < 1e-2


@pytest.mark.parametrize("group,symmetric", [(32, False), (128, True)])
@pytest.mark.parametrize("M,codes", [(1, "magic"), (3, "magic"), (3, "scaled"), (3, "dequantized")])
def test_int4_kernels_small_case(group, symmetric, M, codes, monkeypatch):
    """A small shape everywhere the kernels run (GPU, or the CPU interpreter where triton is installed); the
    tensor-core kernel's three ways with the codes: offset + code by integer ops (`int4.MM_MAGIC_ROWS`), codes as
    floats and each group's sums scaled (`MM_SCALE_ROWS`), each weight dequantized."""
    from llmserve.kernels import int4

    for kind in ("sym", "asym"):
        monkeypatch.setitem(int4.MM_MAGIC_ROWS, kind, 16 if codes == "magic" else 0)
        monkeypatch.setitem(int4.MM_SCALE_ROWS, kind, 0 if codes == "dequantized" else 64)
    monkeypatch.setattr(int4, "WGMMA", False)  # the Triton kernel's ways, which bf16 on Hopper otherwise skips
    _int4_check(M, 40, 3 * 128, group, symmetric, gated=M == 1)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("codes", ["magic", "scaled"])
def test_int4_group_sums_come_closer_to_the_float32_product_than_the_twin(symmetric, codes, monkeypatch):
    """The tensor-core kernel's codes times x, each group's sum scaled after (`MM_SCALE_ROWS`, `MM_MAGIC_ROWS`): no
    weight is rounded to 16 bits, as the torch twin's are, so at 8 rows its output is nearer the product of the
    float32 weights than the twin's output is (which is why it sits a little further from the twin)."""
    from torch.nn import functional as F

    from llmserve.kernels import int4
    from llmserve.model.int4 import dequantize_int4

    for kind in ("sym", "asym"):
        monkeypatch.setitem(int4.MM_MAGIC_ROWS, kind, 16 if codes == "magic" else 0)
        monkeypatch.setitem(int4.MM_SCALE_ROWS, kind, 64)
    monkeypatch.setattr(int4, "WGMMA", False)  # the Gluon kernel dequantizes to the twin's weights exactly
    x, t, bias, twin = _int4_case(8, 64, 5 * 128, 64, symmetric, False)
    out = int4.w4mm(x, t["weight"], t["weight_scale"], t.get("weight_min"), bias)
    exact = F.linear(x.float(), dequantize_int4(t["weight"], t["weight_scale"], t.get("weight_min")), bias.float())
    assert rel(out, exact) < rel(twin, exact), (rel(out, exact), rel(twin, exact))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("M", [1, 3, 64])
def test_int4_kernels_take_float32_scales(symmetric, M):
    """GGUF Q4_K repacks with float32 scales and minimums (llmserve/model/int4.py): the kernels load them as they
    are and convert to float32, as they do 16-bit ones."""
    _int4_check(M, 40, 3 * 128, 32, symmetric, gated=M == 1, wide_scales=True)


@pytest.mark.skipif(DEV != "cuda", reason="a model-sized check needs a GPU")
@pytest.mark.parametrize("mode", ["int4_sym", "int4_asym"])
def test_int4_linear_takes_the_kernels_when_the_model_does(mode):
    from llmserve.model.int4 import Int4AsymLinear, Int4SymLinear
    from llmserve.model.linear import Linear

    lin = Linear(1024, 768).to(DEV, DT)
    lin.weight.data.normal_()
    cls = Int4SymLinear if mode == "int4_sym" else Int4AsymLinear
    fast, slow = cls.from_linear(lin, group_size=64), cls.from_linear(lin, group_size=64)
    fast.launch = qlinear.Launch(kernels=True)
    for M in (1, 5, 40):
        x = torch.randn(M, 2048, device=DEV, dtype=DT)
        assert rel(fast(x, gated=True), slow(x, gated=True)) < 1e-2


def _hopper() -> bool:
    return DEV == "cuda" and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel (wgmma, TMA) runs on Hopper only")
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("M", [2, 40, 128, 300])
def test_int4_wgmma_kernel_matches_the_torch_twin(group, symmetric, M):
    """int4_wgmma.py, which w4mm takes for bf16 on Hopper from 2 rows to WGMMA_ROWS (2,048): K an odd number of groups
    (a zero-weight group pads the kernel's pairs), N not a multiple of its 64 rows, M of its row blocks; the gate
    and the bias; and Llama-3.1-8B's down_proj (K split)."""
    from llmserve.kernels import int4_wgmma

    assert int4_wgmma.usable(torch.zeros(M, 64, device=DEV, dtype=DT), torch.zeros(8, 32, device=DEV,
                                                                                   dtype=torch.uint8))
    _int4_check(M, 200, 7 * 128, group, symmetric, gated=M == 40)
    if M in (2, 128, 300):  # 300: two 256-row blocks, K split 2 (wgmma_config's wide shape)
        _int4_check(M, 4096, 14336, group, symmetric, gated=True)


@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel (wgmma, TMA) runs on Hopper only")
@pytest.mark.parametrize("config", [(8, 64, 4, 4, 3), (16, 64, 4, 2, 7), (64, 64, 4, 3, 1), (128, 64, 4, 4, 2),
                                    (256, 128, 8, 3, 1), (256, 128, 8, 3, 2)])
def test_int4_wgmma_launch_shapes_and_k_splits(config):
    """Every row block, stage count and split of K (slices of odd group counts, the last one short) gives the torch
    twin's product, the bias added once."""
    from llmserve.kernels.int4 import check_codes
    from llmserve.kernels.int4_wgmma import w4wgmma

    x, t, bias, ref = _int4_case(config[0] + 3, 136, 13 * 128, 128, False, False)
    w = (t["weight"], t["weight_scale"], t["weight_min"])
    out = w4wgmma(x, *w, bias, check_codes(*w), config=config)
    assert out.shape == ref.shape and out.dtype == DT and rel(out, ref) < 1e-2


def test_int4_matmul_of_no_rows_is_empty():
    """A step with no rows for this linear (launch_mm returns [0, N] at once; on Hopper the Gluon kernel, whose TMA
    descriptor takes no empty tensor, must not be picked)."""
    from llmserve.kernels.int4 import w4mm

    x, t, bias, _ = _int4_case(2, 40, 3 * 128, 128, True, False)
    out = w4mm(x[:0], t["weight"], t["weight_scale"], None, bias)
    assert out.shape == (0, 40) and out.dtype == DT


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gated,wide_scales", [(False, False), (True, False), (False, True)])
def test_int4_many_rows_dequantize_to_the_twins_weight_bit_for_bit(group, symmetric, gated, wide_scales):
    """From DEQUANT_ROWS rows (past WGMMA_ROWS for bf16 on Hopper) the weight is dequantized whole and F.linear runs:
    the torch twin's computation, so the result equals it exactly (K not a multiple of the 256-input tile, N not of
    the 16-row block; the gate through the fused SiLU-mul kernel, as for fewer rows)."""
    from torch.nn import functional as F

    from llmserve.kernels.fused import silu_mul
    from llmserve.kernels.int4 import DEQUANT_ROWS, WGMMA_ROWS, w4mm
    from llmserve.model.int4 import dequantize_int4

    # up to WGMMA_ROWS bf16 on Hopper takes int4_wgmma.py's kernel (2,049 rows here cost the CPU ~4x 192's time)
    rows = max(DEQUANT_ROWS, WGMMA_ROWS + 1) if _hopper() else DEQUANT_ROWS
    x, t, bias, ref = _int4_case(rows, 40, 5 * 128, group, symmetric, gated, wide_scales=wide_scales)
    out = w4mm(x, t["weight"], t["weight_scale"], t.get("weight_min"), bias, gated=gated)
    w = dequantize_int4(t["weight"], t["weight_scale"], t.get("weight_min"), DT)
    assert torch.equal(out, F.linear(silu_mul(x) if gated else x, w, bias))
    assert rel(out, ref) < 1e-2


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gated", [False, True])
def test_int4_word_gemv_matches_the_torch_twin(group, symmetric, gated):
    """The word-reading GEMV (int4_words.py) at a small K, and through w4gemv's own choice past K = 8,192 (a last
    tile of fewer groups than BLOCK_K holds, N not a multiple of the 16-row block)."""
    from llmserve.kernels.int4 import w4gemv

    x, t, bias, ref = _int4_case(1, 40, 5 * 128, group, symmetric, gated)
    out = w4gemv(x, t["weight"], t["weight_scale"], t.get("weight_min"), bias, gated=gated, words=True)
    assert out.shape == (1, 40) and rel(out, ref) < 1e-2
    _int4_check(1, 24, 8192 + 3 * 128, group, symmetric, gated)


@pytest.mark.skipif(DEV != "cuda", reason="inline PTX: Triton's interpreter cannot run it")
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gated", [False, True])
def test_int4_pair_gemv_matches_the_torch_twin(group, symmetric, gated, monkeypatch):
    """The paired-bf16 GEMV (int4_pairs.py) at a small K (N not a multiple of its block, a last tile short), and at
    Llama-3-8B's o_proj / down_proj shapes through w4gemv's own choice under PAIRS_GEMV."""
    from llmserve.kernels import int4

    for N, K in ((40, 5 * 128), (4096, 14336 if gated else 4096)):
        x, t, bias, ref = _int4_case(1, N, K, group, symmetric, gated)
        x = x.to(torch.bfloat16)
        out = int4.w4gemv(x, t["weight"], t["weight_scale"], t.get("weight_min"), bias.to(x.dtype), gated=gated,
                          pairs=True)
        assert out.shape == (1, N) and rel(out.to(ref.dtype), ref) < 1e-2, (N, K)
    monkeypatch.setattr(int4, "PAIRS_GEMV", True)
    monkeypatch.setattr(int4, "MMA_ONE_ROW", False)  # else groups of 128 go to int4_mma.py's kernel
    again = int4.w4gemv(x, t["weight"], t["weight_scale"], t.get("weight_min"), bias.to(x.dtype), gated=gated)
    assert torch.equal(again, out)


@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_gate_out_is_silu_mul_of_the_gemv_bit_for_bit(group, symmetric):
    """`gate_out` (w: [gate | up] rows): silu(gate) * up, the bits of silu_mul over the GEMV's own [gate | up]
    output, at 40 pairs (its last block short) and, on a GPU, Llama-3-8B's gate_up: the paired GEMV's epilogue
    there (bf16), the GEMV and a silu_mul launch elsewhere."""
    from llmserve.kernels import int4
    from llmserve.kernels.fused import silu_mul

    shapes = ((80, 5 * 128),) + (((2 * 14336, 4096),) if DEV == "cuda" else ())
    for N, K in shapes:
        x, t, bias, _ = _int4_case(1, N, K, group, symmetric, False)
        x, bias = x.to(torch.bfloat16), bias.to(torch.bfloat16)
        args = (x, t["weight"], t["weight_scale"], t.get("weight_min"), bias)
        out = int4.w4gemv(*args, gate_out=True)
        assert out.shape == (1, N // 2) and torch.equal(out, silu_mul(int4.w4gemv(*args))), (N, K)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("slot", [5, -1])
def test_int4_gemv_rotates_and_writes_the_cache_as_rope_and_cache(symmetric, slot):
    """`rope` (w: qkv's rows, biases as Qwen2's): the qkv row and the cache as the GEMV then fused.rope_and_cache (k
    rotated in place) leave them, bit for bit, and a slot < 0 writes no cache: the paired GEMV's epilogue on a GPU,
    a rope_and_cache launch after the GEMV elsewhere."""
    from test_kernels import assert_rotates_as_rope_and_cache

    from llmserve.kernels import int4

    nh, nkv, hd = 6, 2, 64
    x, t, bias, _ = _int4_case(1, (nh + 2 * nkv) * hd, 3 * 128, 64, symmetric, False)
    args = (x.to(torch.bfloat16), t["weight"], t["weight_scale"], t.get("weight_min"), bias.to(torch.bfloat16))
    assert_rotates_as_rope_and_cache(lambda rope: int4.w4gemv(*args, rope=rope), nh, nkv, hd, slot, torch.bfloat16)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("after", ["plain", "gate_out", "rope"])
def test_int4_gemv_folds_the_residual_add_and_rmsnorm_around_it(symmetric, after):
    """o_proj's GEMV adding into the residual and writing the new row times the next norm's weight (`add_to`,
    `next_norm`), then the product after the norm reading that row and scaling by 1 / rms (`norm`; with qkv's
    rotary or gate_up's gate in the same epilogue), against o_proj, fused.rmsnorm, the product: the residual and
    the weighted row bit for bit, the output within the rounding of the norm's output (rounded to 16 bits at
    another point); qkv's rotary on the folded row bit for bit as rope_and_cache after. The paired GEMV's epilogue
    on a GPU (bf16), the GEMV and torch elsewhere (tests/test_kernels_pairs_emulated.py runs the paired one)."""
    check_folds(symmetric, after, DT)


def check_folds(symmetric: bool, after: str, bf: torch.dtype) -> None:
    """The folds test in activations of dtype `bf`."""
    from test_kernels import assert_rotates_as_rope_and_cache

    from llmserve.kernels import fused, int4
    from llmserve.kernels.gemv import RowNorm

    nh, nkv, hd = 2, 1, 64
    H, K1, N = 256, 384, {"plain": 192, "gate_out": 2 * 96, "rope": (nh + 2 * nkv) * hd}[after]
    a, t_o, _, _ = _int4_case(1, H, K1, 64, symmetric, False)
    _, t_n, bias, _ = _int4_case(1, N, H, 64, symmetric, False, seed=1)
    res = torch.randn(1, H, generator=torch.Generator().manual_seed(2)).to(DEV, bf)
    norm_w = (1 + 0.1 * torch.randn(H, generator=torch.Generator().manual_seed(3))).to(DEV, bf)
    o_args = (t_o["weight"], t_o["weight_scale"], t_o.get("weight_min"))
    n_args = (t_n["weight"], t_n["weight_scale"], t_n.get("weight_min"), bias.to(bf))
    a = a.to(bf)
    ref_res = res.clone()
    normed = fused.rmsnorm(int4.w4gemv(a, *o_args), norm_w, 1e-5, ref_res)
    sums, weighted = int4.w4gemv(a, *o_args, add_to=res, next_norm=norm_w)
    assert torch.equal(res, ref_res) and torch.equal(weighted, (res.float() * norm_w.float()).to(bf))
    assert torch.allclose(sums.sum(), res.float().pow(2).sum(), rtol=1e-5)
    norm = RowNorm(norm_w, sums, 1e-5)
    if after == "rope":  # the folded norm's row rotated and cached as rope_and_cache does it
        assert_rotates_as_rope_and_cache(lambda rope: int4.w4gemv(weighted, *n_args, rope=rope, norm=norm), nh, nkv,
                                         hd, 5, bf)
    gate_out = after == "gate_out"
    out = int4.w4gemv(weighted, *n_args, norm=norm, gate_out=gate_out)
    ref = int4.w4gemv(normed, *n_args, gate_out=gate_out)
    # Each against the float64 product of the exact norm: the paired GEMV rounds a word's products to bf16, so the
    # two paths' errors are independent and their difference alone reached 1.02e-2 (asymmetric, gate_out)
    exact = _exact_normed_product(res, norm_w, t_n, bias, gate_out)
    assert out.shape == ref.shape == exact.shape and rel(out, exact) < 1e-2 and rel(ref, exact) < 1e-2, (
        rel(out, exact), rel(ref, exact))


def _exact_normed_product(res, norm_w, t, bias, gate_out):
    """The RMSNorm of the residual row (eps 1e-5) times the dequantized weight, plus bias, in float64; with
    `gate_out`, silu(gate) * up of its halves."""
    from torch.nn import functional as F

    from llmserve.model.int4 import dequantize_int4

    r = res.double()
    x = r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + 1e-5) * norm_w.double()
    w = dequantize_int4(t["weight"], t["weight_scale"], t.get("weight_min"), torch.float64)
    y = F.linear(x, w.to(x.device), bias.double())
    return F.silu(y[:, :y.shape[1] // 2]) * y[:, y.shape[1] // 2:] if gate_out else y


@pytest.mark.parametrize("quant", ["int4_sym", "int4_asym"])
def test_int4_one_row_folds_the_rmsnorms_into_the_gemvs(tmp_path, monkeypatch, quant):
    """At one row the 4-bit o_proj and down_proj add into the residual and write the row times the next norm's
    weight, and qkv and gate_up scale their outputs (`int4.FOLD_NORM`): only the first layer's input norm and the
    final one launch, the logits within the norm's roundings; more rows launch every norm."""
    from test_kernels_model import _tiny_model, prefill_logits

    from llmserve.kernels import fused, int4

    model = _tiny_model(tmp_path, quantization={"mode": quant})
    launches, rmsnorm = [], fused.rmsnorm
    monkeypatch.setattr(fused, "rmsnorm", lambda *a, **k: (launches.append(1), rmsnorm(*a, **k))[1])
    for lens, folded_norms in (([1], 2), ([3, 2], 5)):
        outs = []
        for fold in (True, False):
            monkeypatch.setattr(int4, "FOLD_NORM", fold)
            launches.clear()
            outs.append(prefill_logits(model, lens))
            assert len(launches) == (folded_norms if fold else 5), (lens, fold)
        assert rel(*outs) < 2e-2, lens


@pytest.mark.parametrize("quant", ["int4_sym", "int4_asym"])
def test_int4_one_row_folds_change_no_bit_of_the_model(tmp_path, monkeypatch, quant):
    """At one row the 4-bit gate_up returns silu(gate) * up (`int4.GATE_OUT`; down_proj reads a plain row) and qkv's
    GEMV rotates q and k and writes the cache (`int4.ROPE_IN_GEMV`): the model's logits bit for bit as with a gated
    down_proj and a rope_and_cache launch; more rows keep those."""
    from test_kernels_model import _tiny_model, prefill_logits

    from llmserve.kernels import int4

    model = _tiny_model(tmp_path, quantization={"mode": quant})
    # the paired GEMV's folds (a gated down_proj, which int4_mma.py's kernel does not take, runs on it)
    monkeypatch.setattr(int4, "MMA_ONE_ROW", False)
    epilogues, gemv = [], int4.w4gemv
    monkeypatch.setattr(int4, "w4gemv", lambda *a, gate_out=False, rope=None, **k: (
        epilogues.append((gate_out, rope is not None)), gemv(*a, gate_out=gate_out, rope=rope, **k))[1])

    for lens in ([1], [3, 2]):
        for switch in ("GATE_OUT", "ROPE_IN_GEMV"):
            monkeypatch.setattr(int4, switch, True)
        epilogues.clear()
        fused_out = prefill_logits(model, lens)
        assert any(e[0] for e in epilogues) == (lens == [1]) == model.layers[0].mlp.gate_up_proj.gate_out_at(sum(lens))
        assert any(e[1] for e in epilogues) == (lens == [1]) == model.layers[0].self_attn.qkv_proj.ropes_at(sum(lens))
        for switch in ("GATE_OUT", "ROPE_IN_GEMV"):
            monkeypatch.setattr(int4, switch, False)
        assert torch.equal(fused_out, prefill_logits(model, lens)), lens


def test_the_paired_gemv_launches_plainly_when_a_graph_asks_for_pdl(monkeypatch):
    """int4.PAIRS_PDL off: the paired GEMV launches without programmatic dependent launch even when the decode graph
    asks for it (launched early it made a batch-1 int4 step 0.65 ms slower, docs/performance.md); a stand-in
    records the launch, so this runs without a GPU."""
    from llmserve.kernels import int4, int4_pairs

    launches = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(kwargs)

    monkeypatch.setattr(int4_pairs, "_w4gemv_pairs_kernel", Recorder())
    x, t, _, _ = _int4_case(1, 40, 5 * 128, 128, True, False)
    for flag in (False, True):
        monkeypatch.setattr(int4, "PAIRS_PDL", flag)
        int4.w4gemv(x.to(torch.bfloat16), t["weight"], t["weight_scale"], pdl=True, pairs=True)
    assert [(k["PDL"], "launch_pdl" in k) for k in launches] == [(0, False), (1, True)]


@pytest.mark.skipif(DEV != "cuda", reason="programmatic dependent launch: a Hopper GPU")
@pytest.mark.parametrize("symmetric", [True, False])
def test_the_paired_gemv_under_pdl_gives_the_plain_launchs_bits(pdl, symmetric):
    """Under PDL the paired GEMV waits for the previous grid first and lets the next launch after its loop: the same
    outputs, bit for bit, as a plain launch."""
    from llmserve.kernels import int4_pairs
    from llmserve.kernels.int4 import check_codes

    x, t, bias, _ = _int4_case(1, 40, 5 * 128, 128, symmetric, False)
    x, bias = x.to(torch.bfloat16), bias.to(torch.bfloat16)
    args = (x, t["weight"], t["weight_scale"], t.get("weight_min"), bias, False, None)
    sizes = check_codes(t["weight"], t["weight_scale"], t.get("weight_min"))
    plain = int4_pairs.w4gemv_pairs(*args, False, sizes)
    assert torch.equal(int4_pairs.w4gemv_pairs(*args, pdl, sizes), plain)
