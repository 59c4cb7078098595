"""The engine under a mixed, seeded workload (SmolLM2, CPU): requests arrive over many steps, share prefixes, ask
for greedy or seeded sampled answers (n = 2 among them, penalties on some: their tokens kept on the device between
steps, more of them alive than the history has slots), some are aborted midway; the steps chunk prompts,
preempt, or run launched ahead. Every choice must get exactly the tokens it gets when its request runs alone, and
one final; an aborted one a prefix of them; and every KV block must be free at the end."""

import random

import pytest

from llmserve.config import ServingConfig
from llmserve.engine.api import EngineRequest, FinishReason
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.torch_engine import TorchEngine

QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "Count from one to five.",
             "Write one word that rhymes with cat.", "What do bees make?", "Say hello in Spanish."]
SYSTEM = "You are a concise assistant. Answer in one short sentence."  # a prefix most prompts share
BLOCK = 737280  # bytes of one 16-token KV block of SmolLM2 in float32
SEEDS = (1, 8)  # workloads whose runs below preempt and abort choices midway under every knob set that can
KNOBS = {
    "chunked": {"max_num_tokens": 16, "max_batch_size": 5},
    "preempting": {"kv_cache_memory_bytes": 8 * BLOCK, "max_batch_size": 6},
    "async": {"async_scheduling": "true", "max_num_tokens": 24, "kv_cache_memory_bytes": 10 * BLOCK},
}


def workload(tokenizer, seed: int) -> list[tuple[int, EngineRequest, int | None]]:
    """(arrival step, request, step to abort it at or None)."""
    rng = random.Random(seed)
    out = []
    for i in range(12):
        messages = [{"role": "user", "content": rng.choice(QUESTIONS)}]
        if rng.random() < 0.7:
            messages.insert(0, {"role": "system", "content": SYSTEM})
        kind = rng.choice(["greedy", "greedy", "seeded", "seeded_n2", "penalised", "penalised_greedy"])
        penalties = dict(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2) \
            if kind.startswith("penalised") else {}
        params = SamplingParams(temperature=0.0, max_tokens=rng.randint(3, 14), **penalties) \
            if kind.endswith("greedy") else \
            SamplingParams(temperature=0.8, top_p=0.9, seed=rng.randint(0, 999), max_tokens=rng.randint(3, 14),
                           n=2 if kind == "seeded_n2" else 1, **penalties)
        request = EngineRequest(f"r{i}", tokenizer.apply_chat_template(messages), params, frozenset({2}))
        arrival = rng.randint(0, 8)
        out.append((arrival, request, arrival + rng.randint(2, 10) if rng.random() < 0.3 else None))
    return out


def drive(engine: TorchEngine, work) -> tuple[dict, dict]:
    """Runs the workload: tokens and final reasons per (request, choice); fails on output after a final."""
    tokens, finals = {}, {}
    step = 0
    while step <= max(a for a, _, _ in work) or engine.has_work():
        for arrival, request, abort_at in work:
            if arrival == step:
                engine.add_request(request)
            if abort_at == step:
                engine.abort(request.request_id)
        for o in engine.step() if engine.has_work() else []:
            key = (o.request_id, o.index)
            assert key not in finals, f"output after the final of {key}"
            assert o.error is None, o.error
            tokens.setdefault(key, []).extend(o.new_token_ids)
            if o.finish_reason is not None:
                finals[key] = o.finish_reason
        step += 1
    return tokens, finals


@pytest.fixture(scope="module")
def alone(checkpoint, tokenizer):
    """Each request of the workloads run by itself (no prefix cache: nothing computed in another batch)."""
    engine = TorchEngine(ServingConfig.of(enable_prefix_caching=False), checkpoint)
    refs = {}
    for seed in SEEDS:
        for _, request, _ in workload(tokenizer, seed):
            refs[seed, request.request_id] = drive(engine, [(0, request, None)])
    engine.shutdown()
    return refs


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("knobs", list(KNOBS))
def test_every_choice_gets_its_tokens_alone_once_under_arrivals_aborts_and_preemption(
        checkpoint, tokenizer, alone, knobs, seed):
    work = workload(tokenizer, seed)
    engine = TorchEngine(ServingConfig.of(**KNOBS[knobs]), checkpoint)
    try:
        tokens, finals = drive(engine, work)
        midway = 0  # choices aborted after some tokens
        for _, request, abort_at in work:
            ref_tokens, ref_finals = alone[seed, request.request_id]
            for index in range(request.params.n):
                key = (request.request_id, index)
                ref = ref_tokens.get((request.request_id, index), [])
                got = tokens.get(key, [])
                assert key in finals, f"{key} never got a final"
                if abort_at is not None and finals[key] == FinishReason.ABORT:
                    assert got == ref[:len(got)], (knobs, key)
                    midway += bool(got)
                else:
                    assert (got, finals[key]) == (ref, ref_finals[key]), (knobs, key)
        stats = engine.stats()
        assert stats.kv_blocks_free == stats.kv_blocks_total and midway > 0
        if knobs == "preempting":
            assert stats.preemptions > 0
    finally:
        engine.shutdown()
