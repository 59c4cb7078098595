"""The benchmark: our engine directly, the same engine behind the real Triton server, HF transformers, and the
weight-read floor, on one GPU in one run, on random weights of one model shape (--shape: the config.json values
of Llama-3.1-8B, Qwen2.5-7B, Mistral-7B-v0.3 or Llama-2-7B, the default, kept for history).

    python -m bench.run                                                 # everything (about 6-7 minutes on an H200)
    python -m bench.run --phases floor,engine --quick --out /tmp/b     # a smoke run
    python -m bench.run --shape llama3.1-8b --phases floor,engine_fp8 --plan trtllm \
        --serving max_batch_size=1024                                   # TensorRT-LLM's workloads, up to 2048 streams
    python -m bench.run --shape llama3.1-8b --phases load               # start from a 16 GB checkpoint on disk
    python -m bench.run --shape llama3.1-8b --phases engine,engine_fp8 --plan long   # 8k/16k/32k-token prompts

Each phase runs in its own process (GPU memory is freed between them) and writes a JSON file; the parent
merges them into results.json, results.md and results.png under --out. Weights are made on the GPU (no 13 GB
checkpoint on disk) with the shape's vocabulary for the engine-direct, HF and floor phases; the Triton phase
needs a tokenizer, so it uses SmolLM2's (vocab 49152) with the shape's other dimensions and measures
engine-direct again on that same model. Generation ignores EOS, so every request produces exactly the output
length. A shape whose context is longer than the workloads need is served with max_model_len 4096 (the longest
workload, 2048 + 2048), so the CUDA graphs and the KV budget are those of the workloads.
`--plan trtllm` runs TensorRT-LLM's five workloads (128/128, 128/2048, 2048/128, 1000/1000, 2048/2048) at up to
1,024 streams (2,048 for 128/128) for the engine phases (not the Triton twin), all of a point's requests
submitted at once; the report gives each workload's best throughput beside TensorRT-LLM's published figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from statistics import median_high

from bench.common import DEFAULT_SHAPE, ROOT, SHAPES, environment, linear_shapes, shape_config, write_random_checkpoint

WORKLOADS = {"128x128": (128, 128), "128x2048": (128, 2048), "2048x128": (2048, 128), "1000x1000": (1000, 1000),
             "2048x2048": (2048, 2048)}
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
    # batch 1 and a few streams per prompt length (the 4 x 32k point needs ~17 GB of 16-bit KV for Llama-3.1-8B)
    "long": {"8192x128": [1, 4], "16384x128": [1, 4], "32768x128": [1, 2, 4]},
}
# Requests per point of the trtllm plans, in units of the point's concurrency (from 64 streams up): trtllm-bench
# queues thousands of requests (30,000 for 128/128, 3,000 or 1,500 for the others) and reports the whole run, so the
# ramp of one wave weighs little there. --waves overrides it.
PLAN_WAVES = {"trtllm": 8, "trtllm_short": 8}
# The Triton phases and their engine-direct twin run each 128/128 point this many times, on new prompts each
# time, and report the repetition of median throughput: a point is one wave of `concurrency` requests, a second
# or two, and single waves of the same code moved the Triton / direct ratio by +-3% from run to run.
REPEATS = {"128x128": 3}
QUICK = {
    "engine": {"128x128": [1, 8]}, "engine_quant": {"128x128": [1, 8]}, "variant": {"128x128": [1, 8]},
    "hf": {"128x128": [1]},
    "triton": {"128x128": [1, 8]}, "triton_variant": {"128x128": [8]},
    "trtllm": {"128x128": [1, 8], "2048x128": [4]}, "trtllm_short": {"128x128": [1, 8]},
    "long": {"8192x128": [1]},
}
# The engine phases by weight storage (int4: symmetric, groups of 128, the guide's recipe)
ENGINE_MODES = {"engine": "bf16", "engine_fp8": "fp8", "engine_int8": "int8_wo", "engine_int4": "int4_sym"}
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
SERVING = {"max_batch_size": 256, "max_num_tokens": 1024, "kv_cache_free_mem_fraction": 0.9, "dtype": "bfloat16",
           "kv_block_size": 16, "enable_prefix_caching": True, "cuda_graphs": True, "prefill_graph_max_tokens": 2048,
           "async_scheduling": "auto",
           "max_queue_delay_us": 20000, "queue_delay_gap_us": 2000, "engine_process": "auto"}


def _progress(it, **kw):
    try:
        from tqdm import tqdm

        return tqdm(it, file=sys.stderr, mininterval=2, **kw)
    except ImportError:
        return it


def _random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(100, vocab - 100) for _ in range(length)] for _ in range(n)]


# -- phases (each in its own process) --------------------------------------------------------------------------------
def _floor_weights(cfg: dict, mode: str, g) -> list:
    """Random weights of every linear layer of the shape (stored as `mode` stores them) and the bf16 lm_head:
    [(tensor, scale, gated)]."""
    import torch

    from llmserve.model.linear import quantize_weight

    weights = []
    for _ in range(cfg["num_hidden_layers"]):
        for name, (n, k) in linear_shapes(cfg).items():
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
            if mode != "bf16":
                q, s = quantize_weight(w, mode)
                del w
                weights.append((q, s, name == "down"))
            else:
                weights.append((w, None, name == "down"))
    lm = torch.randn(cfg["vocab_size"], cfg["hidden_size"], device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    weights.append((lm, None, False))
    return weights


def _chunked_floor(tensors: list) -> dict:
    """The floor the batch-1 targets use: torch.sum over a flat copy of the same bytes (one buffer per storage type)
    in 256 MB chunks, in one CUDA graph. The copy is freed before the other measurements."""
    import torch

    from bench.common import CHUNK_BYTES, chunked_sum_ms, flat_buffers

    flats = flat_buffers(tensors)
    nbytes = sum(f.numel() for f in flats)
    ms = chunked_sum_ms(flats)
    del flats
    torch.cuda.empty_cache()
    return {"sum_chunked_ms": ms, "sum_chunked_TBps": nbytes / ms / 1e9, "chunked_bytes": nbytes,
            "chunk_bytes": CHUNK_BYTES}


def _floor_one(cfg: dict, mode: str, g) -> dict:
    import torch

    from bench.common import graph_time_ms
    from llmserve.kernels.linear import gemv, quant_fp8_per_token

    hid, inter = cfg["hidden_size"], cfg["intermediate_size"]
    weights = _floor_weights(cfg, mode, g)
    lm = weights[-1][0]
    nbytes = sum(w.numel() * w.element_size() for w, _, _ in weights)
    r = {"weight_bytes": nbytes, **_chunked_floor([w for w, _, _ in weights])}
    views = [w.view(torch.float32) for w, _, _ in weights]
    r["sum_ms"] = graph_time_ms(lambda: [v.sum() for v in views])  # per tensor: the floor of the runs before 2026-12
    q_dim = cfg["num_attention_heads"] * cfg["head_dim"]
    xs = {k: torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for k in (hid, q_dim, inter, 2 * inter)}
    r["our_gemv_ms"] = graph_time_ms(lambda: [gemv(xs[2 * w.shape[1] if gated else w.shape[1]], w, s, gated=gated)
                                              for w, s, gated in weights])
    if mode == "bf16":
        r["cublas_m1_ms"] = graph_time_ms(lambda: [torch.nn.functional.linear(xs[w.shape[1]], w)
                                                   for w, _, _ in weights])
    if mode == "fp8":
        def scaled():
            for w, s, _ in weights[:-1]:
                xq, xsc = quant_fp8_per_token(xs[w.shape[1]])
                torch._scaled_mm(xq, w.t(), scale_a=xsc, scale_b=s[None, :], out_dtype=torch.bfloat16)
            torch.nn.functional.linear(xs[hid], lm)
        r["scaled_mm_m1_ms"] = graph_time_ms(scaled)
    r["sum_TBps"] = nbytes / r["sum_ms"] / 1e9
    r["our_gemv_TBps"] = nbytes / r["our_gemv_ms"] / 1e9
    return r


def phase_floor(args) -> dict:
    """Time to read all weights of the shape (linears + lm_head) once, in one CUDA graph: torch.sum over them in
    256 MB chunks of one flat buffer per storage type (the floor of record) and over every weight tensor (viewed
    as float32; the floor before), and for 16-bit weights cuBLAS F.linear at M = 1; plus our GEMV kernels over the
    same weights (one row), for each storage type (int8/fp8 linears + the bf16 lm_head)."""
    import torch

    cfg = shape_config(args.shape)
    g = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for mode in ("bf16", "fp8", "int8_wo"):
        out[mode] = _floor_one(cfg, mode, g)
        print(mode, out[mode], flush=True)
        torch.cuda.empty_cache()
    return out


def _engine(vocab: int, mode: str, work: Path, tokenizer_dir: Path | None = None, trace: Path | None = None,
            shape: str = DEFAULT_SHAPE):
    from llmserve.config import ServingConfig
    from llmserve.engine.observer import step_observer
    from llmserve.engine.torch_engine import TorchEngine

    ckpt = write_random_checkpoint(work / f"ckpt-{mode}-{vocab}", vocab, None if mode == "bf16" else mode,
                                   tokenizer_dir=tokenizer_dir, shape=shape)
    t0 = time.time()
    eng = TorchEngine(ServingConfig.from_parameters(SERVING), ckpt, observer=step_observer(trace and str(trace)))
    return eng, time.time() - t0


def _graph_step_ms(eng, batch: int = 1) -> float | None:
    """GPU time of one captured decode step (graph replay alone, no host work)."""
    from bench.common import replay_median_ms

    if batch not in getattr(eng.runner, "decode_graph_sizes", []):
        return None
    return replay_median_ms(eng.runner.graph_for(batch), 30)


def _freeze_heap_timed() -> dict:
    """What engine processes do once the engine is up (the bridge server's freeze_heap), with the pause of one full
    garbage collection before and after it: what a collection costs in the middle of serving."""
    import gc

    from llmserve.serving.bridge.server import freeze_heap

    t0 = time.perf_counter()
    gc.collect()
    before = (time.perf_counter() - t0) * 1e3
    freeze_heap()
    t0 = time.perf_counter()
    gc.collect()
    return {"before_freeze": round(before, 1), "after_freeze": round((time.perf_counter() - t0) * 1e3, 1),
            "frozen_objects": gc.get_freeze_count()}


def _plan(args, default: str) -> dict:
    """The phase's PLAN entry (QUICK's with --quick), keeping only --workloads and --concurrency when given."""
    plan = (QUICK if args.quick else PLAN)[args.plan or default]
    keep = args.workloads.split(",") if args.workloads else list(plan)
    streams = {int(c) for c in args.concurrency.split(",")} if args.concurrency else None
    plan = {w: [c for c in cs if streams is None or c in streams] for w, cs in plan.items() if w in keep}
    return {w: cs for w, cs in plan.items() if cs}


def _admission_knobs(plan: dict) -> dict:
    """Queue limits that take a plan's largest wave at once (every request of a point is submitted together),
    where the engine's defaults would refuse it and --serving does not set them."""
    from llmserve.config import BatchingConfig

    if not plan:
        return {}
    need = {"max_queue_size": max(c for cs in plan.values() for c in cs),
            "max_queued_tokens": max(WORKLOADS[w][0] * c for w, cs in plan.items() for c in cs)}
    defaults = BatchingConfig()
    return {k: v for k, v in need.items() if k not in SERVING and v > getattr(defaults, k)}


def _shape_knobs(shape: str, plan: str | None = None, given: frozenset[str] = frozenset()) -> dict:
    """max_model_len for a shape whose context is longer than the workloads need; the long plan's context and step
    budget (LONG_KNOBS). `given`: the knobs --serving sets, which win."""
    if plan == "long":
        return {k: v for k, v in LONG_KNOBS.items() if k not in given}
    if "max_model_len" in given or SHAPES[shape]["max_position_embeddings"] <= WORKLOAD_CONTEXT:
        return {}
    return {"max_model_len": WORKLOAD_CONTEXT}


def phase_engine(args) -> dict:
    from bench.workload import drive_engine, summarize

    plan = _plan(args, "engine" if args.mode == "bf16" else "engine_quant")
    SERVING.update(_admission_knobs(plan))
    work = Path(tempfile.mkdtemp(prefix="llmbench-"))
    tok_dir = Path(args.tokenizer_dir) if args.tokenizer_dir else None
    trace = work / "steps.txt"  # eager steps and full garbage collections (the engine's StepTrace)
    eng, init_s = _engine(args.vocab, args.mode, work, tok_dir, trace, args.shape)
    res = {"mode": args.mode, "shape": args.shape, "vocab": args.vocab, "init_s": round(init_s, 1),
           "serving": dict(SERVING), "runs": []}
    res["gc_full_ms"] = _freeze_heap_timed()
    prompt_source = json.loads(Path(args.prompts).read_text()) if args.prompts else None
    # warm-up: compiles anything left (prefill shapes) outside the measurements
    drive_engine(eng, _random_prompts(2, 64, args.vocab, 99), 8, 2)
    if eng.async_scheduling:
        from bench.workload import async_matches_sync

        lengths = [5 + 3 * i for i in range(16)]
        prompts = [p[:20 + 11 * i] for i, p in enumerate(_random_prompts(16, 200, args.vocab, 5))]
        res["async_check"] = async_matches_sync(eng, prompts, lengths)
        print("async check", res["async_check"], flush=True)
    jobs = [(w, c) for w, cs in plan.items() for c in cs]
    for wname, c in _progress(jobs, desc=f"engine {args.mode}"):
        in_len, out_len = WORKLOADS[wname]
        reps = []
        for rep in range(REPEATS.get(wname, 1) if prompt_source else 1):
            if prompt_source:
                prompts = prompt_source[wname][str(c)][rep * c:(rep + 1) * c]
            else:
                prompts = _random_prompts(c * _waves(args, c), in_len, args.vocab, seed=c * 7 + in_len)
            seen = trace.stat().st_size if trace.is_file() else 0
            records, wall = drive_engine(eng, prompts, out_len, c)
            s = summarize(records, wall, c, in_len, out_len)
            s["workload"] = wname
            s["preemptions"] = eng.stats().preemptions
            s["eager_steps"] = _eager_steps(trace, seen)
            reps.append(s)
        if (wname, c) == ("128x128", 1):  # the graph alone, right after a batch-1 run (context ~256)
            res["graph_step_ms_bs1"] = _graph_step_ms(eng, 1)
        if (wname, c) == ("128x128", 8):
            res["graph_step_ms_bs8"] = _graph_step_ms(eng, 8)
        s = _median_repeat(reps)
        res["runs"].append(s)
        print(json.dumps(s), flush=True)
        _save_partial(args, res)
    res["kv_blocks"] = eng.stats().kv_blocks_total
    eng.shutdown()
    res["gc_trace"] = [line for line in trace.read_text().splitlines() if " gc " in line]
    return res


def _rss_bytes(key: str) -> int:
    return next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(key + ":"))


def phase_load(args) -> dict:
    """Engine start from a real sharded checkpoint on disk (issue 18 item 4): writes the shape's bf16 checkpoint
    with random values in a child process (16 GB in four files for Llama-3.1-8B), starts the engine from it with
    the run's serving knobs, and reports the start split (load, KV allocation, warm-up, graph capture) and this
    process's peak host RSS during the start above its RSS before it, in bytes and in shards."""
    import multiprocessing
    import shutil

    from bench.common import write_sharded_checkpoint
    from bench.workload import drive_engine
    from llmserve.config import ServingConfig
    from llmserve.engine.torch_engine import TorchEngine

    work = Path(tempfile.mkdtemp(prefix="llmbench-load-"))
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # its memory is not this process's peak
        sizes = pool.apply(write_sharded_checkpoint, (work / "ckpt", args.shape))
    res = {"shape": args.shape, **sizes, "write_s": round(time.perf_counter() - t0, 1), "serving": dict(SERVING)}
    print("checkpoint", res, flush=True)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on (Linux)
    before = _rss_bytes("VmRSS")
    t0 = time.perf_counter()
    eng = TorchEngine(ServingConfig.from_parameters(SERVING), work / "ckpt")
    res["start_s"] = round(time.perf_counter() - t0, 2)
    peak = _rss_bytes("VmHWM") - before
    res["split_s"] = {k: round(v, 2) for k, v in eng.startup.items()}
    res["other_s"] = round(res["start_s"] - sum(eng.startup.values()), 2)  # KV sizing, the engine's own setup
    res.update(host_peak_rss_bytes=peak, host_peak_in_shards=round(peak / sizes["largest_shard_bytes"], 3),
               max_model_len=eng.max_model_len, kv_blocks=eng.stats().kv_blocks_total)
    # On the CPU (the LLMSERVE_BENCH_TINY=1 smoke) the weights and the KV cache are host memory: no shard bound.
    on_gpu = eng.runner.device.type == "cuda"
    res["target"] = {"start_s<=60": res["start_s"] <= 60,
                     "host_peak<2_shards": res["host_peak_in_shards"] < 2 if on_gpu else None}
    records, _ = drive_engine(eng, _random_prompts(2, 32, args.vocab, 3), 8, 2)  # it serves
    res["served_tokens"] = sum(len(r.token_times) for r in records)
    eng.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res), flush=True)
    return res


def _waves(args, concurrency: int) -> int:
    """How many times `concurrency` requests a point submits (closed loop: one replaces each that finishes)."""
    if concurrency < 64:
        return 1
    return args.waves or PLAN_WAVES.get(args.plan, 1)


def _save_partial(args, res: dict) -> None:
    """The points measured so far, where the parent reads the phase's result: they survive a --phase-timeout."""
    if args.phase_out:
        Path(args.phase_out).write_text(json.dumps(dict(res, partial=True), indent=1))


def _median_repeat(reps: list[dict]) -> dict:
    """The repetition of median throughput (the upper one of an even count), with every repetition's."""
    s = sorted(reps, key=lambda r: r["throughput_tok_s"])[len(reps) // 2]
    if len(reps) > 1:
        s["repeats_tok_s"] = [r["throughput_tok_s"] for r in reps]
    return s


def _eager_steps(trace: Path, offset: int) -> dict:
    """The point's prefill/mixed steps from the step trace: how many, their total and median wall time, and the
    median host time to enqueue one (launch_ms; near ms when the host sets the pace)."""
    if not trace.is_file():
        return {}
    with open(trace) as f:
        f.seek(offset)
        lines = [ln for ln in f.read().splitlines() if " eager " in ln]
    fields = [dict(kv.split("=") for kv in ln.split()[2:]) for ln in lines]
    if not fields:
        return {"count": 0}
    ms = [float(x["ms"]) for x in fields]
    out = {"count": len(ms), "total_ms": round(sum(ms), 1), "median_ms": median_high(ms),
           "median_launch_ms": median_high(float(x["launch_ms"]) for x in fields),
           "tokens": sum(int(x["tokens"]) for x in fields)}
    parts = [[float(v) for v in x["graph_parts_ms"].split("/")] for x in fields if "graph_parts_ms" in x]
    if parts:  # graph steps: host ms of inputs / replay / logits, each part's median
        out["median_graph_parts_ms"] = [median_high(col) for col in zip(*parts)]
    return out


def _hf_model(shape: str):
    """transformers' model of the shape's model_type with random weights, bf16 on the GPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = shape_config(shape)
    cfg = AutoConfig.for_model(values.pop("model_type"), **{k: v for k, v in values.items()
                                                            if k not in ("architectures", "torch_dtype")})
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg).eval()
    torch.set_default_dtype(torch.float32)
    return model.to(torch.bfloat16)


def phase_hf(args) -> dict:
    """HF transformers generate() on the same random shape (bf16, the shape's vocab), static batches of
    `concurrency`."""
    import torch

    model = _hf_model(args.shape)
    plan = _plan(args, "hf")
    res = {"dtype": "bfloat16", "transformers": __import__("transformers").__version__, "runs": []}
    with torch.inference_mode():
        warm = torch.randint(100, args.vocab - 100, (1, 16), device="cuda")
        model.generate(warm, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
        jobs = [(w, c) for w, cs in plan.items() for c in cs]
        for wname, c in _progress(jobs, desc="hf"):
            in_len, out_len = WORKLOADS[wname]
            ids = torch.tensor(_random_prompts(c, in_len, args.vocab, seed=c), device="cuda")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=out_len,
                                 min_new_tokens=out_len, do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            n = (out.shape[1] - in_len) * c
            s = {"workload": wname, "concurrency": c, "input_len": in_len, "output_len": out_len,
                 "output_tokens": n, "wall_s": round(wall, 3), "throughput_tok_s": round(n / wall, 1),
                 "ms_per_step": round(wall / out_len * 1000, 3)}
            res["runs"].append(s)
            print(json.dumps(s), flush=True)
    return res


def phase_triton(args) -> dict:
    """Starts tritonserver on a model repository holding the random model of the shape with vocab 49152 (SmolLM2's
    tokenizer), runs the plan over HTTP streaming, then stops it. The engine-direct twin runs in phase `engine`
    with the same prompts (--prompts)."""
    from bench.triton_path import Server, drive_triton, model_repository
    from bench.workload import summarize

    plan = _plan(args, "triton")
    work = Path(args.work)
    prompts = json.loads(Path(args.prompts).read_text())
    texts = json.loads(Path(args.prompts + ".texts").read_text())
    repo = model_repository(work, {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in SERVING.items()},
                            None if args.mode == "bf16" else args.mode, args.instances, shape=args.shape)
    trace = work / f"steps-{os.getpid()}.txt"  # the engine's eager steps (LLMSERVE_STEP_TRACE), per point
    os.environ["LLMSERVE_STEP_TRACE"] = str(trace)
    server = Server(work, repo)
    t0 = time.time()
    res = {"mode": args.mode, "shape": args.shape, "vocab": 49152, "serving": dict(SERVING),
           "instances": args.instances, "runs": []}
    try:
        server.start()
        res["start_s"] = round(time.time() - t0, 1)
        drive_triton(server.port, texts["warmup"][:2], 8, 2)  # warm-up, as the engine phases do theirs
        drive_triton(server.port, texts["warmup"][2:], 8, 16)
        jobs = [(w, c) for w, cs in plan.items() for c in cs]
        for wname, c in _progress(jobs, desc="triton"):
            in_len, out_len = WORKLOADS[wname]
            reps = []
            for rep in range(REPEATS.get(wname, 1)):
                with open(trace, "a") as f:
                    f.write(f"{time.monotonic():.4f} point {wname} c={c}\n")
                seen = trace.stat().st_size
                records, wall = drive_triton(server.port, texts[wname][str(c)][rep * c:(rep + 1) * c], out_len, c)
                sent, first = [r.submit for r in records], [r.token_times[0] for r in records if r.token_times]
                with open(trace, "a") as f:  # the client's side of the same clock (perf_counter is CLOCK_MONOTONIC)
                    f.write(f"client sent {min(sent):.4f}..{max(sent):.4f} first tokens "
                            f"{min(first, default=0):.4f}..{max(first, default=0):.4f}\n")
                with open(trace) as f:  # the point's trace lines, read once for both summaries
                    f.seek(seen)
                    lines = [ln.split() for ln in f.read().splitlines()]
                s = summarize(records, wall, c, in_len, out_len)
                s["workload"] = wname
                s["intake"] = _intake(lines, min(sent))
                s["intake"]["last_end_to_client_ms"] = _tail_ms(lines, records)
                errs = [r.error for r in records if r.error]
                if errs:
                    s["first_error"] = errs[0]
                reps.append(s)
            s = _median_repeat(reps)
            res["runs"].append(s)
            print(json.dumps(s), flush=True)
        assert len(prompts["128x128"]["1"][0]) == 128
    finally:
        server.stop()
        res["server_log_tail"] = server.tail(3000)
        res["step_trace"] = [ln for ln in trace.read_text().splitlines() if ln.split()[1:2] not in (["add"], ["end"])] \
            if trace.is_file() else []
    return res


def _tail_ms(lines: list[list[str]], records: list) -> float | None:
    """From the engine thread's last `end` (the final delta handed to the response path) to the client's last
    token: how far the response path (engine process -> stub -> Triton -> HTTP) trails at the end of a point.
    `lines`: the point's step-trace lines, split into words."""
    ends = [float(ln[0]) for ln in lines if ln[1:2] == ["end"]]
    last = max((r.token_times[-1] for r in records if r.token_times), default=None)
    return round((last - max(ends)) * 1e3, 1) if ends and last is not None else None


def _intake(lines: list[list[str]], first_send: float) -> dict:
    """Where a point's requests spent the time between the client's first send and the engine thread, from the
    service's `add` lines (ms; `*_ms` ranges are first..last request, relative to the client's first send):
    Triton's hand-over to execute() (arrival), the stub's intake up to the pipe (hop0), the engine process's
    reader (hop1, after the pipe and its wait for the GIL), and the engine thread taking it (the line's time)."""
    lines = [ln for ln in lines if ln[1:2] == ["add"]]
    if not lines:
        return {}
    stamps = [[float(ln[0])] + [float(kv.split("=")[1]) for kv in ln[2:]] for ln in lines]
    names = ["arrival", "stub_sent", "engine_read"][:min(len(x) for x in stamps) - 1] + ["engine_took"]
    cols = {name: [x[i + 1] if name != "engine_took" else x[0] for x in stamps] for i, name in enumerate(names)}
    out = {"requests": len(lines)}
    for name, col in cols.items():
        out[f"{name}_ms"] = [round((min(col) - first_send) * 1e3, 1), round((max(col) - first_send) * 1e3, 1)]
    for a, b in zip(names, names[1:]):  # per request, how long each stage held it
        lags = [(y - x) * 1e3 for x, y in zip(cols[a], cols[b])]
        out[f"{a}_to_{b}_ms"] = {"median": round(median_high(lags), 2), "max": round(max(lags), 2)}
    return out


def make_prompt_files(work: Path, quick: bool) -> str:
    """Texts with exactly 128 / 2048 tokens under SmolLM2's tokenizer, and their ids (shared by the Triton
    phase and its engine-direct twin): new ones for every point, so no point finds an earlier one's prompts in
    the prefix cache, and warm-up texts of other lengths."""
    from bench.triton_path import CARRY, exact_length_prompts

    tok = CARRY / "tokenizer" if (CARRY / "tokenizer").is_dir() else ROOT / "model_repository/llm/checkpoint"
    plan = (QUICK if quick else PLAN)["triton"]
    texts: dict = {}
    ids: dict = {}
    for wname, cs in plan.items():
        in_len, _ = WORKLOADS[wname]
        for c in cs:
            t, i = exact_length_prompts(tok, c * REPEATS.get(wname, 1), in_len, seed=in_len * 1000 + c)
            texts.setdefault(wname, {})[str(c)], ids.setdefault(wname, {})[str(c)] = t, i
    # like the engine phases' warm-up: two 64-token prompts, then 16 of 20 to 185 tokens
    texts["warmup"] = exact_length_prompts(tok, 2, 64, seed=99)[0] + [
        exact_length_prompts(tok, 1, 20 + 11 * i, seed=500 + i)[0][0] for i in range(16)]
    path = work / "triton_prompts.json"
    path.write_text(json.dumps(ids))
    Path(str(path) + ".texts").write_text(json.dumps(texts))
    return str(path)


PHASES = {"floor": phase_floor, "engine": phase_engine, "hf": phase_hf, "triton": phase_triton, "load": phase_load}


def _run_phase(name: str, out_json: Path, extra: list[str], log, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "bench.run", "--phase", name, "--phase-out", str(out_json), *extra]
    print(f"\n=== {' '.join(cmd[2:])}", flush=True)
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    data = json.loads(out_json.read_text()) if out_json.is_file() else {}
    data["_rc"], data["_seconds"] = rc, round(time.time() - t0, 1)
    print(f"    rc={rc} in {data['_seconds']} s", flush=True)
    return data


def _model_stamp(shape: str) -> dict:
    """The shape's dimensions for the results header (the tiny ones under LLMSERVE_BENCH_TINY=1)."""
    cfg = shape_config(shape)
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rope_theta", "rope_scaling",
            "tie_word_embeddings")
    return {k: cfg[k] for k in keys if cfg.get(k) is not None}


def _merge_phase(old: dict, new: dict) -> dict:
    """--resume of a phase measured before: the new call's fields and points, plus the earlier points it did not
    measure again (as (workload, concurrency))."""
    if not old.get("runs"):
        return new
    measured = {(r["workload"], r["concurrency"]) for r in new.get("runs", [])}
    kept = [r for r in old["runs"] if (r["workload"], r["concurrency"]) not in measured]
    return {**new, "runs": kept + new.get("runs", [])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="results folder (default: bench/results/<date>-<gpu>)")
    ap.add_argument("--phases", default="floor,engine,engine_sync,triton,engine_fp8,engine_fp8_kv8,engine_kv8,"
                    "engine_int8,hf",
                    help="floor, engine (bf16), engine_sync (bf16, async scheduling off), engine_kv8 (bf16, fp8 KV "
                    "cache), engine_fp8, engine_fp8_kv8, engine_int8, engine_int4 (int4 g128), hf, triton (+ its "
                    "engine-direct twin); also "
                    "engine_nopdl (programmatic dependent launch off), engine_t2048 / engine_fp8_t2048 (2048 "
                    "tokens a step), engine_eager_prefill / engine_fp8_eager_prefill (no prefill CUDA graphs), "
                    "triton_inproc (the engine inside the stub), triton_x2 / triton_x4 (2 / 4 Triton model "
                    "instances sharing the engine process), triton_gil1ms (GIL switch interval 1 ms), load (engine "
                    "start from a sharded bf16 checkpoint written to disk: load / KV allocation / warm-up / graph "
                    "capture seconds and the host's peak RSS)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: two concurrencies, one workload")
    ap.add_argument("--phase-timeout", type=float, default=420)
    ap.add_argument("--budget", type=float, default=0, help="start no phase after this many seconds (0: no limit)")
    ap.add_argument("--resume", action="store_true", help="add to --out/results.json instead of starting over (a "
                    "phase run again keeps its earlier points that this call does not measure)")
    ap.add_argument("--shape", choices=list(SHAPES), default=DEFAULT_SHAPE,
                    help="the model shape of every phase: config.json values of " + ", ".join(SHAPES) +
                    f" (default {DEFAULT_SHAPE}; the Triton phases use SmolLM2's vocab 49152 with its other sizes)")
    ap.add_argument("--plan", choices=list(PLAN),
                    help="the workloads and concurrencies of the engine phases (engine, engine_fp8, engine_int8 and "
                    "the variants such as engine_fp8_kv8; default engine / engine_quant / variant); trtllm: "
                    "TensorRT-LLM's five workloads at up to 1,024 streams (with --serving max_batch_size=1024), "
                    "trtllm_short: four of them at fewer concurrencies, a first look; long: 8k, 16k and 32k-token "
                    "prompts at 1 to 4 streams (TTFT and inter-token latency), served with max_model_len 32896 and "
                    "8,192 tokens a step unless --serving sets them")
    ap.add_argument("--waves", type=int, default=0, help="requests per point of 64+ streams, in units of its "
                    "concurrency (default 8 for the trtllm plans, else 1); the point reports the whole run's "
                    "throughput and the steady stretch's (steady_tok_s)")
    ap.add_argument("--concurrency", help="comma-separated: run only these concurrencies of each phase's plan "
                    "(e.g. 1024 of trtllm_short's 1, 256, 1024)")
    ap.add_argument("--workloads", help="comma-separated: run only these workloads of each phase's plan ("
                    + ", ".join(WORKLOADS) + ")")
    # internal: one phase in this process
    ap.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--phase-out", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="bf16", help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, help=argparse.SUPPRESS)  # default: the shape's
    ap.add_argument("--prompts", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer-dir", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--instances", type=int, default=1, help=argparse.SUPPRESS)  # Triton model instances
    ap.add_argument("--serving", action="append", default=[], metavar="KEY=VALUE",
                    help="override a serving knob (config.pbtxt parameter) for every phase; repeatable")
    args = ap.parse_args(argv)
    for item in args.serving:
        key, _, value = item.partition("=")
        SERVING[key] = value
    SERVING.update(_shape_knobs(args.shape, args.plan, frozenset(i.partition("=")[0] for i in args.serving)))
    args.vocab = args.vocab or SHAPES[args.shape]["vocab_size"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.phase:
        try:
            result = PHASES[args.phase](args)
        except Exception as exc:  # noqa: BLE001 - the parent records the failure and carries on
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        Path(args.phase_out).write_text(json.dumps(result, indent=1))
        return 0

    env = environment()
    gpu = re.sub(r"[^a-z0-9]+", "-", (env.get("gpu") or "cpu").lower()).strip("-")
    out = Path(args.out or f"bench/results/{datetime.date.today()}-{gpu}")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="llmbench-"))
    previous = json.loads((out / "results.json").read_text()) if args.resume and (out / "results.json").is_file() \
        else None
    results = {"env": env, "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
               "serving": SERVING, "shape": args.shape, "model": _model_stamp(args.shape), "plan": args.plan,
               "quick": args.quick, "phases": {}}
    if previous and previous.get("shape", DEFAULT_SHAPE) != args.shape:
        ap.error(f"--resume: {out} holds the {previous.get('shape', DEFAULT_SHAPE)} shape, not {args.shape}")
    if previous:  # --resume: keep the phases an earlier call measured on this machine kind
        results["phases"] = previous["phases"]
        results["command"] = previous["command"] + " ; " + results["command"]
    q = (["--quick"] if args.quick else []) + [f"--serving={item}" for item in args.serving] + ["--shape", args.shape]
    q += ["--workloads", args.workloads] if args.workloads else []
    q += ["--concurrency", args.concurrency] if args.concurrency else []
    q += ["--waves", str(args.waves)] if args.waves else []
    plan_args = ["--plan", args.plan] if args.plan else []  # for the engine phases (not the Triton twin)
    t_start = time.time()
    with open(out / "log.txt", "a") as log:
        for phase in args.phases.split(","):
            if args.budget and time.time() - t_start > args.budget:
                print(f"skipping {phase}: --budget of {args.budget} s spent", flush=True)
                continue
            before = dict(results["phases"])
            if phase == "floor":
                results["phases"]["floor"] = _run_phase("floor", work / "floor.json", q, log, args.phase_timeout)
            elif phase in ENGINE_MODES:
                mode = ENGINE_MODES[phase]
                results["phases"][phase] = _run_phase("engine", work / f"{phase}.json",
                                                      q + ["--mode", mode] + plan_args, log, args.phase_timeout)
            elif phase in ENGINE_VARIANTS:  # one engine with other knobs, side by side with the plain ones
                mode, knobs = ENGINE_VARIANTS[phase]
                results["phases"][phase] = _run_phase(
                    "engine", work / f"{phase}.json",
                    q + ["--mode", mode, "--plan", args.plan or "variant"] + [f"--serving={k}" for k in knobs],
                    log, args.phase_timeout)
            elif phase in ("hf", "load"):
                results["phases"][phase] = _run_phase(phase, work / f"{phase}.json", q, log, args.phase_timeout)
            elif phase in TRITON_VARIANTS:
                prompts = make_prompt_files(work, args.quick)
                knobs, instances, plan = TRITON_VARIANTS[phase]
                results["phases"][phase] = _run_phase(
                    "triton", work / f"{phase}.json",
                    q + ["--prompts", prompts, "--work", str(work), "--plan", plan, "--instances", str(instances)]
                    + [f"--serving={k}" for k in knobs], log, args.phase_timeout)
            elif phase == "triton":
                prompts = make_prompt_files(work, args.quick)
                tok = ROOT / ".carry" / "tokenizer"
                tok_args = ["--tokenizer-dir", str(tok)] if tok.is_dir() else []
                results["phases"]["triton"] = _run_phase(
                    "triton", work / "triton.json", q + ["--prompts", prompts, "--work", str(work)], log,
                    args.phase_timeout)
                results["phases"]["engine_v49152"] = _run_phase(
                    "engine", work / "engine_v49152.json",
                    q + ["--vocab", "49152", "--prompts", prompts, "--mode", "bf16", *tok_args, "--plan", "triton"],
                    log, args.phase_timeout)
            if args.resume:
                for name, data in results["phases"].items():
                    if name in before and data is not before[name]:
                        results["phases"][name] = _merge_phase(before[name], data)
            (out / "results.json").write_text(json.dumps(results, indent=1))
    from bench.report import write_report

    write_report(results, out)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
