"""The host side of the prefill/mixed-step CUDA graphs: token buckets and the padded inputs a step writes.

The graphs themselves, and the padded inputs run through the model, are checked against eager steps in
tests/test_kernels_model.py (on a GPU, or under Triton's interpreter)."""

from types import SimpleNamespace

import pytest
import torch

from llmserve.config import ConfigError, ServingConfig
from llmserve.engine.graph_inputs import StepInputs
from llmserve.engine.launcher import carried_rows
from llmserve.engine.prefill_graphs import PrefillGraphs, token_buckets


def test_token_buckets_pad_by_at_most_half_from_128_tokens():
    assert token_buckets(1024) == [16, 32, 64, 128, 192, 256, 384, 512, 768, 1024]
    assert token_buckets(100) == [16, 32, 64, 100]
    buckets = token_buckets(8192)
    for n in range(129, 8193, 37):
        assert next(b for b in buckets if b >= n) <= 1.5 * n


def _graphs(max_tokens=48, max_seqs=4, width=8):
    args = SimpleNamespace(num_heads=4, num_kv_heads=4, head_dim=64)  # 64 query rows per work-list block
    return PrefillGraphs(SimpleNamespace(args=args), torch.zeros(1), max_tokens, max_seqs, width, 256)


def _step(spec, page=4):
    """spec: (tokens, computed, new, block table) per sequence."""
    seqs = [SimpleNamespace(tokens=t, num_computed_tokens=c, block_table=b) for t, c, _, b in spec]
    return StepInputs.of(seqs, [n for _, _, n, _ in spec], page)


def test_step_inputs_flatten_the_batch():
    step = _step([(list(range(10, 19)), 0, 9, [5, 6, 7]), (list(range(20, 34)), 6, 4, [1, 2, 3, 4])])
    assert step.ids == list(range(10, 19)) + list(range(26, 30))
    assert step.positions == list(range(9)) + [6, 7, 8, 9]
    assert step.slots[:5] == [20, 21, 22, 23, 24] and step.slots[9:] == [10, 11, 12, 13]
    assert step.query_lens == [9, 4] and step.context_lens == [9, 10]
    assert step.sample_rows == [8]  # the chunked prompt has tokens left: nothing to sample for it


def test_a_step_pads_tokens_sequences_and_work_list_to_its_bucket():
    g = _graphs()
    # the first chunk of a 70-token prompt, and a decode
    step = _step([(list(range(70)), 0, 10, [0, 1, 2]), (list(range(9)), 8, 1, [3, 4, 5])])
    h = g._hosts[0]
    g._fill(h, step, 16)
    n = len(step.ids)  # 11 tokens in the 16 bucket
    assert list(h["slot"][n:16]) == [-1] * 5  # padding tokens write no cache slot
    assert list(h["ctx"]) == [10, 9, 0, 0, 0]  # rows past the step and the idle row 4: no context
    assert list(h["qstart"]) == [0, 10, 11, 11, 11, 11]  # rows past the step: no tokens
    qb = g._work_rows(16)
    assert qb == 16 // 64 + 4 + 1
    assert list(h["qb_seq"][:qb]) == [0, 1, 4, 4, 4]  # padded work goes to the idle row (no tokens, no context)
    # the entries the persistent launches walk (the fresh chunk's, the other), and no decode rows split off: one is
    # under the split
    assert list(h["work"]) == [0, 1, 2, 0]
    assert list(h["bt"][1, :3]) == [3, 4, 5]


def test_a_smaller_step_after_a_larger_one_leaves_no_stale_work():
    g = _graphs()
    h = g._hosts[0]
    big = _step([(list(range(20)), 0, 20, [0, 1, 2, 3, 4]), (list(range(20)), 0, 20, [5, 6, 7, 8, 9])])
    g._fill(h, big, 48)
    g._fill(h, _step([(list(range(21)), 20, 1, [0, 1, 2, 3, 4, 5])]), 16)
    assert list(h["qb_seq"][:g._work_rows(16)]) == [0, 4, 4, 4, 4] and list(h["work"]) == [0, 0, 1, 0]
    assert list(h["qstart"][:3]) == [0, 1, 1] and h["ctx"][1] == 0
    assert list(h["bt"][0, :6]) == [0, 1, 2, 3, 4, 5]  # the grown table is written again


def test_a_step_past_the_buckets_gets_an_eager_steps_work_list():
    """Unpadded (past the captured buckets): leading decode rows split off, offsets and sequence indices from the
    split, fresh prompts' blocks first (their own launch over their own K/V), no padding entries."""
    g = PrefillGraphs(SimpleNamespace(args=_graphs().model.args), torch.zeros(1), 256, 4, 32, 256, graph_tokens=16)
    g._split_rows = 2
    h = g._hosts[0]
    decode = ([1] * 9, 8, 1, [0, 1, 2])
    step = _step([decode, decode, (list(range(80)), 10, 70, list(range(2, 22))),
                  (list(range(100)), 0, 100, list(range(22, 47)))])
    g._fill(h, step, len(step.ids))
    assert (g._eager.split, g._eager.fresh, g._eager.count) == (2, 1, 2)
    assert list(h["qstart"][:3]) == [0, 70, 170]
    assert list(h["qb_seq"][:2]) == [1, 0] and list(h["qb_start"][:2]) == [0, 0]  # 128 queries a block
    g._fill(h, _step([decode]), 16)
    assert g._eager is None  # back in a bucket: the padded list


def test_a_step_in_a_bucket_splits_its_decode_rows_off_as_an_eager_step():
    """In a bucket: the leading decode rows counted for the decode kernel, the work list of the other rows with
    absolute sequence indices, the fresh prompt's block first, then padding; the bounds of both kinds."""
    g = PrefillGraphs(SimpleNamespace(args=_graphs().model.args), torch.zeros(1), 48, 4, 8, 256)
    g._split_rows = 2
    h = g._hosts[0]
    step = _step([([1] * 9, 8, 1, [0, 1, 2]), ([1] * 12, 11, 1, [3, 4, 5]), ([2] * 30, 20, 10, list(range(6, 14))),
                  ([3] * 7, 0, 7, [14, 15])])
    g._fill(h, step, 32)
    assert g._eager is None
    assert list(h["qstart"][:5]) == [0, 1, 2, 12, 19]  # absolute: the graph's varlen launches take every row
    qb = g._work_rows(32)
    assert list(h["qb_seq"][:qb]) == [3, 2] + [4] * (qb - 2) and list(h["work"]) == [0, 1, 2, 2]
    g._fill(h, _step([([1] * 9, 8, 1, [0, 1, 2]), ([3] * 7, 0, 7, [14, 15])]), 16)
    # fewer decode rows than the split takes: the varlen list has them
    assert list(h["qb_seq"][:3]) == [1, 0, 4] and list(h["work"]) == [0, 1, 2, 0]


@pytest.mark.parametrize("knob", ["prefill_graph_max_tokens", "gil_switch_interval_us"])
def test_negative_knobs_are_refused_by_name(knob):
    with pytest.raises(ConfigError, match=knob):
        ServingConfig.from_parameters({knob: {"string_value": "-1"}})


class IdsModel:
    """A stand-in decoder whose hidden state, and logits, are the input ids."""

    args = SimpleNamespace(num_heads=4, num_kv_heads=4, head_dim=64)

    def decode_layers(self, ids, positions, kv_cache, meta):
        h = ids.float()[:, None]
        return h, torch.zeros_like(h)

    def logits(self, x, residual, rows, upcast=True):
        return x.index_select(0, rows)


def test_run_returns_the_sample_rows_and_times_its_parts():
    """run() through the padded buffers with a stand-in decoder (nothing captured): the logits come from the
    step's sample rows, and the step trace's host split is filled."""
    g = PrefillGraphs(IdsModel(), torch.zeros(1), 48, 4, 8, 256)
    step = _step([([7] * 9, 0, 9, [0, 1, 2]), ([5, 6, 8], 2, 1, [3])])
    assert g.run(step).flatten().tolist() == [7.0, 8.0]
    assert len(g.last_split_ms) == 3 and all(x >= 0 for x in g.last_split_ms)
    assert g.run(_step([([1] * 20, 0, 6, [0, 1, 2, 3, 4])])) is None  # a chunk with nothing to sample


def test_a_carried_token_is_taken_from_the_last_launched_step_on_the_device():
    """A launched mixed step: the decode row's input id is a placeholder (-1) and its source row names the
    previous step's argmax in `last_tokens`; the step (the same padded inputs as the graph) gives the logits of
    the step with the real id, and the next step without carried tokens is not left a stale source row."""
    last = torch.tensor([0, 0, 42, 0], dtype=torch.int32)
    g = PrefillGraphs(IdsModel(), torch.zeros(1), 48, 4, 8, 256, last_tokens=last)
    prompt = ([7] * 9, 0, 9, [0, 1, 2])
    real, held = _step([prompt, ([5, 6, 42], 2, 1, [3])]), _step([prompt, ([5, 6, -1], 2, 1, [3])])
    carried = carried_rows(held.query_lens, [-1, 2])
    assert carried.tolist() == [-1] * 9 + [2]  # the decode row's one token, from row 2
    assert carried_rows(held.query_lens, [-1, -1]) is None
    assert torch.equal(g.run(held, carried), g.run(real))
    assert g.run(real).flatten().tolist() == [7.0, 42.0]
    assert g.run(held).flatten().tolist() == [7.0, -1.0]  # without its source row the placeholder stays


class ShapeModel(IdsModel):
    """IdsModel that records the token count each decoder pass ran on (the padded bucket, or the step unpadded)."""

    def __init__(self):
        self.ran: list[int] = []

    def decode_layers(self, ids, positions, kv_cache, meta):
        self.ran.append(ids.shape[0])
        return super().decode_layers(ids, positions, kv_cache, meta)


def test_a_step_past_the_captured_buckets_runs_unpadded_on_the_same_inputs():
    """graph_tokens below max_tokens: steps up to graph_tokens pad to a bucket, larger ones (up to max_tokens)
    run on exactly their tokens, with the carried tokens taken on the device as in a graph."""
    model, last = ShapeModel(), torch.tensor([0, 0, 42, 0], dtype=torch.int32)
    g = PrefillGraphs(model, torch.zeros(1), 64, 4, 16, 256, last_tokens=last, graph_tokens=32)
    assert g.buckets == [16, 32] and g.fits(64, 4) and not g.fits(65, 4)
    big = _step([([7] * 50, 0, 50, list(range(13))), ([5, 6, -1], 2, 1, [13])])
    logits = g.run(big, carried_rows(big.query_lens, [-1, 2]))
    assert model.ran == [51] and logits.flatten().tolist() == [7.0, 42.0]
    g.run(_step([([3] * 20, 0, 20, list(range(5)))]))
    assert model.ran == [51, 32]  # back within the buckets: padded


class MetaModel(IdsModel):
    """IdsModel that records each decoder pass's token count and attention layout (split, fresh entries, count)."""

    def __init__(self):
        self.ran: list[tuple] = []

    def decode_layers(self, ids, positions, kv_cache, meta):
        self.ran.append((ids.shape[0], meta.split, meta.fresh_blocks, meta.qb_seq.shape[0], positions.tolist()[-3:]))
        return super().decode_layers(ids, positions, kv_cache, meta)


def test_the_warm_up_runs_steps_past_the_buckets_with_and_without_a_split():
    """warm_past_buckets: one token past the largest bucket, a fresh prompt and a chunk (context 2) beside no decode
    rows, the split's least and one more (its offsets' alignment), so those launches compile before serving; none
    when every step fits a bucket, or where the rows do not fit."""
    model = MetaModel()
    g = PrefillGraphs(model, torch.zeros(1), 64, 8, 16, 256, graph_tokens=16)
    g._split_rows = 2
    g.warm_past_buckets(scratch_block=9)
    # (tokens, split, fresh entries, entries, last positions): the prompt's 16 - d tokens, then the chunk's position 1
    assert model.ran == [(17, 0, 1, 2, [14, 15, 1]), (17, 2, 1, 2, [12, 13, 1]), (17, 3, 1, 2, [11, 12, 1])]
    assert list(g._hosts[1]["slot"][:17]) == [-1] * 17 and g._hosts[0]["bt"][0, 0] == 9
    small = MetaModel()
    PrefillGraphs(small, torch.zeros(1), 64, 2, 16, 256).warm_past_buckets(9)
    assert small.ran == []  # graph_tokens = max_tokens: every step has a bucket
