"""The PyTorch engine on the real SmolLM2 checkpoint, without Triton."""

import pytest
import torch

from llmserve.config import ConfigError, ServingConfig
from llmserve.engine.api import EngineRequest
from llmserve.engine.observer import StepTrace
from llmserve.engine.sampling_params import InvalidRequest, SamplingParams
from llmserve.engine.startup import served_context
from llmserve.engine.torch_engine import TorchEngine
from tests.conftest import SMALL_BLOCK

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers.",
           "Explain gravity to a child in one sentence."]


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


def run(engine, requests):
    out = {r.request_id: [] for r in requests}
    reasons = {}
    for r in requests:
        engine.add_request(r)
    while engine.has_work():
        for o in engine.step():
            out[o.request_id] += o.new_token_ids
            if o.finish_reason:
                reasons[o.request_id] = o.finish_reason
    return out, reasons


def greedy(rid, ids, n=24, **kw):
    return EngineRequest(rid, ids, SamplingParams(temperature=0.0, max_tokens=n, **kw), frozenset({2}))


@pytest.mark.parametrize("knobs", [
    {},  # one step per prompt
    {"max_num_tokens": 7, "kv_block_size": SMALL_BLOCK},  # chunked prefill across many steps, small blocks
    {"kv_cache_memory_bytes": 8 * 737280, "max_batch_size": 4},  # 8 blocks: forces preemption
    {"async_scheduling": "true"},  # decode steps launched ahead, tokens carried on the device
    {"async_scheduling": "true", "kv_cache_memory_bytes": 8 * 737280, "max_batch_size": 4},
])
def test_paged_engine_greedy_equals_hf_greedy(checkpoint, tokenizer, hf_model, knobs):
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]
    engine = TorchEngine(ServingConfig.of(**knobs), checkpoint)
    out, reasons = run(engine, [greedy(str(i), p) for i, p in enumerate(prompts)])
    for i, p in enumerate(prompts):
        ref = hf_model.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False)[0, len(p):].tolist()
        ref = [t for t in ref if t != 2]  # HF keeps the EOS token; we end on it
        assert out[str(i)] == ref, (knobs, PROMPTS[i])
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total
    if "kv_cache_memory_bytes" in knobs:
        assert engine.stats().preemptions > 0
    assert tokenizer.decode(out["0"]) == "The capital of France is Paris."


def test_prefix_cache_reuses_blocks_and_keeps_output(checkpoint, chat_ids):
    engine = TorchEngine(ServingConfig.of(kv_block_size=SMALL_BLOCK), checkpoint)
    first, _ = run(engine, [greedy("a", chat_ids)])
    second, _ = run(engine, [greedy("b", chat_ids)])
    assert first["a"] == second["b"]
    stats = engine.stats()
    assert stats.prefix_cache_hit_blocks >= (len(chat_ids) - 1) // 4


def test_seeded_sampling_is_reproducible_in_any_batch(checkpoint, chat_ids):
    engine = TorchEngine(ServingConfig.of(), checkpoint)
    p = dict(temperature=1.0, top_p=0.95, seed=1234, max_tokens=16)
    alone, _ = run(engine, [EngineRequest("x", chat_ids, SamplingParams(**p))])
    crowd = [EngineRequest("x", chat_ids, SamplingParams(**p))] + [
        EngineRequest(f"o{i}", chat_ids[: 10 + i], SamplingParams(temperature=1.0, max_tokens=16)) for i in range(3)]
    together, _ = run(engine, crowd)
    assert alone["x"] == together["x"]
    other, _ = run(engine, [EngineRequest("y", chat_ids, SamplingParams(**{**p, "seed": 4321}))])
    assert other["y"] != alone["x"]


@pytest.mark.parametrize("mode", ["false", "true"])
def test_abort_frees_blocks_at_the_next_step(checkpoint, chat_ids, mode):
    engine = TorchEngine(ServingConfig.of(async_scheduling=mode), checkpoint)
    engine.add_request(greedy("a", chat_ids, n=200, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.stats().kv_blocks_free < engine.stats().kv_blocks_total
    engine.abort("a")
    outs = engine.step()
    assert [(o.request_id, o.finish_reason) for o in outs] == [("a", "abort")]
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total
    assert not engine.has_work()


def test_stop_token_ids_min_tokens_and_length(checkpoint, chat_ids):
    engine = TorchEngine(ServingConfig.of(), checkpoint)
    out, reasons = run(engine, [greedy("len", chat_ids, n=3), greedy("min", chat_ids, n=40, min_tokens=30)])
    assert len(out["len"]) == 3 and reasons["len"] == "length"
    assert len(out["min"]) >= 30  # EOS is banned until min_tokens
    first = out["len"][1]
    out, reasons = run(engine, [greedy("stop", chat_ids, n=10, stop_token_ids=[first])])
    assert out["stop"] == out["stop"][:1] and reasons["stop"] == "stop"


def test_requests_the_engine_cannot_hold_are_refused(checkpoint):
    engine = TorchEngine(ServingConfig.of(max_model_len=64, kv_cache_memory_bytes=8 * 737280), checkpoint)
    with pytest.raises(InvalidRequest, match="text_input"):
        engine.add_request(greedy("empty", []))
    with pytest.raises(InvalidRequest, match="context"):
        engine.add_request(greedy("long", list(range(100, 200))))
    with pytest.raises(InvalidRequest, match="KV cache"):
        TorchEngine(ServingConfig.of(kv_cache_memory_bytes=3 * 737280), checkpoint).add_request(
            greedy("big", list(range(100, 160))))


def test_kv_budget_too_small_fails_at_start_naming_the_knob(checkpoint):
    with pytest.raises(ConfigError, match="kv_cache_memory_bytes"):
        TorchEngine(ServingConfig.of(kv_cache_memory_bytes=1000), checkpoint)


def test_a_failing_sequence_fails_alone(checkpoint, tokenizer, chat_ids):
    bad_token = 12345
    engine = TorchEngine(ServingConfig.of(fault_injection=f"fail_on_token:{bad_token}"), checkpoint)
    good = greedy("good", chat_ids, n=12)
    bad = greedy("bad", chat_ids[:5] + [bad_token] + chat_ids[5:], n=12)
    engine.add_request(good)
    out, errors = {"good": engine.step()[0].new_token_ids, "bad": []}, {}  # good is running when bad arrives
    engine.add_request(bad)
    while engine.has_work():
        for o in engine.step():
            out[o.request_id] += o.new_token_ids
            if o.error:
                errors[o.request_id] = str(o.error)
    assert set(errors) == {"bad"} and "injected fault" in errors["bad"]
    assert tokenizer.decode(out["good"]) == "The capital of France is Paris."
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total


def test_async_scheduling_gives_the_same_tokens_as_synchronous_steps(checkpoint, tokenizer, chat_ids):
    """Launched-ahead decode steps (tokens carried on the device, placeholders on the host) against plain
    steps: staggered lengths, EOS and stop-token ends, a sampled request that forces synchronous steps, a
    late arrival (prefill between launched steps), an abort, and a stop string ended from outside."""
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]
    seeded = SamplingParams(temperature=0.8, seed=7, max_tokens=12)
    results = {}
    for mode in ("false", "true"):
        engine = TorchEngine(ServingConfig.of(async_scheduling=mode, kv_block_size=SMALL_BLOCK), checkpoint)
        out: dict[str, list[int]] = {}
        reasons = {}
        first = [greedy("p0", prompts[0], n=30), greedy("p1", prompts[1], n=5, ignore_eos=True),
                 greedy("p2", prompts[2], n=17, ignore_eos=True), greedy("abort", chat_ids, n=60, ignore_eos=True)]
        for r in first:
            engine.add_request(r)
        step = 0
        while engine.has_work():
            for o in engine.step():
                out.setdefault(o.request_id, []).extend(o.new_token_ids)
                if o.finish_reason:
                    reasons[o.request_id] = o.finish_reason
            step += 1
            if step == 4:
                engine.add_request(greedy("late", prompts[3], n=9, ignore_eos=True))
            if step == 6:
                engine.add_request(EngineRequest("sampled", chat_ids, seeded, frozenset({2})))
            if step == 8:
                engine.abort("abort")
            if step == 10:
                stop_at = out["p2"][3]
                engine.add_request(greedy("stop", prompts[2], n=20, stop_token_ids=[stop_at]))
            if step == 12 and "p0" in engine.seqs:
                engine.finish("p0")  # what the service does on a stop string
        results[mode] = (out, reasons)
        assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total
        assert not any(-1 in seq.tokens for seq in engine.seqs.values())
    sync, fast = results["false"], results["true"]
    assert fast[1] == sync[1]
    for rid in ("p1", "p2", "late", "sampled", "stop"):
        assert fast[0][rid] == sync[0][rid], rid
    assert len(sync[0]["p1"]) == 5 and len(sync[0]["late"]) == 9 and sync[1]["stop"] == "stop"
    # Aborted and externally finished requests end at a step boundary that may differ by the launched step:
    # what they got is a prefix of the same answer.
    for rid in ("abort", "p0"):
        a, b = sync[0].get(rid, []), fast[0].get(rid, [])
        assert a[:min(len(a), len(b))] == b[:min(len(a), len(b))], rid


def test_fp8_kv_cache_holds_four_times_the_tokens_of_float32_and_still_answers(checkpoint, tokenizer, chat_ids):
    budget = 32 << 20
    wide = TorchEngine(ServingConfig.of(kv_cache_memory_bytes=budget), checkpoint)  # float32 on CPU
    narrow = TorchEngine(ServingConfig.of(kv_cache_memory_bytes=budget, kv_cache_dtype="fp8"), checkpoint)
    assert narrow.runner.kv_cache.dtype == torch.float8_e4m3fn
    assert 4 * wide.blocks.num_blocks <= narrow.blocks.num_blocks < 4 * (wide.blocks.num_blocks + 1)
    out, reasons = run(narrow, [greedy("a", chat_ids)])
    assert "Paris" in tokenizer.decode(out["a"]) and reasons["a"] == "stop"


def test_step_trace_writes_one_line_per_eager_step(checkpoint, chat_ids, tmp_path):
    trace = tmp_path / "steps.txt"
    # the prompt takes several chunks
    engine = TorchEngine(ServingConfig.of(max_num_tokens=16), checkpoint, observer=StepTrace(str(trace)))
    run(engine, [greedy("t", chat_ids, n=2)])
    engine.shutdown()
    lines = [line for line in trace.read_text().splitlines() if " gc gen=2 " not in line]  # a full collection
    assert len(lines) >= -(-len(chat_ids) // 16)                                             # may come any time
    assert all(" eager seqs=1 tokens=" in line and " oldest_wait_ms=" in line for line in lines)
    fields = [dict(kv.split("=") for kv in line.split()[2:]) for line in lines]
    assert all(0 < float(f["launch_ms"]) <= float(f["ms"]) for f in fields)


def test_max_model_len_defaults_to_the_smaller_of_the_model_and_the_kv_budget(checkpoint, chat_ids, caplog):
    blocks = 8  # 128 tokens, below SmolLM2's max_position_embeddings
    with caplog.at_level("WARNING", logger="llmserve.engine.startup"):
        engine = TorchEngine(ServingConfig.of(kv_cache_memory_bytes=blocks * 737280), checkpoint)
    model_len = engine.runner.model.args.max_position_embeddings
    assert engine.max_model_len == blocks * 16 < model_len
    assert "what the KV cache holds for one sequence" in caplog.text
    assert set(engine.startup) == {"load", "kv_allocation"} and all(s >= 0 for s in engine.startup.values())
    with pytest.raises(InvalidRequest, match=rf"model context is 128 tokens \(max_model_len; the model's "
                                             rf"max_position_embeddings is {model_len} and the KV cache holds 128"):
        engine.add_request(greedy("long", chat_ids * 4))
    out, reasons = run(engine, [greedy("fits", chat_ids, n=200, ignore_eos=True)])
    assert len(chat_ids) + len(out["fits"]) == 128 and reasons["fits"] == "length"  # ends at the served context


def test_max_model_len_above_either_limit_is_refused_naming_both(checkpoint):
    with pytest.raises(ConfigError, match=r"^max_model_len: 129 tokens .* max_position_embeddings is \d+ and the KV "
                                          r"cache holds 128 tokens for one sequence"):
        TorchEngine(ServingConfig.of(max_model_len=129, kv_cache_memory_bytes=8 * 737280), checkpoint)


def test_served_context_takes_the_model_limit_when_the_kv_cache_holds_more(caplog):
    with caplog.at_level("INFO", logger="llmserve.engine.startup"):
        assert served_context(0, 4096, 10_000) == 4096
    assert "max_model_len 4096: the model's max_position_embeddings" in caplog.text
    assert served_context(0, 4096, 1000) == 1000
    assert served_context(2048, 4096, 10_000) == 2048
    with pytest.raises(ConfigError, match=r"^max_model_len: 8192 tokens .*max_position_embeddings is 4096 and the "
                                          r"KV cache holds 10000 tokens"):
        served_context(8192, 4096, 10_000)


def _stepped(checkpoint, mode, knobs, arrivals, aborts):
    """Runs requests arriving at given steps (and aborts at given steps); returns (tokens, finish reasons,
    engine, launches): per launched step (more tokens than rows, a token carried on the device, the Launched)."""
    engine = TorchEngine(ServingConfig.of(async_scheduling=mode, **knobs), checkpoint)
    launches = []
    launch = engine.runner.launch

    def counted(batch, src_rows, prev):
        launched = launch(batch, src_rows, prev)
        launches.append((batch.total_tokens > len(batch.seqs), any(r >= 0 for r in src_rows), launched))
        return launched
    engine.runner.launch = counted
    out, reasons, step = {}, {}, 0
    while engine.has_work() or step <= max(arrivals):
        for r in arrivals.get(step, ()):
            engine.add_request(r)
        if step in aborts:
            engine.abort(aborts[step])
        for o in engine.step():
            out.setdefault(o.request_id, []).extend(o.new_token_ids)
            if o.finish_reason:
                reasons[o.request_id] = o.finish_reason
        step += 1
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total
    assert not engine.seqs and not engine.scheduler.running
    return out, reasons, engine, launches


@pytest.mark.parametrize("case", ["staggered", "chunked", "prefix", "small_kv"])
def test_async_mixed_steps_give_the_same_tokens_as_synchronous_steps(checkpoint, tokenizer, chat_ids, case):
    """Mixed steps (prefill chunks next to decode rows whose tokens are still on the device) launched behind the
    step on the GPU, against synchronous steps: prompts arriving while others decode, EOS and max_tokens ends
    and an abort mid-chain; prompts chunked over several steps; prefix-cache hits; a KV cache so small that the
    chain falls back to synchronous steps, which preempt."""
    p = [tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in PROMPTS]
    knobs: dict = {"kv_block_size": SMALL_BLOCK}
    aborts = {}
    if case == "staggered":
        arrivals = {0: [greedy("p0", p[0], n=20), greedy("p1", p[1], n=6, ignore_eos=True)],
                    2: [greedy("p2", p[2], n=12, ignore_eos=True)], 5: [greedy("p3", p[3], n=10)],
                    7: [greedy("abort", chat_ids, n=40, ignore_eos=True)]}
        aborts = {11: "abort"}
    elif case == "chunked":
        knobs["max_num_tokens"] = 7
        arrivals = {0: [greedy("p0", p[0], n=10)], 3: [greedy("p1", p[1], n=8, ignore_eos=True)],
                    6: [greedy("p2", p[2], n=6, ignore_eos=True)]}
    elif case == "prefix":
        arrivals = {0: [greedy("a", chat_ids, n=8, ignore_eos=True)], 4: [greedy("b", chat_ids, n=8)],
                    6: [greedy("c", chat_ids[:-2] + p[1][-6:], n=8, ignore_eos=True)]}
    else:
        knobs.update(kv_block_size=16, kv_cache_memory_bytes=8 * 737280, max_batch_size=4)
        arrivals = {0: [greedy("p0", p[0], n=24, ignore_eos=True), greedy("p1", p[1], n=24, ignore_eos=True)],
                    2: [greedy("p2", p[2], n=24, ignore_eos=True)], 4: [greedy("p3", p[3], n=24, ignore_eos=True)]}
    sync = _stepped(checkpoint, "false", knobs, arrivals, aborts)
    fast = _stepped(checkpoint, "true", knobs, arrivals, aborts)
    assert not sync[3]
    for rid in sync[1]:
        if rid not in aborts.values():
            assert fast[0][rid] == sync[0][rid], rid
            assert fast[1][rid] == sync[1][rid], rid
    for rid in aborts.values():  # ended at a step boundary one launched step apart: a prefix of the same answer
        a, b = sync[0].get(rid, []), fast[0].get(rid, [])
        assert fast[1][rid] == "abort" and a[:len(b)] == b[:len(a)], rid
    mixed = [(carried, launched) for is_mixed, carried, launched in fast[3] if is_mixed]
    assert any(carried for carried, _ in mixed)  # a launched mixed step took a decode row's token on the device
    if case == "chunked":
        assert any(launched.chunks for _, launched in mixed)  # a launched prompt chunk with more to come
    if case == "prefix":
        assert fast[2].stats().prefix_cache_hit_blocks >= (len(chat_ids) - 1) // 4
    if case == "small_kv":
        assert sync[2].stats().preemptions > 0 and fast[2].stats().preemptions > 0
    if case == "staggered":
        assert sync[1]["p1"] == "length" and len(sync[0]["p1"]) == 6
