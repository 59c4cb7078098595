"""Whether a pipelined step's micro-batches overlap the stages (issue 19 item 2), on whatever device is here.

    python -m bench.pipeline_overlap --out /tmp/pp    # the CPU over gloo: a few minutes on 2 cores

The same prefill and decode steps on a random-weight model, each layout its own engine: one process (all the
cores, and one thread: a PP2 rank's share of 2 cores), pipeline_parallel_size 2 with one micro-batch (the stages
take turns: no overlap), and with 2 and 4 micro-batches. Each rank of a CPU group gets cores // ranks threads, so
without overlap a PP2 step takes about the one-thread step; overlapping micro-batches bring it towards half.
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
KNOBS = dict(device="cpu", dtype="float32", kv_block_size=16, max_num_tokens=1024, max_batch_size=16,
             kv_cache_memory_bytes=64 << 20)


def step_ms(engine: TorchEngine, seqs: int, tokens: int, repeats: int) -> float:
    """The fastest of `repeats` runs (other work on shared cores only adds) of the runner's step over `seqs`
    sequences of `tokens` new tokens each: a prefill of that many tokens per sequence, or a decode step (1)."""
    for i in range(seqs):
        params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
        engine.add_request(EngineRequest(f"r{i}", [(7 * i + j) % 4000 + 5 for j in range(tokens)], params))
    batch = engine.scheduler.schedule()
    assert len(batch.seqs) == seqs and all(n == tokens for n in batch.num_tokens), batch.num_tokens
    sampling = engine.sampling_batch(engine.runner.sampling_rows(batch))
    times = []
    for _ in range(repeats):  # the same step again: it rewrites the same KV slots
        t0 = time.perf_counter()
        engine.runner.run(ScheduledBatch(batch.seqs, batch.num_tokens), sampling)
        times.append((time.perf_counter() - t0) * 1e3)
    for i in range(seqs):
        engine.abort(f"r{i}")
    engine.step()
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "model"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "config.json").write_text(json.dumps(SHAPE))
    results, threads = {}, torch.get_num_threads()
    for name, knobs in LAYOUTS.items():
        torch.set_num_threads(1 if name == "single-1thread" else threads)  # one PP2 rank's share of 2 cores
        engine = TorchEngine(ServingConfig.of(**KNOBS, **knobs), ckpt)
        try:
            results[name] = {"prefill 4 x 256 ms": step_ms(engine, 4, 256, args.repeats),
                             "decode 16 x 1 ms": step_ms(engine, 16, 1, args.repeats * 4)}
        finally:
            engine.shutdown()
        print(name, results[name], flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
