import torch

from llmserve.engine.sampler import SamplingBatch, sample, top_k_top_p_min_p_mask
from llmserve.engine.sampling_params import SamplingParams


def _mask(logits, k=0, p=1.0, min_p=0.0):
    out = top_k_top_p_min_p_mask(torch.tensor([logits]), torch.tensor([k]), torch.tensor([p]), torch.tensor([min_p]))
    return torch.isfinite(out[0]).tolist()


def test_top_k_keeps_exactly_k_most_likely():
    assert _mask([1.0, 4.0, 3.0, 2.0], k=2) == [False, True, True, False]
    assert _mask([1.0, 4.0, 3.0, 2.0], k=0) == [True] * 4


def test_top_p_keeps_smallest_prefix_reaching_mass():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().tolist()
    assert _mask(logits, p=0.5) == [True, False, False, False]
    assert _mask(logits, p=0.8) == [True, True, False, False]
    assert _mask(logits, p=0.81) == [True, True, True, False]
    assert _mask(logits, p=1.0) == [True] * 4


def test_min_p_relative_to_top_token():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().tolist()
    assert _mask(logits, min_p=0.5) == [True, True, False, False]


def test_masks_combine_and_never_empty_a_row():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().tolist()
    assert _mask(logits, k=3, p=0.6) == [True, True, False, False]
    assert _mask(logits, p=1e-6, min_p=1.0, k=1) == [True, False, False, False]


def _batch(params, outputs=None, generators=None):
    n = len(params)
    outputs = outputs or [[] for _ in range(n)]
    return SamplingBatch(params, outputs, [0] * n, generators or [None] * n, [[] for _ in range(n)])


def test_penalties():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.0]])
    _batch([SamplingParams(repetition_penalty=2.0)], outputs=[[0, 1]]).penalise(logits)
    assert logits.tolist() == [[1.0, -4.0, 1.0, 0.0]]
    logits = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    _batch([SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)], outputs=[[1, 1, 2]]).penalise(logits)
    assert logits.tolist() == [[2.0, 1.0, 1.25, 2.0]]


def test_greedy_rows_take_argmax_and_seeded_rows_repeat():
    logits = torch.randn(3, 100)
    greedy = SamplingParams(temperature=0.0)
    seeded = SamplingParams(temperature=1.0, seed=7)

    def draw():
        gens = [None, torch.Generator().manual_seed(7), None]
        return sample(logits.clone(), _batch([greedy, seeded, SamplingParams(temperature=1.0)], generators=gens))[0]

    a, b = draw(), draw()
    assert a[0] == b[0] == int(logits[0].argmax())
    assert a[1] == b[1]


def test_sampling_follows_the_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).log_softmax(-1).repeat(4000, 1)
    probs = torch.tensor([0.0, 1.0, 2.0]).softmax(-1)
    toks, _ = sample(logits, _batch([SamplingParams(temperature=1.0)] * 4000))
    freq = torch.bincount(torch.tensor(toks), minlength=3).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03)


def test_logprobs_of_chosen_token_and_top_n():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    toks, lps = sample(logits.clone(), _batch([SamplingParams(temperature=0.0, logprobs=2)]))
    ref = logits.log_softmax(-1)[0]
    assert toks == [1]
    assert abs(lps[0].logprob - float(ref[1])) < 1e-6
    assert set(lps[0].top) == {1, 2}


def test_16_bit_logits_sample_as_their_float32_upcast():
    """The decode graphs hand the sampler the lm_head's bf16 logits (their argmax needs no float32 copy): sampling,
    penalties, seeds and logprobs are those of the same values in float32, and the caller's tensor is untouched."""
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    params = [SamplingParams(temperature=0.0, logprobs=3), SamplingParams(temperature=0.9, seed=5, top_p=0.8),
              SamplingParams(temperature=0.0, presence_penalty=1.5), SamplingParams(temperature=1.2, seed=9, top_k=20)]

    def run(x):
        gens = [None, torch.Generator().manual_seed(5), None, torch.Generator().manual_seed(9)]
        return sample(x, _batch(params, outputs=[[], [], [int(logits[2].float().argmax())], []], generators=gens))

    before = logits.clone()
    toks, lps = run(logits)
    assert (toks, lps) == run(logits.float())
    assert torch.equal(logits, before) and toks[0] == int(logits[0].float().argmax())
    assert toks[2] != int(logits[2].float().argmax())  # the penalty moved it


def test_the_mask_from_the_first_ranks_equals_the_whole_vocabulary_sort():
    """top_k_top_p_min_p_mask ranks only `candidates` tokens a row (topk, not a sort of the whole vocabulary): rows
    whose cut falls within them, rows sorted whole because it falls further (flat rows, large top-k, tiny
    min-p), and rows with no mask in the same batch all equal the whole-vocabulary sort's answer."""
    from llmserve.engine.sampler import _mask_sorted

    gen = torch.Generator().manual_seed(0)
    rows = [(0, 0.9, 0.0, 3.0), (40, 1.0, 0.0, 1.0), (0, 1.0, 0.05, 2.0), (5, 0.5, 0.1, 1.0), (0, 0.99, 0.0, 0.1),
            (300, 1.0, 0.0, 1.0), (0, 1.0, 1e-6, 1.0), (0, 1.0, 0.0, 1.0), (-1, 0.8, 0.0, 4.0)]
    logits = torch.stack([torch.randn(500, generator=gen) * scale for *_, scale in rows])
    top_k = torch.tensor([r[0] for r in rows])
    top_p, min_p = torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows])
    ref = _mask_sorted(logits, top_k, top_p, min_p)
    ref[7] = logits[7]  # a row with no mask keeps its logits
    for c in (16, 64, 501):
        assert torch.equal(torch.isfinite(top_k_top_p_min_p_mask(logits, top_k, top_p, min_p, c)), torch.isfinite(ref))
        out = top_k_top_p_min_p_mask(logits, top_k, top_p, min_p, c)
        assert torch.equal(out[torch.isfinite(out)], ref[torch.isfinite(ref)])


def test_the_candidates_are_one_past_the_largest_top_k_when_every_masked_row_sets_one():
    from llmserve.engine.sampler import CANDIDATES, candidates

    assert candidates([SamplingParams(top_k=40), SamplingParams(top_k=8, top_p=0.9), SamplingParams()]) == 41
    assert candidates([SamplingParams(top_k=40), SamplingParams(top_p=0.9)]) == CANDIDATES
    assert candidates([SamplingParams(temperature=0.7)]) == CANDIDATES


def _penalties_row_by_row(logits, params, outputs, all_tokens):
    """The per-row form the device-side penalties replaced (the reference they must equal)."""
    for i, p in enumerate(params):
        if p.repetition_penalty != 1.0 and all_tokens[i]:
            ids = torch.tensor(sorted(set(all_tokens[i])))
            row = logits[i, ids]
            logits[i, ids] = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and outputs[i]:
            counts = torch.zeros(logits.shape[1]).index_add_(0, torch.tensor(outputs[i]), torch.ones(len(outputs[i])))
            logits[i] -= p.presence_penalty * (counts > 0).float() + p.frequency_penalty * counts


PENALISED = [SamplingParams(repetition_penalty=1.3), SamplingParams(), SamplingParams(presence_penalty=0.7),
             SamplingParams(frequency_penalty=-0.4, repetition_penalty=0.8),
             SamplingParams(presence_penalty=1.0, frequency_penalty=0.5), SamplingParams(repetition_penalty=1.1)]


def test_penalties_of_every_row_at_once_equal_those_applied_row_by_row():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 50, generator=gen) * 3
    outputs = [[1, 1, 7], [3], [4, 4, 4, 9], [2, 2, 49], [], [0, 5, 5]]
    tokens = [[10, 11, 10] + o for o in outputs]
    ref = logits.clone()
    _penalties_row_by_row(ref, PENALISED, outputs, tokens)
    SamplingBatch(PENALISED, tokens, [3] * 6, [None] * 6, [[]] * 6).penalise(logits)
    assert torch.equal(logits, ref)


class Owner:
    """A sequence as the token history sees it: a key with a status."""

    def __init__(self):
        self.status = "running"


def test_the_token_history_uploads_only_new_tokens_and_reuses_finished_and_absent_owners_slots():
    """Steps of growing, penalised rows through one TokenHistory of 3 slots: each step's penalties equal the
    row-by-row form; a row's tokens go up once, then only its new ones; a finished owner's slot is taken first,
    then that of one not in the step (whose tokens go up whole again when it comes back)."""
    from llmserve.engine.penalties import TokenHistory

    gen = torch.Generator().manual_seed(2)
    history = TokenHistory(3, torch.device("cpu"))
    owners = [Owner() for _ in range(4)]
    tokens = [torch.randint(0, 300, (n,), generator=gen).tolist() for n in (40, 7, 300, 12)]
    penalised = [p for p in PENALISED if p != SamplingParams()]
    uploaded = []
    for step, rows in enumerate([[0, 1, 2], [0, 1, 2], [0, 3, 2], [1, 3], [1, 3, 2]]):
        owners[1].status = "finished" if step == 2 else "running"
        for r in rows:
            tokens[r].append(step)
        before = sum(history.length)
        logits = torch.randn(len(rows), 320, generator=gen)
        params = [penalised[(r + step) % len(penalised)] for r in rows]
        ref = logits.clone()
        _penalties_row_by_row(ref, params, [tokens[r][5:] for r in rows], [tokens[r] for r in rows])
        SamplingBatch(params, [tokens[r] for r in rows], [5] * len(rows), [None] * len(rows), [[]] * len(rows),
                      [len(tokens[r]) for r in rows], [owners[r] for r in rows], history).penalise(logits)
        assert torch.equal(logits, ref), step
        uploaded.append(sum(history.length) - before)
        assert [history.owner.index(owners[r]) for r in rows] == [history.slot_of[owners[r]] for r in rows]
    # step 2: owner 3 takes finished owner 1's slot (its 13 tokens up, owner 1's 9 gone); step 3: owner 1 comes back
    # and takes owner 0's, absent from the step (10 up, owner 0's 43 gone); otherwise a token a row
    assert history.owner == [owners[1], owners[3], owners[2]]
    assert uploaded == [41 + 8 + 301, 3, 13 - 9 + 2, 10 - 43 + 1, 3]


def test_logprobs_of_rows_asking_different_counts_match_a_row_at_a_time():
    logits = torch.randn(4, 60, generator=torch.Generator().manual_seed(4))
    params = [SamplingParams(temperature=0.0, logprobs=3), SamplingParams(temperature=0.0),
              SamplingParams(temperature=0.0, logprobs=0), SamplingParams(temperature=0.0, logprobs=6)]
    toks, lps = sample(logits.clone(), _batch(params))
    ref = logits.log_softmax(-1)
    assert lps[1] is None and lps[2].top == {}
    for i in (0, 2, 3):
        vals, ids = ref[i].topk(params[i].logprobs)
        assert lps[i].token_id == toks[i] and lps[i].logprob == float(ref[i, toks[i]])
        assert lps[i].top == dict(zip(ids.tolist(), vals.tolist()))
