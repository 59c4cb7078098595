"""Pipeline-parallel serving on the CPU over gloo, alone and combined with tensor parallelism (issue 19 item 2).

The model is a tiny random 3-layer Llama with SmolLM2's tokenizer: 3 layers split unevenly over 2 stages, 4 heads
and 2 KV heads split over 2 tensor-parallel ranks; its weights are spread wide so greedy decoding has no near-ties
for a different summation order to flip.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import OrderedDict

import pytest

from llmserve.config import ConfigError, ServingConfig
from llmserve.engine.api import EngineRequest, FinishReason
from llmserve.engine.graph_inputs import StepInputs
from llmserve.engine.parallel.pipeline import StageRole, micro_batch_count, split_step
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.torch_engine import TorchEngine
from llmserve.model.pipeline_parallel import stage_layers
from llmserve.serving.api import GenerateRequest
from llmserve.serving.service import LLMService
from llmserve.serving.tokenizer import Tokenizer
from tests.test_tp_serving import (
    KNOBS,
    PROMPTS,
    check_cancel_frees_kv_on_every_rank,
    greedy,
    run,
    tiny_llama,
    wait_until,
    worker_procs,
)


@pytest.fixture(scope="module")
def tiny3(checkpoint, tmp_path_factory):
    return tiny_llama(checkpoint, tmp_path_factory.mktemp("pp") / "tiny3", 3)


@pytest.fixture(scope="module")
def single(tiny3):
    engine = TorchEngine(ServingConfig.of(**KNOBS), tiny3)
    yield engine
    engine.shutdown()


def run_choices(engine: TorchEngine, reqs: list[EngineRequest]) -> dict[tuple[str, int], tuple[list, list]]:
    """Each choice's tokens and logprobs, by (request id, choice)."""
    out: dict[tuple[str, int], tuple[list, list]] = {}
    for r in reqs:
        engine.add_request(r)
    while engine.has_work():
        for o in engine.step():
            tokens, lps = out.setdefault((o.request_id, o.index), ([], []))
            tokens += o.new_token_ids
            lps += o.logprobs or []
    return out


def requests() -> list:
    """PROMPTS (40-token ones: chunked prefill over 3 steps of max_num_tokens 16) and a batch of short ones."""
    return [greedy(str(i), p) for i, p in enumerate(PROMPTS + [[9, 8, 7, i] for i in range(5)])]


def test_stage_layers_are_contiguous_and_extra_layers_go_before_the_last_stage():
    assert stage_layers(3, 2) == [range(0, 2), range(2, 3)]
    assert stage_layers(4, 3) == [range(0, 1), range(1, 3), range(3, 4)]
    assert stage_layers(30, 4) == [range(0, 7), range(7, 15), range(15, 23), range(23, 30)]
    role = StageRole(rank=5, tp=2, stages=3)
    assert (role.stage, role.tp_rank, role.previous, role.next, role.last) == (2, 1, 3, 7, True)


def test_split_step_keeps_whole_sequences_and_their_sampled_rows():
    step = StepInputs(list(range(10)), list(range(10)), list(range(10)), [6, 1, 1, 2], [6, 3, 4, 2],
                      [[0, 1], [2], [3], [4]], [5, 6, 7])
    parts = split_step(step, 2)
    assert [p.query_lens for p in parts] == [[6], [1, 1, 2]]
    assert [p.sample_rows for p in parts] == [[5], [0, 1]]
    assert sum((p.ids for p in parts), []) == step.ids
    assert [len(p.query_lens) for p in split_step(step, 9)] == [1, 1, 1, 1]  # no empty micro-batch
    assert split_step(step, 1)[0] == step
    assert [micro_batch_count(t, 0, 2) for t in (1, 63, 64)] == [1, 1, 2]  # auto: prefill-sized steps only
    assert micro_batch_count(1, 3, 2) == 3


@pytest.fixture(scope="class")
def pp2(tiny3):
    """Class-scoped: a process holds one parallel engine at a time (torch.distributed's default group)."""
    engine = TorchEngine(ServingConfig.of(**KNOBS, pipeline_parallel_size=2, pipeline_micro_batches=2), tiny3)
    yield engine
    engine.shutdown()


class TestTwoStages:
    def test_pp2_greedy_tokens_equal_the_single_process_engine(self, single, pp2):
        assert pp2.runner.kv_cache.shape[0] == 2 and len(pp2.runner.model.layers) == 2  # rank 0: layers 0-1
        assert pp2.runner.model.lm_head is None
        # Reversed free blocks: a stage addressing its cache by anything but rank 0's tables would differ.
        pp2.blocks.free = OrderedDict((b, None) for b in reversed(pp2.blocks.free))
        expected = run(single, requests())
        assert run(pp2, requests()) == expected
        assert all(len(t) == 12 for t in expected.values())

    def test_two_steps_in_flight_over_disjoint_sequences_decode_as_the_single_process_engine(self, single, pp2):
        """One step per stage in flight (pipeline_steps_in_flight 0): step N+1 is submitted before step N's tokens
        are read, over other sequences, and the tokens are still the single-process engine's."""
        queue = pp2.step_queue
        assert queue.depth == 2
        behind, submit = [], queue.submit

        def spy(batch):
            busy = {s.key for step in queue.queue for s in step.batch.seqs}
            assert not busy & {s.key for s in batch.seqs}
            behind.append(bool(busy) and batch.total_tokens == len(batch.seqs))  # a decode step behind another
            submit(batch)
            assert queue.queue[-1].flight.argmax  # greedy: the last stage sends token ids, not logits

        queue.submit = spy
        try:
            reqs = [greedy(f"d{i}", [5, 6, i + 7], n=10) for i in range(8)]
            assert run(pp2, reqs) == run(single, [greedy(f"d{i}", [5, 6, i + 7], n=10) for i in range(8)])
        finally:
            del queue.submit
        assert sum(behind) >= 10  # ~9 decode steps for each half of the sequences
        assert not pp2.has_work() and pp2.blocks.num_free == pp2.blocks.num_blocks

    def test_seeded_choices_with_penalties_and_logprobs_sample_as_the_single_process_engine(self, single, pp2):
        """Sampled rows are drawn when their step is collected, from the sequences as they were when it was
        submitted (n > 1 choices share the prompt's blocks; penalties read the tokens so far)."""
        def requests_n() -> list[EngineRequest]:
            p = SamplingParams(temperature=0.9, top_p=0.95, seed=11, max_tokens=10, n=3, ignore_eos=True,
                               presence_penalty=0.5, logprobs=2)
            return [EngineRequest(f"n{i}", [5, 6, 7, 8, 9, i], p) for i in range(4)]

        flights, collect = [], pp2.runner.collect
        pp2.runner.collect = lambda flight, sampling: flights.append(flight) or collect(flight, sampling)
        try:
            got = run_choices(pp2, requests_n())
        finally:
            del pp2.runner.collect
        expected = run_choices(single, requests_n())
        assert flights and not any(f.argmax for f in flights if f.sample_rows)  # sampled: the logits travel
        assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in expected.items()}
        assert len(got) == 12 and all(len(v[0]) == 10 and len(v[1]) == 10 for v in got.values())
        for key, (_, lps) in got.items():
            assert [lp.token_id for lp in lps] == got[key][0]
            assert [lp.logprob for lp in lps] == pytest.approx([lp.logprob for lp in expected[key][1]], abs=1e-4)

    def test_a_sequence_aborted_while_its_step_is_in_flight_ends_once_and_leaves_the_others_alone(self, single, pp2):
        def reqs() -> list[EngineRequest]:
            return [greedy(f"a{i}", [9, 8, i + 7], n=10) for i in range(6)]

        expected = run(single, reqs())
        for r in reqs():
            pp2.add_request(r)
        out: dict[str, list[int]] = {}
        finals: dict[str, int] = {}
        aborted = False
        while pp2.has_work():
            seq = pp2.seqs.get("a0")
            if not aborted and seq is not None and seq.in_flight and len(out.get("a0", [])) >= 3:
                pp2.abort("a0")  # its step is in the pipeline: its blocks are freed before the step is read
                aborted = True
            for o in pp2.step():
                out.setdefault(o.request_id, []).extend(o.new_token_ids)
                finals[o.request_id] = finals.get(o.request_id, 0) + (o.finish_reason is not None)
        assert aborted and finals == {f"a{i}": 1 for i in range(6)}
        assert 3 <= len(out["a0"]) < 10 and out["a0"] == expected["a0"][:len(out["a0"])]
        assert {k: v for k, v in out.items() if k != "a0"} == {k: v for k, v in expected.items() if k != "a0"}
        assert pp2.blocks.num_free == pp2.blocks.num_blocks

    def test_a_cancelled_stream_frees_its_kv_and_its_blocks_serve_the_next_request(self, single, pp2):
        check_cancel_frees_kv_on_every_rank(single, pp2)

    def test_last_16_concurrent_streams_each_get_one_final_then_a_killed_stage_fails_them_unavailable(
            self, tiny3, pp2):
        """Last in the class: it ends the class's engine."""
        service = LLMService(pp2, Tokenizer(tiny3)).start()
        finals: dict[str, list] = {}
        lock = threading.Lock()

        def submit(rid: str, prompt: list[int], max_tokens: int) -> None:
            def callback(delta) -> None:
                with lock:
                    finals.setdefault(rid, []).append(delta)
            params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
            service.submit(GenerateRequest(rid, params, prompt_token_ids=prompt), callback)

        try:
            for i in range(16):
                submit(f"s{i}", [5, 6, 7, i], 8)
            wait_until(lambda: sum(d.finished for ds in list(finals.values()) for d in ds) == 16, 60)
            assert all(sum(d.finished for d in finals[f"s{i}"]) == 1 for i in range(16))
            assert all(d.error is None for ds in finals.values() for d in ds)
            submit("long", [5, 6, 7], 4000)
            wait_until(lambda: len(finals.get("long", [])) >= 3, 30)
            killed = time.monotonic()
            os.kill(pp2.runner.tp.pids[0], signal.SIGKILL)  # the last stage
            wait_until(lambda: any(d.finished for d in finals["long"]), 10)
            assert time.monotonic() - killed < 10
            wait_until(lambda: not service.healthy, 10 - (time.monotonic() - killed))
            last = finals["long"][-1]
            assert last.finish_reason == FinishReason.ERROR and last.error.status == "UNAVAILABLE"
            assert "tensor-parallel group lost" in str(last.error)
        finally:
            service.shutdown()
        assert not worker_procs(str(tiny3))


@pytest.mark.parametrize("knobs", [dict(pipeline_parallel_size=2, pipeline_micro_batches=1),
                                   dict(pipeline_parallel_size=2, pipeline_steps_in_flight=1),
                                   dict(pipeline_parallel_size=3, pipeline_micro_batches=3),
                                   dict(pipeline_parallel_size=2, tensor_parallel_size=2, pipeline_micro_batches=2)],
                         ids=["pp2-one-micro-batch", "pp2-one-step-in-flight", "pp3", "tp2xpp2"])
def test_other_layouts_greedy_tokens_equal_the_single_process_engine(single, tiny3, knobs):
    expected = run(single, requests())
    engine = TorchEngine(ServingConfig.of(**KNOBS, **knobs), tiny3)
    try:
        assert run(engine, requests()) == expected
        heads = 2 // knobs.get("tensor_parallel_size", 1)
        assert engine.runner.kv_cache.shape[-2] == heads  # rank 0 caches its KV heads of its layers
    finally:
        engine.shutdown()
    assert not worker_procs(str(tiny3))


def test_with_steps_in_flight_a_full_cache_preempts_only_sequences_not_in_flight(single, tiny3):
    """20 blocks of 4 tokens for 4 sequences of 33: preemptions while the other step is in flight; the tokens are
    still the single-process engine's."""
    reqs = [greedy(f"p{i}", [4, 5, 6 + i], n=30) for i in range(4)]
    expected = run(single, [greedy(f"p{i}", [4, 5, 6 + i], n=30) for i in range(4)])
    knobs = dict(KNOBS, kv_cache_memory_bytes=40 << 10)
    engine = TorchEngine(ServingConfig.of(**knobs, pipeline_parallel_size=2), tiny3)
    try:
        assert engine.blocks.num_blocks == 20 and engine.step_queue is not None
        assert run(engine, reqs) == expected
        assert engine.scheduler.num_preemptions > 0
        assert engine.blocks.num_free == engine.blocks.num_blocks
    finally:
        engine.shutdown()
    assert not worker_procs(str(tiny3))


def test_a_layout_that_cannot_be_served_is_refused_naming_the_knob(tiny3):
    with pytest.raises(ConfigError, match="pipeline_parallel_size"):
        ServingConfig.of(pipeline_parallel_size=0)
    with pytest.raises(ConfigError, match="pipeline_parallel_size: 4 stages for the checkpoint's 3 layers"):
        TorchEngine(ServingConfig.of(**KNOBS, pipeline_parallel_size=4), tiny3)
    assert not worker_procs(str(tiny3))


@pytest.mark.server
@pytest.mark.parametrize("knobs,workers", [(dict(pipeline_parallel_size=2), 1),
                                           (dict(pipeline_parallel_size=2, tensor_parallel_size=2), 3)],
                         ids=["pp2", "tp2xpp2"])
def test_through_tritonserver_16_streams_each_get_one_final_and_a_killed_stage_unloads_the_model(
        tiny3, tmp_path, knobs, workers):
    from tests.conftest import start_triton
    from tests.server_utils import Stream, make_repository, wait_for

    repo = make_repository(tmp_path / "repo", tiny3, device="cpu", kv_block_size=4, **knobs)
    srv = start_triton(repo, tmp_path / "server.log", timeout=180)
    marker = str(repo)
    try:
        assert len(worker_procs(marker)) == workers
        stream = Stream(srv.grpc_url)
        ids = {f"s{i}" for i in range(16)}
        for rid in sorted(ids):
            stream.send(rid, text_input=f"Tell me about the number {rid[1:]}.", stream=True,
                        sampling_parameters={"max_tokens": 16, "ignore_eos": True, "temperature": 0})
        got = stream.collect(ids, timeout=120)
        for rid in ids:
            assert [r for r in got[rid] if r[0] == "error"] == [], got[rid]
            assert sum(final for _, _, final in got[rid]) == 1
        stream.send("long", text_input="Count.", stream=True,
                    sampling_parameters={"max_tokens": 3000, "ignore_eos": True, "temperature": 0})
        assert wait_for(lambda: not stream.q.empty(), 30)
        worker_procs(marker)[-1].kill()  # the last rank: the last stage
        killed = time.monotonic()
        got = stream.collect({"long"}, timeout=10, linger=0)
        errors = [r for r in got.get("long", []) + got.get("?", []) if r[0] == "error"]
        assert errors and "tensor-parallel group lost" in errors[-1][1]  # UNAVAILABLE: the service-level test
        assert wait_for(lambda: not srv.ready(), 10 - (time.monotonic() - killed))
        stream.close()
    finally:
        srv.stop()
    assert wait_for(lambda: not worker_procs(marker), 5)


def test_a_replica_takes_tp_x_pp_gpus_and_a_layout_too_small_names_both_knobs():
    from llmserve.launch.layout import InstanceGroup, LayoutError, plan_replicas

    cfg = ServingConfig.of(tensor_parallel_size=2, pipeline_parallel_size=2)
    assert plan_replicas(cfg, [InstanceGroup("KIND_GPU", 1, (0, 4))], 8) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    with pytest.raises(LayoutError, match=r"tensor_parallel_size x pipeline_parallel_size: 4 ranks .* GPUs 2-5"):
        plan_replicas(cfg, [InstanceGroup("KIND_GPU", 1, (2,))], 4)
    pp2 = ServingConfig.of(pipeline_parallel_size=2)  # the guide's data parallel x pipeline parallel on 4 GPUs
    assert plan_replicas(pp2, [InstanceGroup("KIND_GPU", 1, (0, 2))], 4) == [(0, 1), (2, 3)]
    overlap = r"gpus with tensor_parallel_size x pipeline_parallel_size 2: .* gpus: \[0, 2\]"
    with pytest.raises(LayoutError, match=overlap):
        plan_replicas(pp2, [InstanceGroup("KIND_GPU", 1, (0, 1))], 4)


@pytest.mark.slow
def test_smollm2_pp2_greedy_tokens_equal_the_single_process_engine(checkpoint, tokenizer, chat_ids):
    """The real checkpoint: 30 layers as 15 + 15, its lm_head tied to the embedding (the last stage keeps the
    weight, not the embedding module). Chat prompts of 30+ tokens take chunked prefill at max_num_tokens 16."""
    texts = ["The capital of France is", "def fibonacci(n):", "Tell me about the number 7."]
    prompts = [chat_ids] + [tokenizer.encode(t) for t in texts]
    knobs = dict(device="cpu", dtype="float32", kv_block_size=4, max_num_tokens=16, kv_cache_memory_bytes=1 << 24)
    out = {}
    for name, extra in (("single", {}), ("pp2", dict(pipeline_parallel_size=2, pipeline_micro_batches=2))):
        engine = TorchEngine(ServingConfig.of(**knobs, **extra), checkpoint)
        try:
            out[name] = run(engine, [greedy(str(i), p, n=16) for i, p in enumerate(prompts)])
            if extra:
                assert len(engine.runner.model.layers) == 15 and engine.runner.model.lm_head is None
        finally:
            engine.shutdown()
    assert out["pp2"] == out["single"]
    assert len(chat_ids) > 16 and all(len(t) == 16 for t in out["single"].values())


@pytest.mark.parametrize("mode, knobs", [
    ("int4_asym", dict(pipeline_parallel_size=2, tensor_parallel_size=2)),
    ("fp8", dict(pipeline_parallel_size=2, tensor_parallel_size=2)),
    ("fp8", dict(tensor_parallel_size=2))], ids=["int4-tp2xpp2", "fp8-tp2xpp2", "fp8-tp2"])
def test_a_quantized_checkpoint_over_tp_and_pp_gives_the_single_process_tokens(tiny3, tmp_path, mode, knobs):
    """Quantized weights through both kinds of parallelism: each stage reads its layers' tensors, each TP rank
    only its slices of them (int4: packed codes and group scales, groups of 32: o_proj's 32 inputs a rank; fp8:
    codes and per-row scales, its row-parallel layers scaling each token by the max of the ranks' amax)."""
    from llmserve.model.quantize import quantize_checkpoint

    ckpt = quantize_checkpoint(tiny3, tmp_path / mode, mode, group_size=32)
    single = TorchEngine(ServingConfig.of(**KNOBS), ckpt)
    try:
        expected = run(single, requests())
    finally:
        single.shutdown()
    engine = TorchEngine(ServingConfig.of(**KNOBS, **knobs), ckpt)
    try:
        assert engine.runner.model.slice_of is not None  # rank 0 read its slices (tensor_parallel.shard_empty)
        assert run(engine, requests()) == expected
    finally:
        engine.shutdown()
    assert not worker_procs(str(ckpt))
