from llmserve.engine.api import EngineRequest
from llmserve.engine.block_manager import BlockManager
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.sequence import Sequence


def seq(tokens, rid="r"):
    return Sequence(EngineRequest(rid, tokens, SamplingParams()), list(tokens), len(tokens), len(tokens) + 16)


def test_allocation_and_free_account_every_block():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = seq(list(range(10)))
    assert bm.allocate_prompt(a, budget=100)
    assert len(a.block_table) == 3 and bm.num_free == 5
    bm.grow(a, 13)
    assert len(a.block_table) == 4 and bm.num_free == 4
    bm.free_sequence(a)
    assert bm.num_free == 8 and a.block_table == []


def test_allocation_refused_without_partial_effects():
    bm = BlockManager(num_blocks=2, block_size=4, enable_prefix_caching=False)
    big = seq(list(range(20)))
    assert not bm.allocate_prompt(big, budget=100)
    assert bm.num_free == 2 and big.block_table == []


def test_chunk_budget_limits_the_first_allocation():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = seq(list(range(20)))
    assert bm.allocate_prompt(a, budget=6)
    assert len(a.block_table) == 2


def test_prefix_blocks_are_shared_and_last_token_recomputed():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(12)), "a")
    bm.allocate_prompt(a, budget=100)
    a.num_computed_tokens = 12
    bm.register_full_blocks(a)
    b = seq(list(range(12)), "b")  # identical prompt: 2 blocks reused, the third recomputed
    assert bm.allocate_prompt(b, budget=100)
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert b.num_computed_tokens == 8 and b.num_cached_tokens == 8
    assert bm.ref_count[a.block_table[0]] == 2
    c = seq([0, 1, 2, 3, 99, 5, 6, 7, 8], "c")  # diverges in block 1: only block 0 shared
    bm.allocate_prompt(c, budget=100)
    assert c.num_cached_tokens == 4
    for s in (a, b, c):
        bm.free_sequence(s)
    assert bm.num_free == 8 and all(r == 0 for r in bm.ref_count)
    d = seq(list(range(12)), "d")  # freed blocks keep their hash until reused
    bm.allocate_prompt(d, budget=100)
    assert d.num_cached_tokens == 8
    assert bm.hit_blocks == 2 + 1 + 2
