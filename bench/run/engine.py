"""The engine phases: our engine driven directly (closed loop per workload and concurrency), the engine's start
from a sharded checkpoint on disk (`load`), and HF transformers (`hf`)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from statistics import median_high

from bench.common import DEFAULT_SHAPE, shape_config, write_random_checkpoint
from bench.run.plans import (
    REPEATS,
    WORKLOADS,
    admission_knobs,
    median_repeat,
    plan_for,
    progress,
    random_prompts,
    save_partial,
    waves_of,
)


def _engine(knobs: dict, vocab: int, mode: str, work: Path, tokenizer_dir: Path | None = None,
            trace: Path | None = None, shape: str = DEFAULT_SHAPE):
    from llmserve.config import ServingConfig
    from llmserve.engine.observer import step_observer
    from llmserve.engine.torch_engine import TorchEngine

    ckpt = write_random_checkpoint(work / f"ckpt-{mode}-{vocab}", vocab, None if mode == "bf16" else mode,
                                   tokenizer_dir=tokenizer_dir, shape=shape)  # "MODE+head8": an int8 lm_head too
    t0 = time.time()
    eng = TorchEngine(ServingConfig.from_parameters(knobs), ckpt, observer=step_observer(trace and str(trace)))
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


def phase_engine(args) -> dict:
    from bench.workload import drive_engine, request_tokens, summarize

    plan = plan_for(args, "engine" if args.mode == "bf16" else "engine_quant")
    args.knobs.update(admission_knobs(plan, args.knobs))
    work = Path(tempfile.mkdtemp(prefix="llmbench-"))
    tok_dir = Path(args.tokenizer_dir) if args.tokenizer_dir else None
    trace = work / "steps.txt"  # eager steps and full garbage collections (the engine's StepTrace)
    eng, init_s = _engine(args.knobs, args.vocab, args.mode, work, tok_dir, trace, args.shape)
    res = {"mode": args.mode, "shape": args.shape, "vocab": args.vocab, "init_s": round(init_s, 1),
           "serving": dict(args.knobs), "runs": []}
    res["gc_full_ms"] = _freeze_heap_timed()
    prompt_source = json.loads(Path(args.prompts).read_text()) if args.prompts else None
    # warm-up: compiles anything left (prefill shapes) outside the measurements
    drive_engine(eng, random_prompts(2, 64, args.vocab, 99), 8, 2)
    if eng.async_scheduling:
        from bench.workload import async_matches_sync

        lengths = [5 + 3 * i for i in range(16)]
        prompts = [p[:20 + 11 * i] for i, p in enumerate(random_prompts(16, 200, args.vocab, 5))]
        res["async_check"] = async_matches_sync(eng, prompts, lengths)
        print("async check", res["async_check"], flush=True)
    jobs = [(w, c) for w, cs in plan.items() for c in cs]
    for wname, c in progress(jobs, desc=f"engine {args.mode}"):
        in_len, out_len = WORKLOADS[wname]
        reps = []
        for rep in range(REPEATS.get(wname, 1) if prompt_source else 1):
            if prompt_source:
                prompts = prompt_source[wname][str(c)][rep * c:(rep + 1) * c]
            else:
                prompts = random_prompts(c * waves_of(args, c), in_len, args.vocab, seed=c * 7 + in_len)
            seen = trace.stat().st_size if trace.is_file() else 0
            lengths = [request_tokens(i, out_len, args.spread) for i in range(len(prompts))] if args.spread \
                else out_len
            records, wall = drive_engine(eng, prompts, lengths, c, args.sampling)
            s = summarize(records, wall, c, in_len, out_len)
            s["workload"], s["spread"] = wname, args.spread
            s["preemptions"] = eng.stats().preemptions
            s["eager_steps"] = _eager_steps(trace, seen)
            reps.append(s)
        if (wname, c) == ("128x128", 1):  # the graph alone, right after a batch-1 run (context ~256)
            res["graph_step_ms_bs1"] = _graph_step_ms(eng, 1)
        if (wname, c) == ("128x128", 8):
            res["graph_step_ms_bs8"] = _graph_step_ms(eng, 8)
        s = median_repeat(reps)
        res["runs"].append(s)
        print(json.dumps(s), flush=True)
        save_partial(args, res)
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
    res = {"shape": args.shape, **sizes, "write_s": round(time.perf_counter() - t0, 1), "serving": dict(args.knobs)}
    print("checkpoint", res, flush=True)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on (Linux)
    before = _rss_bytes("VmRSS")
    t0 = time.perf_counter()
    eng = TorchEngine(ServingConfig.from_parameters(args.knobs), work / "ckpt")
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
    records, _ = drive_engine(eng, random_prompts(2, 32, args.vocab, 3), 8, 2)  # it serves
    res["served_tokens"] = sum(len(r.token_times) for r in records)
    eng.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res), flush=True)
    return res


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
    plan = plan_for(args, "hf")
    res = {"dtype": "bfloat16", "transformers": __import__("transformers").__version__, "runs": []}
    with torch.inference_mode():
        warm = torch.randint(100, args.vocab - 100, (1, 16), device="cuda")
        model.generate(warm, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
        jobs = [(w, c) for w, cs in plan.items() for c in cs]
        for wname, c in progress(jobs, desc="hf"):
            in_len, out_len = WORKLOADS[wname]
            ids = torch.tensor(random_prompts(c, in_len, args.vocab, seed=c), device="cuda")
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
