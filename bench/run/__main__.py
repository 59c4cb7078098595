"""`python -m bench.run` (the package docstring says what it measures): the parent runs each phase in a process
of its own (`--phase NAME`) and merges their results into results.json, results.md and results.png."""

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

from bench.common import DEFAULT_SHAPE, ROOT, SHAPES, environment, shape_config
from bench.run.engine import phase_engine, phase_hf, phase_load
from bench.run.floor import phase_floor
from bench.run.plans import (
    ENGINE_MODES,
    ENGINE_VARIANTS,
    PLAN,
    SERVING_DEFAULTS,
    TRITON_VARIANTS,
    WORKLOADS,
    shape_knobs,
)
from bench.run.triton import make_prompt_files, phase_triton

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


def sampling_fields(text: str) -> dict:
    """`temperature=0.7,top_k=40` -> {"temperature": 0.7, "top_k": 40}, checked as SamplingParams fields."""
    from llmserve.engine.sampling_params import SamplingParams

    fields = {k: (float(v) if "." in v or "e" in v else int(v))
              for k, _, v in (item.partition("=") for item in text.split(",") if item)}
    SamplingParams(**fields)  # an unknown field fails here, naming it
    return fields


def _parser() -> argparse.ArgumentParser:
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
    ap.add_argument("--spread", type=float, default=0.0,
                    help="engine phases: each request's output length drawn uniformly within +- this fraction of the "
                    "workload's (seeded), so requests finish and are replaced at different steps as in real traffic "
                    "(0: every request the workload's length, as trtllm-bench runs them)")
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
    ap.add_argument("--sampling", type=sampling_fields, default={}, metavar="KEY=VALUE,...",
                    help="the engine phases' requests sample with these SamplingParams fields instead of greedy, e.g. "
                    "temperature=0.7,top_p=0.9,repetition_penalty=1.1 (the sampler's cost at scale)")
    return ap


def _serving_knobs(args: argparse.Namespace) -> dict[str, str]:
    """The serving knobs of this run's engines (a phase may add queue limits for its plan): the defaults, --serving,
    then what the shape needs unless --serving set it."""
    knobs = dict(SERVING_DEFAULTS)
    for item in args.serving:
        key, _, value = item.partition("=")
        knobs[key] = value
    knobs.update(shape_knobs(args.shape, args.plan, frozenset(i.partition("=")[0] for i in args.serving)))
    return knobs


def _child(args: argparse.Namespace) -> int:
    """One phase in this process: its result (or its failure, which the parent records) to --phase-out."""
    try:
        result = PHASES[args.phase](args)
    except Exception as exc:  # noqa: BLE001 - the parent records the failure and carries on
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    Path(args.phase_out).write_text(json.dumps(result, indent=1))
    return 0


def _forwarded(args: argparse.Namespace) -> list[str]:
    """The options every phase process gets from the parent's command line."""
    q = (["--quick"] if args.quick else []) + [f"--serving={item}" for item in args.serving] + ["--shape", args.shape]
    q += ["--workloads", args.workloads] if args.workloads else []
    q += ["--concurrency", args.concurrency] if args.concurrency else []
    q += ["--waves", str(args.waves)] if args.waves else []
    q += ["--spread", str(args.spread)] if args.spread else []
    q += ["--sampling", ",".join(f"{k}={v}" for k, v in args.sampling.items())] if args.sampling else []
    return q


def _measure(phase: str, args: argparse.Namespace, work: Path, log) -> dict[str, dict]:
    """Runs `phase` in processes of its own: {result name: its data} (the triton phase adds its engine-direct twin)."""
    q = _forwarded(args)
    plan_args = ["--plan", args.plan] if args.plan else []  # for the engine phases (not the Triton twin)

    def run(name: str, file: str, extra: list[str]) -> dict:
        return _run_phase(name, work / f"{file}.json", q + extra, log, args.phase_timeout)

    if phase in ("floor", "hf", "load"):
        return {phase: run(phase, phase, [])}
    if phase in ENGINE_MODES:
        return {phase: run("engine", phase, ["--mode", ENGINE_MODES[phase]] + plan_args)}
    if phase in ENGINE_VARIANTS:  # one engine with other knobs, side by side with the plain ones
        mode, knobs = ENGINE_VARIANTS[phase]
        return {phase: run("engine", phase, ["--mode", mode, "--plan", args.plan or "variant"]
                           + [f"--serving={k}" for k in knobs])}
    prompts = make_prompt_files(work, args.quick) if phase in TRITON_VARIANTS or phase == "triton" else None
    if phase in TRITON_VARIANTS:
        knobs, instances, plan = TRITON_VARIANTS[phase]
        return {phase: run("triton", phase, ["--prompts", prompts, "--work", str(work), "--plan", plan,
                                             "--instances", str(instances)] + [f"--serving={k}" for k in knobs])}
    if phase == "triton":
        tok = ROOT / ".carry" / "tokenizer"
        tok_args = ["--tokenizer-dir", str(tok)] if tok.is_dir() else []
        return {"triton": run("triton", "triton", ["--prompts", prompts, "--work", str(work)]),
                "engine_v49152": run("engine", "engine_v49152", ["--vocab", "49152", "--prompts", prompts,
                                                                 "--mode", "bf16", *tok_args, "--plan", "triton"])}
    return {}


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    args.knobs = _serving_knobs(args)
    args.vocab = args.vocab or SHAPES[args.shape]["vocab_size"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.phase:
        return _child(args)

    env = environment()
    gpu = re.sub(r"[^a-z0-9]+", "-", (env.get("gpu") or "cpu").lower()).strip("-")
    out = Path(args.out or f"bench/results/{datetime.date.today()}-{gpu}")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="llmbench-"))
    previous = json.loads((out / "results.json").read_text()) if args.resume and (out / "results.json").is_file() \
        else None
    results = {"env": env, "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
               "serving": args.knobs, "shape": args.shape, "model": _model_stamp(args.shape), "plan": args.plan,
               "quick": args.quick, "sampling": args.sampling, "phases": {}}
    if previous and previous.get("shape", DEFAULT_SHAPE) != args.shape:
        ap.error(f"--resume: {out} holds the {previous.get('shape', DEFAULT_SHAPE)} shape, not {args.shape}")
    if previous:  # --resume: keep the phases an earlier call measured on this machine kind
        results["phases"] = previous["phases"]
        results["command"] = previous["command"] + " ; " + results["command"]
    t_start = time.time()
    with open(out / "log.txt", "a") as log:
        for phase in args.phases.split(","):
            if args.budget and time.time() - t_start > args.budget:
                print(f"skipping {phase}: --budget of {args.budget} s spent", flush=True)
                continue
            for name, data in _measure(phase, args, work, log).items():
                before = results["phases"].get(name)
                results["phases"][name] = _merge_phase(before, data) if args.resume and before else data
            (out / "results.json").write_text(json.dumps(results, indent=1))
    from bench.report import write_report

    write_report(results, out)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
