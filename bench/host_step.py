"""The engine's host work per decode step, on a CPU, with the device work stubbed out (issue 18).

A real TorchEngine runs its real scheduler, block manager, `ModelRunner.launch` (the CUDA-graph input path:
pinned host inputs filled per step, one copy into the graphs' static inputs) and `_complete`; only what a GPU
would do is replaced, in this process only: the graph replay is a no-op whose output is a fixed token, the
eager prefill's forward returns fixed logits, and the torch.cuda calls of graph capture and of the step's
event are stand-ins. Every decode step is then chained (async scheduling), as on the H200 at steady state.

Phases of one `step()` in thread CPU time (public methods wrapped from outside; nothing is added to the engine);
`total` is the whole step's CPU time, `wall` its wall time, `gc` the cyclic collector's share of any phase:
  schedule   Scheduler.chain_next (the chain check; plain_decode_next in older trees) + Scheduler.schedule
  prepare    ModelRunner.launch (graph inputs: positions, slots, block tables; the host-to-device copy, here a
             CPU memcpy of S x width int32)
  complete   from Launched.tokens() to the step's end: the engine's completion of the launched step (accept,
             emit, register full blocks)
  rest       the remainder: the launch's bookkeeping (source rows, placeholders) and the step's glue

    .venv/bin/python -m bench.host_step --sizes 256,1024,2048 --compare /tmp/host-base,. \\
        --out bench/results/2026-12-03-cpu-host-step

--tree PATH puts PATH first on sys.path, so the llmserve package measured is the one under PATH (an unmodified
copy of the tree: `git archive HEAD llmserve | tar -x -C /tmp/host-base`). --compare runs one process per tree,
alternating, `--rounds` times each.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

TOKEN = 7  # what every stubbed step returns (not an EOS id: sequences run until their max_tokens)
VOCAB = 32


def _stub_cuda(torch) -> None:
    """Stand-ins for the CUDA calls of `capture_graphs` and `launch` (this process only)."""
    class Graph:
        def replay(self) -> None:
            pass

    class Event:
        def record(self) -> None:
            pass

        def synchronize(self) -> None:
            pass

    torch.cuda.CUDAGraph = Graph
    torch.cuda.graph = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.graph_pool_handle = lambda: None
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.Event = Event
    torch.Tensor.pin_memory = lambda self, *a, **k: self
    torch.cuda.is_available = lambda: False  # what the engine asks before using CUDA itself


class StubModel:
    """What `load_model` returns here: the smallest KV cache shape, the Triton path's flags, and a forward that
    returns fixed logits at once (their argmax: TOKEN) for the sampled rows, or for every row of a decode step."""

    kernels = True  # the runner takes its fast path: decode steps replay the (stand-in) CUDA graphs

    def __init__(self, max_position_embeddings: int):
        self.args = SimpleNamespace(num_layers=1, num_heads=1, num_kv_heads=1, head_dim=1, vocab_size=VOCAB,
                                    max_position_embeddings=max_position_embeddings, sliding_window=None,
                                    sliding_field="sliding_window")
        self.launch = SimpleNamespace(fp8_fast_accum=False)  # the model's launch switches the runner sets

    def init_rope(self, max_len: int, device) -> None:
        pass

    def pdl_launches(self, on: bool):
        return contextlib.nullcontext()

    def __call__(self, ids, positions, kv_cache, meta, rows=None):
        return self.logits(*self.decode_layers(ids, positions, kv_cache, meta), rows=rows)

    def decode_layers(self, ids, positions, kv_cache, meta, carried=None):
        """(hidden state, residual) of one column a row: only the rows' count reaches `logits`."""
        import torch

        return (torch.zeros(ids.shape[0], 1),) * 2

    def logits(self, x, residual, rows=None, upcast=True):
        import torch

        out = torch.zeros(x.shape[0] if rows is None else rows.shape[0], VOCAB)
        out[:, TOKEN] = 1.0
        return out


def _engine(size: int, args):
    import torch

    from llmserve.config import ServingConfig
    from llmserve.engine import model_runner, torch_engine

    _stub_cuda(torch)
    torch.set_num_threads(1)  # the graph-input memcpy on one thread: no intra-op workers spinning on shared cores
    blocks = size * -(-(args.prompt_len + args.max_tokens) // args.block_size) + 64
    block_bytes = 2 * args.block_size * 4  # one layer, one KV head of one float32 (StubModel.args)
    cfg = ServingConfig.of(device="cpu", max_batch_size=size, max_num_tokens=args.max_num_tokens,
                           kv_block_size=args.block_size, async_scheduling="true", prefill_graph_max_tokens=0,
                           pdl="false", max_queue_size=size + 1, max_model_len=args.max_model_len,
                           kv_cache_memory_bytes=(blocks + 1) * block_bytes)
    real = model_runner.load_model
    model_runner.load_model = lambda *a, **k: StubModel(args.max_model_len)
    try:  # a real ModelRunner: graph capture with the stand-ins of _stub_cuda
        return torch_engine.TorchEngine(cfg, Path("unused"))
    finally:
        model_runner.load_model = real


def _requests(size: int, args):
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    # Prompt lengths spread over a block, so about 1/block_size of the sequences take a new block each step.
    return [EngineRequest(f"r{i}", [(i + j) % 1000 + 100 for j in range(args.prompt_len - i % args.block_size)],
                          params, frozenset({2})) for i in range(size)]


class Phases:
    """Thread CPU time of a step's phases (CPU time, not wall time: the 2 cores of the dev VM are shared, and time
    spent waiting for a core is not the engine's cost), from public methods wrapped in this process: the
    scheduler's two calls, the runner's launch, and `Launched.tokens`, the first thing the engine does when it
    completes the launched step (everything after it in the step is completion). Also the cyclic garbage
    collector's time, wherever it struck."""

    def __init__(self, engine) -> None:
        try:
            from llmserve.engine.launcher import Launched
        except ImportError:  # --compare: a tree from before launcher.py
            from llmserve.engine.model_runner import Launched

        self.now: dict[str, float] = {}
        self.gc_start = 0.0
        gc.callbacks.append(self.on_gc)
        check = "chain_next" if hasattr(engine.scheduler, "chain_next") else "plain_decode_next"  # --compare: older
        self.wrap(engine.scheduler, check, "schedule")
        self.wrap(engine.scheduler, "schedule", "schedule")
        self.wrap(engine.runner, "launch", "prepare")
        tokens = Launched.tokens

        def marked(launched):
            self.now.setdefault("tokens_at", time.thread_time())
            return tokens(launched)
        Launched.tokens = marked

    def on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.gc_start = time.thread_time()
        else:
            self.now["gc"] = self.now.get("gc", 0.0) + time.thread_time() - self.gc_start

    def wrap(self, obj, name: str, phase: str) -> None:
        fn = getattr(obj, name)

        def timed(*a, **k):
            t0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                self.now[phase] = self.now.get(phase, 0.0) + time.thread_time() - t0
        setattr(obj, name, timed)

    def step(self, engine) -> tuple[dict[str, float], list]:
        self.now = {}
        t0, w0 = time.thread_time(), time.perf_counter()
        outs = engine.step()
        t1, wall = time.thread_time(), time.perf_counter() - w0
        now = self.now
        row = {"total": t1 - t0, "wall": wall, "schedule": now.get("schedule", 0.0),
               "prepare": now.get("prepare", 0.0), "complete": t1 - now.get("tokens_at", t1), "gc": now.get("gc", 0.0)}
        row["rest"] = row["total"] - row["schedule"] - row["prepare"] - row["complete"]
        return row, outs


PHASES = ("total", "wall", "schedule", "prepare", "complete", "rest", "gc")


def _running(size: int, args):
    """An engine whose `size` sequences are all past their prompts, in chained decode steps."""
    engine = _engine(size, args)
    for r in _requests(size, args):
        engine.add_request(r)
    while engine.stats().running < size:
        engine.step()
    for _ in range(2):  # the first decode step is launched, the next is chained to it
        engine.step()
    return engine


def measure(size: int, args) -> dict:
    engine = _running(size, args)
    ph = Phases(engine)
    rows, tokens = [], 0
    for i in range(args.warmup + args.steps):
        row, outs = ph.step(engine)
        if i >= args.warmup:
            tokens += sum(len(o.new_token_ids) for o in outs)
            rows.append(row)
    gc.callbacks.remove(ph.on_gc)
    assert tokens == size * args.steps, (tokens, size * args.steps)  # every sequence got one token a step
    med = {k: statistics.median(r[k] for r in rows) * 1e3 for k in PHASES}
    mean_gc = statistics.mean(r["gc"] for r in rows) * 1e3  # the collector strikes some steps only
    return {"size": size, "ms_per_step": med, "us_per_seq": {k: v * 1e3 / size for k, v in med.items()},
            "gc_mean_ms": mean_gc, "tokens_per_step": tokens / args.steps}


def profile(size: int, args) -> str:
    """cProfile top-20 (cumulative and own time) of the measured steps at one size."""
    engine = _running(size, args)
    for _ in range(args.warmup):
        engine.step()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        engine.step()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(20)
    return out.getvalue()


def one_tree(args) -> dict:
    sizes = [int(s) for s in args.sizes.split(",")]
    return {"tree": args.tree, "results": [measure(s, args) for s in sizes],
            "profile": profile(args.profile_size, args) if args.profile_size else None}


def compare(args) -> None:
    trees = args.compare.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {t: [] for t in trees}
    load_start = os.getloadavg()
    for rnd in range(args.rounds):
        for t in trees:
            cmd = [sys.executable, "-m", "bench.host_step", "--tree", t, "--sizes", args.sizes,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--json",
                   "--profile-size", str(args.profile_size if rnd == 0 else 0)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            runs[t].append(res)
            if res["profile"]:
                (out / f"profile-{Path(t).resolve().name}-{args.profile_size}.txt").write_text(res["profile"])
            print(t, rnd, [(r["size"], round(r["ms_per_step"]["total"], 2)) for r in res["results"]], flush=True)
    summary = {}
    for t in trees:  # per size and phase: the median over rounds of each round's median over steps
        summary[t] = {}
        for i, size in enumerate(int(s) for s in args.sizes.split(",")):
            phases = runs[t][0]["results"][i]["ms_per_step"]
            ms = {k: statistics.median(r["results"][i]["ms_per_step"][k] for r in runs[t]) for k in phases}
            # The least of the rounds too: other sessions share the 2 cores and only ever add time.
            best = {k: min(r["results"][i]["ms_per_step"][k] for r in runs[t]) for k in phases}
            summary[t][size] = {"ms_per_step": ms, "us_per_seq": {k: v * 1e3 / size for k, v in ms.items()},
                                "best_round_ms_per_step": best}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": cpu, "cpus": os.cpu_count(),
            "python": platform.python_version(), "loadavg_start_end": [load_start, os.getloadavg()],
            "argv": sys.argv, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds}
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary,
                                                  "runs": {t: [{k: v for k, v in r.items() if k != "profile"}
                                                               for r in rs] for t, rs in runs.items()}}, indent=1))
    for t in trees:
        for size, s in summary[t].items():
            print(t, size, {k: round(v, 2) for k, v in s["ms_per_step"].items()},
                  {k: round(v, 2) for k, v in s["us_per_seq"].items()},
                  "best", {k: round(v, 2) for k, v in s["best_round_ms_per_step"].items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,1024,2048")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--max-model-len", type=int, default=4096)  # as the H200 runs served Llama-3.1-8B
    ap.add_argument("--max-num-tokens", type=int, default=4096)
    ap.add_argument("--profile-size", type=int, default=1024)
    ap.add_argument("--tree", default=None, help="import llmserve from this directory")
    ap.add_argument("--compare", default=None, help="trees, comma-separated: one process each, alternating")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench/results/2026-12-03-cpu-host-step")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--gc-off", action="store_true", help="no cyclic garbage collection (to see its share)")
    ap.add_argument("--gc-threshold", type=int, default=0, help="gc.set_threshold(N) (0: Python's default, 700)")
    args = ap.parse_args()
    if args.compare:
        return compare(args)
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))
    if args.gc_off:
        gc.disable()
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold)
    res = one_tree(args)
    if args.json:
        print(json.dumps(res))
        return
    for r in res["results"]:
        print(r["size"], {k: round(v, 2) for k, v in r["ms_per_step"].items()},
              {k: round(v, 2) for k, v in r["us_per_seq"].items()})
    print(res["profile"] or "")


if __name__ == "__main__":
    main()
