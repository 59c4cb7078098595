"""Whether pipelined steps overlap the stages (issue 19 item 2), on whatever device is here: a step's
micro-batches, and steps in flight over different sequences.

    python -m bench.pipeline_overlap --out /tmp/pp    # the CPU over gloo: a few minutes on 2 cores

The same prefill and decode steps on a random-weight model, each layout its own engine: one process (all the
cores, and one thread: a PP2 rank's share of 2 cores), pipeline_parallel_size 2 with one micro-batch (the stages
take turns: no overlap), and with 2 and 4 micro-batches. Each rank of a CPU group gets cores // ranks threads, so
without overlap a PP2 step takes about the one-thread step; overlapping micro-batches bring it towards half.
Then whole requests through the engine's `step` loop (decode throughput): one step at a time against one step
per stage in flight (pipeline_steps_in_flight), where decode steps overlap too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from llmserve.config import ServingConfig
from llmserve.engine.api import EngineRequest
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.scheduler import ScheduledBatch
from llmserve.engine.torch_engine import TorchEngine

SHAPE = dict(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5, model_type="llama",
             llmserve_random_init={"seed": 0, "std": 0.02})
LAYOUTS = {"single": {}, "single-1thread": {}, "pp2-mb1": dict(pipeline_parallel_size=2, pipeline_micro_batches=1),
           "pp2-mb2": dict(pipeline_parallel_size=2, pipeline_micro_batches=2),
           "pp2-mb4": dict(pipeline_parallel_size=2, pipeline_micro_batches=4)}
# Whole requests on a wider model: at hidden 512 a CPU decode step is mostly fixed per-step costs, which do not
# shrink when a step has half the sequences.
SERVE_SHAPE = dict(SHAPE, hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8)
SERVE_LAYOUTS = {"single": {}, "single-1thread": {},
                 "pp2-1-in-flight": dict(pipeline_parallel_size=2, pipeline_steps_in_flight=1),
                 "pp2-2-in-flight": dict(pipeline_parallel_size=2, pipeline_steps_in_flight=2)}
KNOBS = dict(device="cpu", dtype="float32", kv_block_size=16, max_num_tokens=1024, max_batch_size=32,
             kv_cache_memory_bytes=256 << 20)


def step_ms(engine: TorchEngine, seqs: int, tokens: int, repeats: int) -> float:
    """The fastest of `repeats` runs (other work on shared cores only adds) of the runner's step over `seqs`
    sequences of `tokens` new tokens each: a prefill of that many tokens per sequence, or a decode step (1)."""
    for i in range(seqs):
        params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
        engine.add_request(EngineRequest(f"r{i}", [(7 * i + j) % 4000 + 5 for j in range(tokens)], params))
    batch = engine.scheduler.schedule()
    assert len(batch.seqs) == seqs and all(n == tokens for n in batch.num_tokens), batch.num_tokens
    sampling = engine.runner.sampling_of(batch)[1]
    times = []
    for _ in range(repeats):  # the same step again: it rewrites the same KV slots
        t0 = time.perf_counter()
        engine.runner.run(ScheduledBatch(batch.seqs, batch.num_tokens), sampling)
        times.append((time.perf_counter() - t0) * 1e3)
    for i in range(seqs):
        engine.abort(f"r{i}")
    engine.step()
    return min(times)


def serve_tok_s(engine: TorchEngine, seqs: int, prompt: int, output: int) -> float:
    """Output tokens a second of `seqs` greedy requests run to their end through `step` (prefill included)."""
    for i in range(seqs):
        params = SamplingParams(temperature=0, max_tokens=output, ignore_eos=True)
        engine.add_request(EngineRequest(f"s{i}", [(11 * i + j) % 4000 + 5 for j in range(prompt)], params))
    t0, tokens = time.perf_counter(), 0
    while engine.has_work():
        tokens += sum(len(o.new_token_ids) for o in engine.step())
    assert tokens == seqs * output, tokens
    return tokens / (time.perf_counter() - t0)


def write_config(path: Path, shape: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(shape))
    return path


def run_layouts(ckpt: Path, layouts: dict, measure) -> dict:
    results, threads = {}, torch.get_num_threads()
    for name, knobs in layouts.items():
        torch.set_num_threads(1 if name == "single-1thread" else threads)  # one PP2 rank's share of 2 cores
        engine = TorchEngine(ServingConfig.of(**KNOBS, **knobs), ckpt)
        try:
            results[name] = measure(engine)
        finally:
            engine.shutdown()
        torch.set_num_threads(threads)
        print(name, results[name], flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--serve-repeats", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--output", type=int, default=64)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt, wide = write_config(args.out / "model", SHAPE), write_config(args.out / "wide", SERVE_SHAPE)
    steps = run_layouts(ckpt, LAYOUTS, lambda e: {"prefill 4 x 256 ms": step_ms(e, 4, 256, args.repeats),
                                                   "decode 16 x 1 ms": step_ms(e, 16, 1, args.repeats * 4)})
    serve = run_layouts(wide, SERVE_LAYOUTS, lambda e: {
        f"{n} x {args.prompt}/{args.output} tok/s": max(serve_tok_s(e, n, args.prompt, args.output)
                                                       for _ in range(args.serve_repeats)) for n in (8, 32)})
    (args.out / "results.json").write_text(json.dumps({"steps": steps, "serve": serve}, indent=2))


if __name__ == "__main__":
    main()
