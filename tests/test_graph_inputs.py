"""The decode graphs' host inputs (CPU: the buffers without CUDA) against the eager step's inputs, step after step."""

import random

from llmserve.engine.api import EngineRequest
from llmserve.engine.block_manager import BlockManager
from llmserve.engine.graph_inputs import DecodeInputs, StepInputs
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.sequence import Sequence, Status

BS, MAX_B, WIDTH = 4, 8, 32
SCRATCH = 200


def _seq(rid: int, n: int, blocks: BlockManager) -> Sequence:
    tokens = [rid * 100 + j for j in range(n)]
    seq = Sequence(EngineRequest(str(rid), tokens, SamplingParams()), list(tokens), n, 60)
    assert blocks.allocate_prompt(seq, 1000)
    seq.num_computed_tokens = n - 1  # its last prompt token is the next step's input
    seq.status = Status.RUNNING
    return seq


def _check(h: DecodeInputs, seqs: list[Sequence], src: list[int], S: int) -> None:
    ref = StepInputs.of(seqs, [1] * len(seqs), BS)
    B = len(seqs)
    assert h.ids[:B].tolist() == ref.ids
    assert h.pos[:B].tolist() == ref.positions
    assert h.slot[:B].tolist() == ref.slots
    assert h.ctx[:B].tolist() == ref.context_lens
    assert h.src[:B].tolist() == src
    for i, table in enumerate(ref.tables):
        assert h.tables.bt[i, :len(table)].tolist() == table
    for i in range(B, S):  # padding rows: the scratch block, a one-token context, no source row
        assert (h.slot[i], h.ctx[i], h.src[i], h.tables.bt[i, 0]) == (SCRATCH * BS, 1, -1, SCRATCH)


def test_filled_inputs_match_the_eager_step_as_tables_grow_rows_shift_and_tables_are_replaced():
    rng = random.Random(0)
    blocks = BlockManager(180, BS, enable_prefix_caching=False)
    h = DecodeInputs(5 * MAX_B + MAX_B * WIDTH, MAX_B, WIDTH, SCRATCH, BS)
    seqs = [_seq(i, rng.randint(1, 9), blocks) for i in range(6)]
    next_id = 6
    for _ in range(60):
        S = next(s for s in (1, 2, 4, 8) if s >= len(seqs))
        src = [rng.choice([-1, i]) for i in range(len(seqs))]
        h.fill(seqs, src, S)
        _check(h, seqs, src, S)
        for seq in seqs:  # the step's token, then room for the next one (a new block every BS steps)
            seq.tokens.append(rng.randint(0, 999))
            seq.num_computed_tokens += 1
            blocks.grow(seq, seq.num_computed_tokens + 1)
        event = rng.random()
        if event < 0.2 and len(seqs) > 1:  # one ends: the rows after it shift up
            blocks.free_sequence(seqs.pop(rng.randrange(len(seqs))))
        elif event < 0.35:  # one is recomputed from scratch: a new table list, maybe other blocks
            i = rng.randrange(len(seqs))
            old = seqs[i]
            blocks.free_sequence(old)
            old.num_computed_tokens = 0
            assert blocks.allocate_prompt(old, 1000)
            old.num_computed_tokens = len(old.tokens) - 1
        elif event < 0.6 and len(seqs) < MAX_B:  # one is admitted at the end
            seqs.append(_seq(next_id, rng.randint(1, 9), blocks))
            next_id += 1
        if rng.random() < 0.3:
            rng.shuffle(seqs)  # rows taken by other sequences
