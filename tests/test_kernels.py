"""Triton kernels against their torch twins: ||out - ref|| / ||ref|| on fresh random inputs.

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
from llmserve.kernels import attention as kattn  # noqa: E402
from llmserve.kernels import convert, fused, linear  # noqa: E402
from llmserve.kernels.shapes import varlen_query_blocks  # noqa: E402
from llmserve.model import linear as qlinear  # noqa: E402
from llmserve.model.attention import AttentionMetadata, paged_attention  # noqa: E402
from llmserve.model.llama import apply_rope  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DT = torch.bfloat16 if DEV == "cuda" else torch.float16  # the interpreter has no bf16


@pytest.fixture(params=["plain", "pdl"] if DEV == "cuda" else ["plain"])
def pdl(request) -> bool:
    """On a GPU the linear and fused kernels (and the model) are tested twice: plain launches, and programmatic
    dependent launch where the GPU has it (what the engine's small decode graphs use on a Hopper GPU)."""
    from llmserve.engine.model_runner import use_pdl

    if request.param == "pdl" and not use_pdl("auto", torch.device(DEV)):
        pytest.skip("programmatic dependent launch needs compute capability 9.0+")
    return request.param == "pdl"


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
def test_rope_and_cache(nh, nkv, hd, pdl):
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
    fused.rope_and_cache(qkv, pos, cos, sin, slots, cache, nh, nkv, hd, pdl=pdl)
    assert rel(qkv[:, :nh * hd].view(T, nh, hd), ref_q) < 1e-2
    assert rel(cache, ref_cache) < 1e-2


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


def _paged_setup(ctx_lens, nh, nkv, hd, page=4):
    B = len(ctx_lens)
    need = [-(-c // page) for c in ctx_lens]
    total = sum(need) + 3
    perm = torch.randperm(total).tolist()
    tables, i = [], 0
    for n in need:
        tables.append(perm[i:i + n])
        i += n
    width = max(need)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=DEV)
    cache = torch.randn(2, total, page, nkv, hd, device=DEV).to(DT)
    return B, bt, cache


@pytest.mark.parametrize("nh,nkv,hd", [(4, 4, 64), (6, 2, 32)])
# (1, 32, 1, 2/3) and (32, 32, 1, 2): decode_config's shapes (one warp, whole or split); tiles of one block (16)
@pytest.mark.parametrize("config", [None, (1, 64, 4, 2), (3, 32, 4, 2), (4, 64, 8, 3), (2, 16, 4, 2), (1, 32, 1, 2),
                                    (1, 32, 1, 3), (32, 32, 1, 2), (1, 16, 2, 3)])
@pytest.mark.parametrize("fp8_cache", [0, 1, 2])  # a 16-bit cache, or e4m3 converted as that mode
def test_decode_attention(nh, nkv, hd, config, fp8_cache):
    if fp8_cache and DEV != "cuda":
        pytest.skip("fp8 loads need a GPU (the interpreter has no e4m3)")
    ctx_lens = [1, 13, 40, 7, 64, 33]  # within a block, whole tiles, a tile and a block
    B, bt, cache = _paged_setup(ctx_lens, nh, nkv, hd, page=16)
    if fp8_cache:  # the reference reads the same rounded values
        cache = cache.to(torch.float8_e4m3fn)
    q = torch.randn(B, nh, hd, device=DEV).to(DT)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32, device=DEV)
    out = kattn.decode_attention(q, cache, bt, ctx, hd ** -0.5, max_context=64, config=config,
                                 fp8_convert=fp8_cache or 1)
    assert rel(out, _decode_reference(q, cache, bt, ctx_lens)) < 1e-2


def _decode_reference(q, cache, bt, ctx_lens):
    """Decode attention in float32 torch, this step's K/V being the last cached token."""
    _, nh, hd = q.shape
    nkv = cache.shape[3]
    ref = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for b, c in enumerate(ctx_lens):
        keys = cache[0][bt[b].long()].flatten(0, 1)[:c].float().transpose(0, 1)  # [kvh, c, hd]
        vals = cache[1][bt[b].long()].flatten(0, 1)[:c].float().transpose(0, 1)
        keys = keys.repeat_interleave(nh // nkv, 0)
        vals = vals.repeat_interleave(nh // nkv, 0)
        att = (q[b].float()[:, None, :] @ keys.transpose(1, 2)).squeeze(1) * hd ** -0.5
        ref[b] = (att.softmax(-1)[:, None, :] @ vals).squeeze(1)
    return ref


@pytest.mark.parametrize("page", [16, 32])
@pytest.mark.parametrize("config", [None, (1, 32, 1, 3), (1, 64, 2, 2), (4, 32, 4, 2)])
def test_decode_attention_blocks_and_stale_nan(page, config):
    """Blocks of 16 and 32 tokens, tiles of one or two blocks: the reference's answer, and a NaN in the slots past a
    sequence's context (whole tiles are read unmasked, the last one masked) or in block 0 never reaches it."""
    nh, nkv, hd = 8, 2, 32
    ctx_lens = [1, 16, 47, 70, 96]
    B, bt, cache = _paged_setup(ctx_lens, nh, nkv, hd, page)
    ref_cache = cache.clone()
    owned = set()
    for b, c in enumerate(ctx_lens):
        owned |= set(bt[b, :-(-c // page)].tolist())
        cache[:, bt[b, (c - 1) // page].item(), (c - 1) % page + 1:] = float("nan")
    if 0 not in owned:  # where a masked tile's block past the end points
        cache[:, 0] = float("nan")
    q = torch.randn(B, nh, hd, device=DEV).to(DT)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32, device=DEV)
    out = kattn.decode_attention(q, cache, bt, ctx, hd ** -0.5, max_context=128, config=config)
    assert rel(out, _decode_reference(q, ref_cache, bt, ctx_lens)) < 1e-2


@pytest.mark.parametrize("page", [4, 12])
def test_decode_attention_refuses_blocks_it_cannot_read_whole(page):
    B, bt, cache = _paged_setup([5], 4, 4, 32, page)
    with pytest.raises(ValueError, match="blocks of"):
        kattn.decode_attention(torch.randn(B, 4, 32, device=DEV).to(DT), cache, bt,
                               torch.tensor([5], dtype=torch.int32, device=DEV), 1.0, max_context=16)


@pytest.mark.parametrize("nh,nkv,hd", [(4, 4, 64), (6, 2, 32)])
@pytest.mark.parametrize("fp8_cache", [0, 1, 2])
@pytest.mark.parametrize("config", [None, (128, 64, 8, 2), (64, 128, 4, 3), (128, 32, 4, 3)])
def test_varlen_attention_matches_torch_path(nh, nkv, hd, fp8_cache, config):
    """Every launch config (tiles wholly visible, the diagonal ones, past the context) gives the torch path's."""
    if fp8_cache and DEV != "cuda":
        pytest.skip("fp8 loads need a GPU (the interpreter has no e4m3)")
    page = 4
    # prefix + chunk, decode, fresh prompt, fresh short, a long chunk after a long prefix (several whole tiles)
    query_lens, ctx_lens = [5, 1, 70, 3, 150], [9, 17, 70, 3, 330]
    B, bt, cache = _paged_setup(ctx_lens, nh, nkv, hd, page)
    if fp8_cache:
        cache = cache.to(torch.float8_e4m3fn)
    T = sum(query_lens)
    q = torch.randn(T, nh, hd, device=DEV).to(DT)
    # the torch path writes this step's K/V itself: hand it the ones already in the cache
    slots = []
    for b, (ql, cl) in enumerate(zip(query_lens, ctx_lens)):
        for p in range(cl - ql, cl):
            slots.append(bt[b, p // page].item() * page + p % page)
    slots_t = torch.tensor(slots, dtype=torch.long, device=DEV)
    k_new = cache[0].view(-1, nkv, hd)[slots_t].clone()
    v_new = cache[1].view(-1, nkv, hd)[slots_t].clone()
    meta = AttentionMetadata(slot_mapping=slots_t, block_tables=bt.long(), context_lens=torch.tensor(
        ctx_lens, dtype=torch.int32, device=DEV), query_lens=query_lens, context_lens_host=ctx_lens,
        decode_only=False, max_context_len=max(ctx_lens))
    ref = paged_attention(q.float(), k_new.float(), v_new.float(), cache.float().clone(), meta, hd ** -0.5)
    seqs, firsts = varlen_query_blocks(query_lens, nh // nkv, hd, config[0] if config else 0)
    starts = torch.tensor([0, 5, 6, 76, 79, 229], dtype=torch.int32, device=DEV)
    out = kattn.varlen_attention(q, cache, bt, meta.context_lens, starts,
                                 torch.tensor(seqs, dtype=torch.int32, device=DEV),
                                 torch.tensor(firsts, dtype=torch.int32, device=DEV), hd ** -0.5, config=config,
                                 fp8_convert=fp8_cache or 1)
    assert rel(out, ref) < 1e-2


FAST = "on" if DEV == "cuda" else "interpret"  # the kernel mode of the Triton path here


def _tiny_config(path, **extra):
    import json

    cfg = {"vocab_size": 300, "hidden_size": 192, "intermediate_size": 320, "num_hidden_layers": 2,
           "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 256,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "llmserve_random_init": {"seed": 3, "std": 0.1}, **extra}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def _tiny_model(tmp_path, kernel_mode=FAST, **extra):
    """Random weights of a fixed seed: the same model for every kernel mode."""
    from llmserve.model.llama import load_model

    model = load_model(_tiny_config(tmp_path, **extra), DT, torch.device(DEV), kernel_mode)
    model.init_rope(256, torch.device(DEV))
    return model


@pytest.mark.parametrize("quant", [None, "int8_wo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_model_fast_path_matches_torch_path(tmp_path, quant, seed, pdl):
    """The whole decoder (fused norms, rotary + cache write, varlen and decode attention, weight-streaming
    linears) against the torch path on the same random weights: a prefill of three prompts, then a decode."""
    extra = {"quantization": {"mode": quant}} if quant else {}
    models = {"fast": _tiny_model(tmp_path, FAST, **extra), "torch": _tiny_model(tmp_path, "off", **extra)}
    assert models["fast"].kernels and not models["torch"].kernels
    lens, page = [9, 1, 20], 16
    meta = AttentionMetadata.for_prefill(lens, page, torch.device(DEV), group=3, head_dim=32)
    # Fixed ids, three draws: with fresh ids on every run, bf16 rounding once went over the bound (0.0209,
    # int8_wo, H200); fixed draws make a failure here one of the kernels, not of the draw.
    ids = torch.randint(0, 300, (sum(lens),), generator=torch.Generator().manual_seed(seed)).to(DEV)
    pos = torch.cat([torch.arange(n, device=DEV) for n in lens])
    results = {}
    for mode, model in models.items():
        if mode == "torch":
            meta.slot_mapping, meta.block_tables = meta.slot_mapping.long(), meta.block_tables.long()
        cache = torch.zeros(2, 2, 16, page, 2, 32, device=DEV, dtype=DT)
        with torch.inference_mode(), model.pdl_launches(pdl):
            prefill = model(ids, pos, cache, meta, None)
            # one decode token per sequence
            # positions 9, 1, 20: blocks 0 (of [0]), 1 (of [1]) and 3 (of [2, 3])
            dmeta = AttentionMetadata(
                slot_mapping=torch.tensor([9, page + 1, 3 * page + 4], device=DEV,
                                          dtype=torch.int32 if mode == "fast" else torch.long),
                block_tables=torch.tensor([[0, 0], [1, 0], [2, 3]], device=DEV, dtype=meta.block_tables.dtype),
                context_lens=torch.tensor([10, 2, 21], dtype=torch.int32, device=DEV),
                query_lens=[1, 1, 1], context_lens_host=[10, 2, 21], decode_only=True, max_context_len=21,
                context_bound=64)
            dec = model(torch.tensor([5, 6, 7], device=DEV), torch.tensor([9, 1, 20], device=DEV), cache, dmeta, None)
            # one sequence alone (one row: the batch-1 GEMV), position 10 of sequence 0
            one = AttentionMetadata(
                slot_mapping=torch.tensor([10], device=DEV, dtype=dmeta.slot_mapping.dtype),
                block_tables=dmeta.block_tables[:1], context_lens=torch.tensor([11], dtype=torch.int32, device=DEV),
                query_lens=[1], context_lens_host=[11], decode_only=True, max_context_len=11, context_bound=64)
            single = model(torch.tensor([8], device=DEV), torch.tensor([10], device=DEV), cache, one, None)
        results[mode] = (prefill, dec, single)
    for a, b in zip(results["fast"], results["torch"]):
        assert rel(a, b) < 2e-2


@pytest.mark.skipif(DEV != "cuda", reason="e4m3 needs a GPU")
def test_fp8_model_gives_the_same_logits_with_and_without_the_fused_quantization(tmp_path, monkeypatch):
    """The norms and the SiLU-mul that hand e4m3 rows to the fp8 linears change no bit of the model's output."""
    model = _tiny_model(tmp_path, FAST, quantization={"mode": "fp8"})
    lens, page = [9, 1, 20], 4
    meta = AttentionMetadata.for_prefill(lens, page, torch.device(DEV), group=3, head_dim=32)
    ids = torch.randint(0, 300, (sum(lens),), generator=torch.Generator().manual_seed(0)).to(DEV)
    pos = torch.cat([torch.arange(n, device=DEV) for n in lens])

    def run():
        cache = torch.zeros(2, 2, 16, page, 2, 32, device=DEV, dtype=DT)
        with torch.inference_mode():
            return model(ids, pos, cache, meta, None)

    fused_out = run()
    monkeypatch.setattr(qlinear.Fp8Linear, "takes_fp8_rows", lambda self, rows: False)
    monkeypatch.setattr(fused, "silu_mul_quant_fp8", lambda x, pdl=False: linear.quant_fp8_per_token(
        fused.silu_mul(x, pdl=pdl), pdl=pdl))
    assert torch.equal(fused_out, run())


@pytest.mark.parametrize("quant", [None, "int8_wo"])
def test_prefill_graphs_match_eager_steps(tmp_path, quant):
    """Prefill and mixed steps through PrefillGraphs (tokens padded to a bucket, sequence rows and attention work
    list padded; real CUDA graphs on a GPU, the same padded inputs run eagerly under the interpreter) against
    the eager model on a cache of its own: logits of the sampled rows, and the caches after the steps."""
    from types import SimpleNamespace

    from llmserve.engine.graph_inputs import StepInputs
    from llmserve.engine.prefill_graphs import PrefillGraphs

    model = _tiny_model(tmp_path, **({"quantization": {"mode": quant}} if quant else {}))
    page, prompt_lens = 16, [9, 14, 20]  # decode steps: the decode kernel reads blocks of 16 or more
    g = torch.Generator().manual_seed(0)
    full = [torch.randint(0, 300, (n + 2,), generator=g).tolist() for n in prompt_lens]
    tables = [[0], [1], [2, 3]]
    steps = [[(1, 0, 6)],  # a first chunk alone: nothing to sample
             [(0, 0, 9), (1, 6, 8)],  # a prompt, the rest of the chunked one
             [(2, 0, 20), (0, 9, 1), (1, 14, 1)],  # a prompt and two decodes
             [(2, 20, 1)]]  # one decode: fewer sequences than the step before
    caches = {k: torch.zeros(2, 2, 16, page, 2, 32, device=DEV, dtype=DT) for k in ("eager", "graph")}
    graphs = PrefillGraphs(model, caches["graph"], max_tokens=48, max_seqs=4, width=8, max_model_len=256)
    assert graphs.buckets == [16, 32, 48]
    with torch.inference_mode():
        if DEV == "cuda":
            graphs.capture_all(torch.cuda.graph_pool_handle())
        for spec in steps:
            seqs = [SimpleNamespace(tokens=full[i][:max(prompt_lens[i], start + n)], num_computed_tokens=start,
                                    block_table=tables[i]) for i, start, n in spec]
            step = StepInputs.of(seqs, [n for _, _, n in spec], page)
            meta = AttentionMetadata.for_step(step, torch.device(DEV), torch.int32, 256, group=3, head_dim=32)
            ref = model(torch.tensor(step.ids, device=DEV), torch.tensor(step.positions, device=DEV),
                        caches["eager"], meta, torch.tensor(step.sample_rows, dtype=torch.long, device=DEV))
            out = graphs.run(step)
            if not step.sample_rows:
                assert out is None
                continue
            assert out.shape == ref.shape == (len(step.sample_rows), 300)
            assert rel(out, ref) < 1e-2
    assert rel(caches["graph"], caches["eager"]) < 1e-2
    assert caches["graph"][:, :, 4:].abs().sum() == 0  # padding rows wrote nothing (slot -1)


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


class _Spy:
    """Wraps the kernel wrappers that take `pdl`: records (phase, wrapper, pdl) of the model's calls (not those
    of one wrapper to another); `plain`: launches without PDL (Triton's interpreter has no griddepcontrol)."""

    def __init__(self, monkeypatch, plain: bool = True):
        self.calls: list[tuple] = []
        self.phase = None
        self.depth = 0
        for mod, name in ((fused, "rmsnorm"), (fused, "rope_and_cache"), (fused, "silu_mul"), (linear, "wmm"),
                          (linear, "gemv"), (linear, "quant_fp8_per_token")):
            monkeypatch.setattr(mod, name, self._wrap(name, getattr(mod, name), plain))

    def _wrap(self, name, fn, plain):
        def spy(*args, pdl=False, **kw):
            if not self.depth:
                self.calls.append((self.phase, name, pdl))
            self.depth += 1
            try:
                return fn(*args, pdl=pdl and not plain, **kw)
            finally:
                self.depth -= 1

        return spy


@pytest.mark.parametrize("quant", [None, "int8_wo"])
def test_pdl_reaches_the_linear_and_fused_kernels_only_inside_pdl_launches(tmp_path, monkeypatch, quant):
    model = _tiny_model(tmp_path, **({"quantization": {"mode": quant}} if quant else {}))
    spy = _Spy(monkeypatch)
    page = 16
    meta = AttentionMetadata(slot_mapping=torch.tensor([1, 17, 33], dtype=torch.int32, device=DEV),
                             block_tables=torch.tensor([[0], [1], [2]], dtype=torch.int32, device=DEV),
                             context_lens=torch.tensor([2, 2, 2], dtype=torch.int32, device=DEV), query_lens=[1] * 3,
                             context_lens_host=[2] * 3, decode_only=True, max_context_len=2, context_bound=8)
    ids = torch.tensor([5, 6, 7], device=DEV)
    cache = torch.zeros(2, 2, 4, page, 2, 32, device=DEV, dtype=DT)
    with torch.inference_mode():
        for phase, on in (("before", False), ("inside", True), ("after", False)):
            spy.phase = phase
            if on:
                with model.pdl_launches():
                    assert model.launch.pdl
                    model(ids, ids, cache, meta, None)
            else:
                model(ids, ids, cache, meta, None)
    assert not model.launch.pdl
    names = {name for _, name, _ in spy.calls}
    assert {"rmsnorm", "rope_and_cache", "wmm"} <= names
    for phase, name, pdl in spy.calls:
        assert pdl == (phase == "inside"), (phase, name)
    torch_model = _tiny_model(tmp_path / "torch", "off")
    with torch_model.pdl_launches():  # the torch path has no launches to change
        assert not torch_model.launch.pdl


@pytest.mark.skipif(DEV != "cuda", reason="CUDA graphs need a GPU")
def test_runner_captures_pdl_only_into_decode_graphs_of_up_to_16_rows(tmp_path, monkeypatch):
    """Eager warm-up, prefill graphs and decode graphs over 16 rows launch plainly; the decode graphs of up to 16
    rows with programmatic dependent launch (where the GPU has it). Then the runner's public graph names."""
    from llmserve.config import ServingConfig
    from llmserve.engine import model_runner
    from llmserve.engine.prefill_graphs import PrefillGraphs

    if not model_runner.use_pdl("auto", torch.device(DEV)):
        pytest.skip("programmatic dependent launch needs compute capability 9.0+")
    spy = _Spy(monkeypatch, plain=False)

    def phased(phase, fn):
        def run(self, *args, **kw):
            before, spy.phase = spy.phase, phase(*args)
            try:
                return fn(self, *args, **kw)
            finally:
                spy.phase = before

        return run

    runner_cls = model_runner.ModelRunner
    monkeypatch.setattr(runner_cls, "_warmup", phased(lambda: ("warmup", 0), runner_cls._warmup))
    monkeypatch.setattr(runner_cls, "_decode_forward",
                        phased(lambda ids, *a: ("decode", ids.shape[0]), runner_cls._decode_forward))
    monkeypatch.setattr(PrefillGraphs, "_layers", phased(lambda T: ("prefill", T), PrefillGraphs._layers))
    cfg = ServingConfig.of(dtype=str(DT).removeprefix("torch."), max_batch_size=32, max_num_tokens=64,
                        prefill_graph_max_tokens=32, kv_cache_memory_bytes=16 << 20, pdl="auto")
    runner = model_runner.ModelRunner(cfg, _tiny_config(tmp_path))
    assert runner.fast and runner.pdl and not runner.model.launch.pdl
    seen = {}
    for phase, _, pdl in spy.calls:
        assert phase is not None
        assert pdl == (phase[0] == "decode" and phase[1] <= 16), phase
        seen.setdefault(phase[0], set()).add(pdl)
    assert seen == {"warmup": {False}, "prefill": {False}, "decode": {True, False}}
    assert runner.decode_graph_sizes == [1, 2, 4, 8, 16, 32]
    assert runner.graph_for(3) is runner.graph_for(4) is not runner.graph_for(2)
    runner.drop_graphs()
    assert runner.decode_graph_sizes == [] and runner.can_launch(64)
    runner.capture_graphs()
    assert runner.decode_graph_sizes == [1, 2, 4, 8, 16, 32] and not runner.model.launch.pdl



@pytest.mark.parametrize("block", [8, 24])
def test_engine_refuses_cache_blocks_the_kernels_cannot_read(tmp_path, monkeypatch, block):
    """On the Triton path the engine stops at start, naming kv_block_size, before it allocates the cache."""
    from llmserve.config import ConfigError, ServingConfig
    from llmserve.engine import model_runner

    monkeypatch.setenv(kernels.ENV, FAST)
    cfg = ServingConfig.of(dtype=str(DT).removeprefix("torch."), kv_block_size=block, kv_cache_memory_bytes=16 << 20)
    with pytest.raises(ConfigError, match=f"kv_block_size: {block} tokens"):
        model_runner.ModelRunner(cfg, _tiny_config(tmp_path))

# --- 4-bit group weights (llmserve/kernels/int4.py) against their torch twin, Int4Linear's reference path ---

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
@pytest.mark.parametrize("M", [1, 3])
def test_int4_kernels_small_case(group, symmetric, M):
    """A small shape everywhere the kernels run (GPU, or the CPU interpreter where triton is installed)."""
    _int4_check(M, 40, 3 * 128, group, symmetric, gated=M == 1)


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


@pytest.mark.parametrize("quant", ["int4_sym", "int4_asym"])
def test_model_fast_path_matches_torch_path_int4(tmp_path, quant, pdl):
    """The whole decoder on 4-bit weights (random, quantized at load in groups of 64: the tiny model's K are
    192 and 320), fast path against torch path, as test_model_fast_path_matches_torch_path does."""
    test_model_fast_path_matches_torch_path(tmp_path, quant, 0, pdl)
