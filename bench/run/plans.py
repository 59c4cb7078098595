"""What a run measures: the workloads, the concurrencies per plan, the engine and Triton phase variants and
the serving knobs every engine starts from; helpers that read them for a phase."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import SHAPES

WORKLOADS = {"128x128": (128, 128), "128x2048": (128, 2048), "2048x128": (2048, 128), "1000x1000": (1000, 1000),
             "2048x2048": (2048, 2048), "128x32": (128, 32)}


# The context a shape is served with when its max_position_embeddings is longer (the longest workload's)
WORKLOAD_CONTEXT = max(i + o for i, o in WORKLOADS.values())


# Long prompts (`--plan long`, issue 18 item 5): TTFT and inter-token latency at 8k, 16k and 32k tokens, served with
# the context they need and LONG_KNOBS (unless --serving sets them)
LONG_WORKLOADS = {"8192x128": (8192, 128), "16384x128": (16384, 128), "32768x128": (32768, 128)}


WORKLOADS.update(LONG_WORKLOADS)


LONG_KNOBS = {"max_model_len": max(i + o for i, o in LONG_WORKLOADS.values()), "max_num_tokens": 8192}


# Concurrency per workload; 128/2048 and 2048/128 stop at 32 streams: at 64 x 2176 tokens the KV cache of a 7B
# model (0.5 MB a token in 16 bits) outgrows the ~58 GB left on an 80 GB card, and device time is rationed.
PLAN = {
    "engine": {"128x128": [1, 8, 32, 64, 256], "128x2048": [1, 8, 32], "2048x128": [1, 8, 32]},
    "engine_quant": {"128x128": [1, 8, 32, 64, 256], "2048x128": [1, 8]},
    "variant": {"128x128": [1, 8, 32, 64, 256]},  # ENGINE_VARIANTS: 128/128, for a side-by-side ratio
    "hf": {"128x128": [1, 8, 64]},
    "triton": {"128x128": [1, 8, 32, 64, 256], "2048x128": [1, 8, 32], "128x2048": [1, 8]},
    "triton_variant": {"128x128": [8, 64, 256], "2048x128": [32]},  # TRITON_VARIANTS: the points that were short
    # TensorRT-LLM's perf-overview workloads (`--plan trtllm`), swept to the concurrency of best throughput, plus
    # the batch-1 point; needs --serving max_batch_size=1024 to run 1,024 streams in one batch (more wait in the
    # queue, as trtllm-bench submits every request at once). Several 10-minute calls: --workloads, --resume.
    "trtllm": {"128x128": [1, 256, 512, 1024, 2048], "128x2048": [256, 512, 1024], "2048x128": [256, 512, 1024],
               "1000x1000": [256, 512, 1024], "2048x2048": [256, 512, 1024]},
    # A first look in one call: four of them at one to three concurrencies (2048/2048 at 256 streams outgrows the
    # KV cache of an 8B model in 16 bits on an H200)
    "trtllm_short": {"128x128": [1, 256, 1024], "128x2048": [256], "2048x128": [256], "1000x1000": [256]},
    # Issue 22's targets for int4 g128 (`--phases floor,engine,engine_int4`): batch 1 beside the 4-bit read, batch 8
    # and 256 streams beside bf16, and 2048/128 at batch 1 as NVIDIA's INT4-AWQ figure is measured
    "int4": {"128x128": [1, 8, 64, 256], "2048x128": [1, 8]},
    # The guide's "600+ requests/s on one card": 128-token prompts, 32-token answers, requests a second
    "guide": {"128x32": [256, 512, 1024, 2048]},
    # batch 1 and a few streams per prompt length (the 4 x 32k point needs ~17 GB of 16-bit KV for Llama-3.1-8B)
    "long": {"8192x128": [1, 4], "16384x128": [1, 4], "32768x128": [1, 2, 4]},
}


# Requests per point of the trtllm plans, in units of the point's concurrency (from 64 streams up): trtllm-bench
# queues thousands of requests (30,000 for 128/128, 3,000 or 1,500 for the others) and reports the whole run, so the
# ramp of one wave weighs little there. --waves overrides it.
PLAN_WAVES = {"trtllm": 8, "trtllm_short": 8, "guide": 8}


# The Triton phases and their engine-direct twin run each 128/128 point this many times, on new prompts each
# time, and report the repetition of median throughput: a point is one wave of `concurrency` requests, a second
# or two, and single waves of the same code moved the Triton / direct ratio by +-3% from run to run.
REPEATS = {"128x128": 3}


QUICK = {
    "engine": {"128x128": [1, 8]}, "engine_quant": {"128x128": [1, 8]}, "variant": {"128x128": [1, 8]},
    "hf": {"128x128": [1]},
    "triton": {"128x128": [1, 8]}, "triton_variant": {"128x128": [8]},
    "trtllm": {"128x128": [1, 8], "2048x128": [4]}, "trtllm_short": {"128x128": [1, 8]},
    "long": {"8192x128": [1]}, "guide": {"128x32": [8]}, "int4": {"128x128": [1, 8], "2048x128": [1]},
}


# The engine phases by weight storage (int4: symmetric, groups of 128, the guide's recipe; +head8: the lm_head in
# int8 weight-only too, quantization.lm_head)
ENGINE_MODES = {"engine": "bf16", "engine_fp8": "fp8", "engine_int8": "int8_wo", "engine_int4": "int4_sym",
                "engine_int4_head8": "int4_sym+head8", "engine_fp8_head8": "fp8+head8"}


# Engine phases that differ from `engine` / `engine_fp8` by serving knobs: (weights, knobs).
ENGINE_VARIANTS = {
    "engine_sync": ("bf16", ["async_scheduling=false"]),  # stepping synchronously
    "engine_nopdl": ("bf16", ["pdl=false"]),  # plain kernel launches
    "engine_kv8": ("bf16", ["kv_cache_dtype=fp8"]),  # e4m3 KV cache
    "engine_fp8_kv8": ("fp8", ["kv_cache_dtype=fp8"]),
    # Twice the tokens per step: half as many prefill steps in a 256-stream ramp
    "engine_t2048": ("bf16", ["max_num_tokens=2048"]),
    "engine_fp8_t2048": ("fp8", ["max_num_tokens=2048"]),
    "engine_fp8_t4096": ("fp8", ["max_num_tokens=4096"]),  # trtllm-bench's budgets are larger still (8,192)
    "engine_t8192": ("bf16", ["max_num_tokens=8192"]),
    "engine_fp8_t8192": ("fp8", ["max_num_tokens=8192"]),
    "engine_fp8_kv8_t8192": ("fp8", ["max_num_tokens=8192", "kv_cache_dtype=fp8"]),  # decode reads half the KV bytes
    "engine_kv8_t8192": ("bf16", ["max_num_tokens=8192", "kv_cache_dtype=fp8"]),
    # mixed steps of up to 4,096 tokens in prefill graphs, launched behind the previous step like decode steps
    "engine_fp8_t8192_pg4096": ("fp8", ["max_num_tokens=8192", "prefill_graph_max_tokens=4096"]),
    # Prefill and mixed steps launched kernel by kernel, as before their CUDA graphs
    "engine_eager_prefill": ("bf16", ["prefill_graph_max_tokens=0"]),
    "engine_fp8_eager_prefill": ("fp8", ["prefill_graph_max_tokens=0"]),
    # Through the tensor-parallel rank group with one rank (NCCL all-reduces, step messages): the group's cost
    "engine_group1": ("bf16", ["distributed=always"]),
}


# The Triton phase with other knobs or instance counts, side by side with `triton` (same engine-direct twin):
# (knobs, model instances, PLAN entry).
TRITON_VARIANTS = {
    "triton_inproc": (["engine_process=false"], 1, "triton_variant"),  # the engine inside the stub process
    "triton_x2": ([], 2, "triton"),  # two stubs sharing one engine process
    "triton_x4": ([], 4, "triton"),
    "triton_gil1ms": (["gil_switch_interval_us=1000"], 1, "triton"),  # the GIL handed over within 1 ms, not 5
}


# The serving knobs of every engine in the run (engine-direct and behind Triton alike). The queue delay lets
# requests that reach the server one by one (Triton delivers them ~1 ms apart) share a prefill step: it ends
# 2 ms after the newest arrival, when the waiting prompts fill a step, or at 20 ms.
SERVING_DEFAULTS = {"max_batch_size": 256, "max_num_tokens": 1024, "kv_cache_free_mem_fraction": 0.9,
                    "dtype": "bfloat16", "kv_block_size": 16, "enable_prefix_caching": True, "cuda_graphs": True,
                    "prefill_graph_max_tokens": 2048, "async_scheduling": "auto", "max_queue_delay_us": 20000,
                    "queue_delay_gap_us": 2000, "engine_process": "auto"}


def progress(it, **kw):
    try:
        from tqdm import tqdm

        return tqdm(it, file=sys.stderr, mininterval=2, **kw)
    except ImportError:
        return it


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(100, vocab - 100) for _ in range(length)] for _ in range(n)]


def plan_for(args, default: str) -> dict:
    """The phase's PLAN entry (QUICK's with --quick), keeping only --workloads and --concurrency when given."""
    plan = (QUICK if args.quick else PLAN)[args.plan or default]
    keep = args.workloads.split(",") if args.workloads else list(plan)
    streams = {int(c) for c in args.concurrency.split(",")} if args.concurrency else None
    plan = {w: [c for c in cs if streams is None or c in streams] for w, cs in plan.items() if w in keep}
    return {w: cs for w, cs in plan.items() if cs}


def admission_knobs(plan: dict, knobs: dict) -> dict:
    """Queue limits that take a plan's largest wave at once (every request of a point is submitted together),
    where the engine's defaults would refuse it and --serving does not set them."""
    from llmserve.config import BatchingConfig

    if not plan:
        return {}
    need = {"max_queue_size": max(c for cs in plan.values() for c in cs),
            "max_queued_tokens": max(WORKLOADS[w][0] * c for w, cs in plan.items() for c in cs)}
    defaults = BatchingConfig()
    return {k: v for k, v in need.items() if k not in knobs and v > getattr(defaults, k)}


def shape_knobs(shape: str, plan: str | None = None, given: frozenset[str] = frozenset()) -> dict:
    """max_model_len for a shape whose context is longer than the workloads need; the long plan's context and step
    budget (LONG_KNOBS). `given`: the knobs --serving sets, which win."""
    if plan == "long":
        return {k: v for k, v in LONG_KNOBS.items() if k not in given}
    if "max_model_len" in given or SHAPES[shape]["max_position_embeddings"] <= WORKLOAD_CONTEXT:
        return {}
    return {"max_model_len": WORKLOAD_CONTEXT}


def waves_of(args, concurrency: int) -> int:
    """How many times `concurrency` requests a point submits (closed loop: one replaces each that finishes)."""
    if concurrency < 64:
        return 1
    return args.waves or PLAN_WAVES.get(args.plan, 1)


def save_partial(args, res: dict) -> None:
    """The points measured so far, where the parent reads the phase's result: they survive a --phase-timeout."""
    if args.phase_out:
        Path(args.phase_out).write_text(json.dumps(dict(res, partial=True), indent=1))


def median_repeat(reps: list[dict]) -> dict:
    """The repetition of median throughput (the upper one of an even count), with every repetition's."""
    s = sorted(reps, key=lambda r: r["throughput_tok_s"])[len(reps) // 2]
    if len(reps) > 1:
        s["repeats_tok_s"] = [r["throughput_tok_s"] for r in reps]
    return s
