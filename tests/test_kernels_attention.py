"""The paged attention kernels (llmserve/kernels/attention.py) against torch: decode (split-K, one or two cache
blocks a tile, an fp8 cache) and varlen (prefill, chunked prefill, mixed steps). On a GPU, or under Triton's
interpreter on the CPU where triton is installed (see test_kernels.py)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from test_kernels import DEV, DT, rel  # noqa: E402

from llmserve.kernels import attention as kattn  # noqa: E402
from llmserve.kernels.shapes import varlen_query_blocks  # noqa: E402
from llmserve.kernels.varlen import varlen_attention  # noqa: E402
from llmserve.model.attention import AttentionMetadata, fresh_first_blocks, paged_attention  # noqa: E402


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


@pytest.mark.parametrize("config", [(1, 32, 1, 3), (4, 32, 1, 3)])  # whole contexts, or partitions merged
@pytest.mark.parametrize("count", [0, 3, 5])
def test_decode_attention_of_rows_counted_on_the_device_leaves_the_others_alone(monkeypatch, config, count):
    """A prefill graph's decode launch: only the leading rows its device count names are attended (a fixed grid, two
    programs a KV head here, walks them), the other rows (another kernel's output) are left as they were."""
    monkeypatch.setattr(kattn, "ROW_PROGRAMS", 2)
    nh, nkv, hd = 8, 2, 32
    ctx_lens = [40, 9, 17, 64, 3, 20]
    B, bt, cache = _paged_setup(ctx_lens, nh, nkv, hd, page=16)
    q = torch.randn(B, nh, hd, device=DEV).to(DT)
    out = torch.full((B, nh, hd), 7.0, device=DEV).to(DT)
    kattn.decode_attention(q, cache, bt, torch.tensor(ctx_lens, dtype=torch.int32, device=DEV), hd ** -0.5,
                           max_context=64, config=config, out=out,
                           rows=torch.tensor([count], dtype=torch.int32, device=DEV))
    assert bool((out[count:] == 7.0).all())
    if count:
        assert rel(out[:count], _decode_reference(q[:count], cache, bt[:count], ctx_lens[:count])) < 1e-2


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
    out = varlen_attention(q, cache, bt, meta.context_lens, starts,
                                 torch.tensor(seqs, dtype=torch.int32, device=DEV),
                                 torch.tensor(firsts, dtype=torch.int32, device=DEV), hd ** -0.5, config=config,
                                 fp8_convert=fp8_cache or 1)
    assert rel(out, ref) < 1e-2


def test_mixed_step_split_between_the_decode_and_varlen_kernels_matches_one_varlen_launch():
    """A mixed step whose leading one-token rows go to the decode kernel (AttentionMetadata.split) attends as the one
    varlen launch over every row does; the split needs at least split_rows leading one-token rows and a row after."""
    from types import SimpleNamespace

    from llmserve.model.attention import paged_attention_cached

    nh, nkv, hd, page = 6, 2, 32, 16
    query_lens, ctx_lens = [1, 1, 1, 20, 1, 7], [40, 17, 65, 20, 9, 50]  # decodes, a prompt, a decode, a chunk
    B, bt, cache = _paged_setup(ctx_lens, nh, nkv, hd, page)
    step = SimpleNamespace(slots=[0] * sum(query_lens), tables=[[int(b) for b in row] for row in bt],
                           context_lens=ctx_lens, query_lens=query_lens)
    q = torch.randn(sum(query_lens), nh, hd, device=DEV).to(DT)

    def meta(split_rows):
        return AttentionMetadata.for_step(step, torch.device(DEV), torch.int32, 128, group=nh // nkv, head_dim=hd,
                                          split_rows=split_rows)

    one, two = meta(0), meta(2)
    assert (one.split, two.split, meta(4).split) == (0, 3, 0)
    # the fresh prompt (20 of 20 tokens) beside chunks and decodes: its block leads the work list
    assert one.fresh_blocks == two.fresh_blocks == 1 and one.qb_seq[0] == 3 and two.qb_seq[0] == 0
    split, whole = (paged_attention_cached(q, cache, m, hd ** -0.5) for m in (two, one))
    assert rel(split, whole) < 1e-3
    assert len(two.query_start) == B - 3 + 1 and two.query_start[-1] == sum(query_lens) - 3
    step.query_lens = [1] * B
    assert meta(1).split == 0  # decode-only: the decode path


@pytest.mark.parametrize("fp8_cache", [0, 1, 2])
@pytest.mark.parametrize("config", [None, (128, 32, 4, 3)])
@pytest.mark.parametrize("new_loads", [1, 2])  # pointer loads, TMA
@pytest.mark.parametrize("overlap", [False, True])
def test_varlen_fresh_prompts_attend_over_this_steps_kv_and_the_others_over_the_cache(fp8_cache, config, new_loads,
                                                                                     overlap):
    """With new_kv, a fresh prompt (context = its new tokens) reads its K/V from them, unrounded, whatever the cache
    holds; a chunk after a prefix and a decode read the cache (on a GPU, `overlap`: on a side stream beside the
    fresh prompts' launch): as the torch path, which rounds only what it gathers from an fp8 cache."""
    if fp8_cache and DEV != "cuda":
        pytest.skip("fp8 loads need a GPU (the interpreter has no e4m3)")
    nh, nkv, hd, page = 6, 2, 32, 4
    query_lens, ctx_lens = [70, 5, 3, 1, 150], [70, 9, 3, 17, 150]  # fresh, a chunk, fresh, a decode, fresh
    B, bt, cache = _paged_setup(ctx_lens, nh, nkv, hd, page)
    kv_dtype = torch.float8_e4m3fn if fp8_cache else DT
    T = sum(query_lens)
    seq_of = torch.repeat_interleave(torch.arange(B), torch.tensor(query_lens)).tolist()
    fresh = torch.tensor([query_lens[b] == ctx_lens[b] for b in seq_of], device=DEV)
    qkv = torch.randn(T, nh + 2 * nkv, hd, device=DEV).to(DT)
    qkv[~fresh, nh:] = qkv[~fresh, nh:].to(kv_dtype).to(DT)  # the cached rows' K/V as the cache will hold them
    q, k_new, v_new = qkv[:, :nh], qkv[:, nh:nh + nkv], qkv[:, nh + nkv:]
    slots = torch.tensor([bt[b, p // page].item() * page + p % page
                          for b, (ql, cl) in enumerate(zip(query_lens, ctx_lens)) for p in range(cl - ql, cl)],
                         dtype=torch.long, device=DEV)
    meta = AttentionMetadata(slot_mapping=slots, block_tables=bt.long(), context_lens=torch.tensor(
        ctx_lens, dtype=torch.int32, device=DEV), query_lens=query_lens, context_lens_host=ctx_lens,
        decode_only=False, max_context_len=max(ctx_lens))
    cache = cache.to(kv_dtype)
    ref = paged_attention(q.float(), k_new.float(), v_new.float(), cache.float(), meta, hd ** -0.5)
    # as the fused rotary kernel writes them, through the bytes (index assignment has no e4m3 kernel everywhere)
    raw = cache.view(torch.uint8) if fp8_cache else cache
    for i, t in enumerate((k_new, v_new)):
        raw.view(2, -1, nkv, hd)[i][slots] = t.to(kv_dtype).view(raw.dtype)
    raw.view(2, -1, nkv, hd)[:, slots[fresh]] = 0  # stale: the fresh prompts must not read it
    seqs, firsts = varlen_query_blocks(query_lens, nh // nkv, hd, config[0] if config else 0)
    order = sorted(range(len(seqs)), key=lambda i: query_lens[seqs[i]] != ctx_lens[seqs[i]])  # fresh ones first
    fresh_blocks = sum(query_lens[s] == ctx_lens[s] for s in seqs)
    starts = torch.tensor([0, 70, 75, 78, 79, 229], dtype=torch.int32, device=DEV)
    out = varlen_attention(q, cache, bt, meta.context_lens, starts,
                           torch.tensor([seqs[i] for i in order], dtype=torch.int32, device=DEV),
                           torch.tensor([firsts[i] for i in order], dtype=torch.int32, device=DEV), hd ** -0.5,
                           config=config, fp8_convert=fp8_cache or 1, new_kv=qkv[:, nh:], new_loads=new_loads,
                           fresh_blocks=fresh_blocks, overlap=overlap)
    assert rel(out, ref) < 1e-2


@pytest.mark.parametrize("programs", [1, 3, 64])
@pytest.mark.parametrize("own_kv", [False, True])
def test_persistent_varlen_walks_only_the_bounded_entries_of_a_padded_work_list(programs, own_kv):
    """A prefill graph's work list is padded with entries of an empty sequence; the persistent launches walk the
    entries within the bounds (0, fresh, real: snake order, any number of programs, more or fewer than entries),
    fresh prompts' over this step's K/V when given (own_kv), and give the one-program-an-entry launches' output (bit
    for bit under the interpreter)."""
    nh, nkv, hd, page = 6, 2, 32, 4
    query_lens, ctx_lens = [5, 1, 70, 3, 150], [9, 17, 70, 3, 330]
    B, bt, cache = _paged_setup(ctx_lens, nh, nkv, hd, page)
    T = sum(query_lens)
    qkv = torch.randn(T, nh + 2 * nkv, hd, device=DEV).to(DT)
    seqs, firsts, fresh = fresh_first_blocks(query_lens, ctx_lens, nh // nkv, hd)
    assert fresh == 3  # the 70-token prompt's two blocks and the 3-token one's
    starts = [0, 5, 6, 76, 79, 229]
    i32 = {"dtype": torch.int32, "device": DEV}
    kw = {"new_kv": qkv[:, nh:], "new_loads": 1} if own_kv else {}
    exact = varlen_attention(qkv[:, :nh], cache, bt, torch.tensor(ctx_lens, **i32), torch.tensor(starts, **i32),
                             torch.tensor(seqs, **i32), torch.tensor(firsts, **i32), hd ** -0.5, fresh_blocks=fresh,
                             **kw)
    pad = len(seqs) + 37  # entries past the real ones name row B: no tokens, no context
    out = varlen_attention(qkv[:, :nh], cache, torch.cat([bt, bt[:1]]), torch.tensor(ctx_lens + [0], **i32),
                           torch.tensor(starts + [T], **i32), torch.tensor(seqs + [B] * (pad - len(seqs)), **i32),
                           torch.tensor(firsts + [0] * (pad - len(seqs)), **i32), hd ** -0.5,
                           work_bounds=torch.tensor([0, fresh, len(seqs)], **i32), programs=programs, **kw)
    assert torch.equal(out, exact) if DEV == "cpu" else rel(out, exact) < 1e-3  # another compilation on a GPU
