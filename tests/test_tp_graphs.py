"""The rank group's CUDA graphs and launched steps (issue 19): with `distributed: always` the engine runs through
the group even with one rank (gloo on the CPU, NCCL on a GPU), so on one GPU the graphs every rank replays, the
decode messages and the launched mixed steps are checked against the plain engine's tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmserve.config import ServingConfig
from llmserve.engine.api import EngineRequest
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.torch_engine import TorchEngine
from tests.test_tp_serving import PROMPTS, tiny_llama


def requests() -> list[EngineRequest]:
    """Greedy prompts (chunked over steps: mixed steps with decode rows) and a seeded sampled one."""
    reqs = [EngineRequest(str(i), p, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
            for i, p in enumerate(PROMPTS)]
    sampled = SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=12, ignore_eos=True)
    return reqs + [EngineRequest("sampled", PROMPTS[0], sampled)]


def run(engine: TorchEngine) -> dict[str, list[int]]:
    reqs = requests()
    out = {r.request_id: [] for r in reqs}
    for r in reqs:
        engine.add_request(r)
    while engine.has_work():
        for o in engine.step():
            out[o.request_id] += o.new_token_ids
    return out


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """2 layers of 64-wide heads (the Triton kernels' shapes); the engine takes token ids: no tokenizer."""
    return tiny_llama(None, tmp_path_factory.mktemp("group") / "wide", 2, hidden=256)


def tokens_of(cfg: ServingConfig, checkpoint: Path) -> tuple[dict[str, list[int]], int]:
    """The tokens, and how many messages rank 0 sent through the group (0 without one)."""
    engine = TorchEngine(cfg, checkpoint)
    try:
        got = run(engine)
        tp = engine.runner.tp
        return got, (tp.channel.steps if tp is not None else 0)
    finally:
        engine.shutdown()


def test_a_group_of_one_on_the_cpu_gives_the_plain_engines_tokens(wide):
    knobs = dict(device="cpu", dtype="float32", kv_block_size=4, max_num_tokens=16, kv_cache_memory_bytes=1 << 22)
    expected, none = tokens_of(ServingConfig.of(**knobs), wide)
    got, sent = tokens_of(ServingConfig.of(**knobs, distributed="always"), wide)
    assert got == expected and none == 0 and sent > 0
    assert all(len(t) == 12 for t in got.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and NCCL need a GPU")
def test_a_group_of_one_on_nccl_replays_the_graphs_and_launches_as_the_plain_engine(wide):
    """Decode graphs (launched, carried tokens), prefill graphs (launched mixed steps with carried decode rows)
    and a sampled request's synchronous steps, all through the group's messages: the plain engine's tokens."""
    knobs = dict(dtype="bfloat16", kv_block_size=16, max_batch_size=8, max_num_tokens=32, prefill_graph_max_tokens=32,
                 kv_cache_memory_bytes=64 << 20)
    expected, _ = tokens_of(ServingConfig.of(**knobs), wide)
    engine = TorchEngine(ServingConfig.of(**knobs, distributed="always"), wide)
    try:
        runner = engine.runner
        assert runner.tp is not None and runner.tp.backend == "nccl"
        assert runner.decode_graph_sizes == [1, 2, 4, 8] and engine.async_scheduling
        assert runner.can_launch(8) and runner.mixed_token_cap == 32 and runner.can_launch_mixed(32, 4)
        assert run(engine) == expected
    finally:
        engine.shutdown()
