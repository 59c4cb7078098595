"""Tensor-parallel sharding math on CPU: 2 processes over gloo give the same greedy tokens as one."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llmserve.config import ServingConfig
from llmserve.engine.api import EngineRequest
from llmserve.engine.sampling_params import SamplingParams

PROMPTS = [[5, 17, 99, 3, 42, 7, 8], [11, 12, 13], list(range(20, 60))]


def tiny_checkpoint(path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # spread logits so greedy has no near-ties to flip on rounding
    model.save_pretrained(path)
    return path


def generate(checkpoint, rank=0, world=1):
    import llmserve.engine.model_runner as runner_mod
    from llmserve.engine.torch_engine import TorchEngine
    from llmserve.model.tensor_parallel import shard_model

    load = runner_mod.load_model
    runner_mod.load_model = lambda *a, **k: shard_model(load(*a, **k), rank, world)
    try:
        engine = TorchEngine(ServingConfig.of(device="cpu", dtype="float32", kv_block_size=4), checkpoint)
    finally:
        runner_mod.load_model = load
    out = {}
    for i, p in enumerate(PROMPTS):
        engine.add_request(EngineRequest(str(i), p, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)))
    while engine.has_work():
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.new_token_ids)
    return out, engine.runner.kv_cache.shape


def _worker(rank, world, port, checkpoint, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results[rank] = generate(checkpoint, rank, world)
    finally:
        dist.destroy_process_group()


def test_tp2_greedy_equals_single_process(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "tiny")
    single, full_kv = generate(checkpoint)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, port, checkpoint, results), nprocs=2, join=True)
    for rank in (0, 1):
        tokens, kv_shape = results[rank]
        assert tokens == single
        assert kv_shape[-2] == full_kv[-2] // 2  # each rank caches its own KV heads


def _spawn_tp2(checkpoint) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, port, checkpoint, results), nprocs=2, join=True)
    return dict(results)


@pytest.mark.parametrize("mode", ["int8_wo", "int4_sym", "int4_asym", "fp8"])
def test_tp2_serves_quantized_checkpoints_with_the_single_process_tokens(tmp_path, mode):
    """Every rank keeps its rows (column parallel) or its inputs (row parallel) of the quantized weights with
    their scales: per-row scales follow the rows, int4 group scales and minimums the groups (groups of 32 here:
    o_proj's 32 inputs a rank, down_proj's 64). fp8's row-parallel layers scale each token's activations by the
    max of the ranks' amax, the whole row's."""
    from llmserve.model.quantize import quantize_checkpoint

    checkpoint = quantize_checkpoint(tiny_checkpoint(tmp_path / "tiny"), tmp_path / mode, mode, group_size=32)
    single, _ = generate(checkpoint)
    for rank, (tokens, _) in _spawn_tp2(checkpoint).items():
        assert tokens == single, (mode, rank)


def test_what_a_rank_cannot_hold_exactly_is_refused(tmp_path):
    """int4 groups of 64 over o_proj's 64 inputs (each of 2 ranks would hold half a group): refused naming the
    reason, whether the rank slices a loaded model or reads its slices (then before reading any data)."""
    from llmserve.model.llama import load_model
    from llmserve.model.quantize import quantize_checkpoint
    from llmserve.model.tensor_parallel import shard_empty, shard_model

    checkpoint = quantize_checkpoint(tiny_checkpoint(tmp_path / "tiny"), tmp_path / "q", "int4_sym", group_size=64)
    refusal = r"^tensor_parallel_size: a rank's 32 inputs of a Int4SymLinear do not fall on its groups of 64 \("
    model = load_model(checkpoint, torch.float32, torch.device("cpu"), kernel_mode="off")
    with pytest.raises(ValueError, match=refusal):
        shard_model(model, 0, 2)
    with pytest.raises(ValueError, match=refusal):
        load_model(checkpoint, torch.float32, torch.device("cpu"), kernel_mode="off",
                   select=lambda m: shard_empty(m, 0, 2))


def test_indivisible_heads_refused():
    from llmserve.model.args import ModelArgs
    from llmserve.model.tensor_parallel import check_shardable

    args = ModelArgs(49152, 576, 1536, 30, 9, 3, 64, 1e-5, 1e5, 8192, True, False)  # SmolLM2-135M
    with pytest.raises(ValueError, match="num_attention_heads"):
        check_shardable(args, 2)
    check_shardable(args, 3)


def test_the_step_channel_packs_what_the_workers_rebuild():
    """Workers rebuild rank 0's step from the packed buffer: the same tokens, cache slots and block tables
    (padded with 0 as rank 0's attention metadata pads them), so they address their caches only through rank 0's
    block manager."""
    from llmserve.engine.graph_inputs import StepInputs
    from llmserve.engine.parallel.step_broadcast import HEADER, StepChannel

    step = StepInputs(ids=[5, 6, 7, 8], positions=[0, 1, 2, 9], slots=[40, 41, 42, 13], query_lens=[3, 1],
                      context_lens=[3, 10], tables=[[10], [2, 3, 7]], sample_rows=[2, 3])
    channel = StepChannel(None, max_tokens=8, max_seqs=4, max_width=4)
    kind, T, B, S, W, n, number, _ = HEADER.unpack(channel.pack(step))
    assert (T, B, S, W, number) == (4, 2, 2, 3, 1) and n == 3 * T + 2 * B + S + B * W
    got = channel.unpack(T, B, S, W)
    assert got == StepInputs(step.ids, step.positions, step.slots, step.query_lens, step.context_lens,
                             [[10, 0, 0], [2, 3, 7]], step.sample_rows)


def test_the_step_channel_carries_source_rows_and_decode_inputs():
    """A launched step's per-token source rows come back as sent, with its flag; a decode graph's inputs travel
    as they are, announced with its padded rows; messages are numbered so a worker out of step stops."""
    import numpy as np

    from llmserve.engine.graph_inputs import StepInputs
    from llmserve.engine.parallel.step_broadcast import DECODE, HEADER, STEP, StepChannel

    step = StepInputs(ids=[5, 6, 7], positions=[0, 1, 4], slots=[40, 41, 20], query_lens=[2, 1],
                      context_lens=[2, 5], tables=[[10], [5, 6]], sample_rows=[1, 2])
    sender = StepChannel(None, max_tokens=8, max_seqs=4, max_width=4)
    worker = StepChannel(None, max_tokens=8, max_seqs=4, max_width=4)
    header = sender.pack(step, carried=np.array([-1, -1, 3]), launched=True)
    fields = worker.open(header)
    assert fields[0] == STEP and fields[5] == 3 * 3 + 2 * 2 + 2 + 2 * 2 + 3
    worker.buffer.copy_(sender.buffer)  # what the broadcast does
    _, T, B, S, W, n, _, _ = fields
    assert worker.view[n - T:n].tolist() == [-1, -1, 3] and worker.unpack(T, B, S, W).ids == [5, 6, 7]
    decode = HEADER.pack(DECODE, 0, 8, 0, 0, 100, 2, 0)
    assert worker.open(decode)[:3] == (DECODE, 0, 8)
    with pytest.raises(RuntimeError, match="out of step"):
        worker.open(HEADER.pack(DECODE, 0, 8, 0, 0, 100, 5, 0))
