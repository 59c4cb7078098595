"""Sections on host time: eager step launches, steady closed-loop decode, and the Triton path."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from bench.common import replay_median_ms, write_random_checkpoint
from bench.kernel_check.profile import _kernel_table, _prefilling
from bench.kernel_check.report import section


@section("host")
def s_host(args):
    """Where the steps of 256 concurrent 128-token requests spend their time: the kernel time of the first
    prefill steps (torch.profiler) against their wall time, then cProfile of engine.step over the ramp's
    prefill/mixed steps and the graph decode steps after it, next to the decode graph's GPU time. HOST_MODE:
    bf16 (default) or fp8 weights."""
    import cProfile
    import io
    import pstats

    from llmserve.config import ServingConfig
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams
    from llmserve.engine.torch_engine import TorchEngine

    mode = os.environ.get("HOST_MODE", "bf16")
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_random_checkpoint(Path(d), 32000, None if mode == "bf16" else mode)
        eng = TorchEngine(ServingConfig.of(dtype="bfloat16", max_batch_size=256, max_num_tokens=1024,
                                        kv_cache_free_mem_fraction=0.9), ckpt)
        g = torch.Generator().manual_seed(0)
        warm = [torch.randint(3, 32000, (128,), generator=g).tolist() for _ in range(16)]
        for i, ids in enumerate(warm):  # compiles what the ramp meets, outside the profile
            eng.add_request(EngineRequest(f"w{i}", ids, SamplingParams(temperature=0.0, max_tokens=4,
                                                                         ignore_eos=True)))
        while eng.has_work():
            eng.step()
        for i in range(256):
            ids = torch.randint(3, 32000, (128,), generator=g).tolist()
            eng.add_request(EngineRequest(str(i), ids, SamplingParams(temperature=0.0, max_tokens=100,
                                                                        ignore_eos=True)))
        out = args.report.results.setdefault("host", {})
        # GPU time of the first eager steps (kernel time summed by torch.profiler), against their wall time
        from torch.profiler import ProfilerActivity, profile

        walls = []
        with profile(activities=[ProfilerActivity.CUDA]) as tprof:
            for _ in range(4):
                t = time.perf_counter()
                eng.step()
                walls.append((time.perf_counter() - t) * 1000)
        gpu_ms = sum(_kernel_table(tprof).values()) / 1000 / len(walls)
        out[f"{mode}/eager_gpu"] = {"steps": len(walls), "kernel_ms_per_step": gpu_ms, "wall_ms": walls}
        args.report.say(f"host {mode} eager: kernel time {gpu_ms:.2f} ms per step, walls "
                       + ", ".join(f"{w:.1f}" for w in walls) + " ms (under torch.profiler)")
        for phase in ("eager", "decode"):
            prof = cProfile.Profile()
            walls = []
            while len(walls) < 40 and eng.has_work():
                ramp = _prefilling(eng)
                if ramp != (phase == "eager"):
                    if phase == "eager":
                        break
                    eng.step()
                    continue
                t = time.perf_counter()
                prof.enable()
                eng.step()
                prof.disable()
                walls.append((time.perf_counter() - t) * 1000)
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
            text = buf.getvalue()
            print(text[-6000:], flush=True)
            walls.sort()
            out[f"{mode}/{phase}"] = {"steps": len(walls), "step_wall_ms_median": walls[len(walls) // 2],
                                      "step_wall_ms_total": sum(walls), "profile": text[-8000:]}
            args.report.say(f"host {mode} {phase}: {len(walls)} steps, wall median {walls[len(walls) // 2]:.2f} ms, "
                           f"total {sum(walls):.0f} ms (under cProfile)")
        if 256 in eng.runner.decode_graph_sizes:
            out[f"{mode}/graph_ms"] = replay_median_ms(eng.runner.graph_for(256), 10)
            args.report.say(f"host {mode}: batch-256 decode graph replay {out[f'{mode}/graph_ms']:.2f} ms")
        eng.shutdown()


class _ClosedLoop:
    """`streams` requests of PROMPT/OUT tokens kept in flight on an engine: one replaces each that finishes."""

    def __init__(self, eng, streams: int, prompt: int, out: int, vocab: int):
        self.eng, self.prompt, self.out, self.vocab = eng, prompt, out, vocab
        self.g = torch.Generator().manual_seed(0)
        self.n = 0
        for _ in range(streams):
            self.submit()

    def submit(self) -> None:
        from llmserve.engine.api import EngineRequest
        from llmserve.engine.sampling_params import SamplingParams

        ids = torch.randint(3, self.vocab - 3, (self.prompt,), generator=self.g).tolist()
        self.eng.add_request(EngineRequest(f"s{self.n}", ids, SamplingParams(
            temperature=0.0, max_tokens=self.out, ignore_eos=True)))
        self.n += 1

    def step(self) -> int:
        """One engine step; returns the tokens it produced."""
        outs = self.eng.step()
        for o in outs:
            if o.finish_reason is not None:
                self.submit()
        return sum(len(o.new_token_ids) for o in outs)


def _busy(loop: _ClosedLoop, steps: int) -> dict:
    """GPU kernel time against wall time over `steps` steady steps (torch.profiler, CUDA activity only)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0, tokens = time.perf_counter(), 0
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            tokens += loop.step()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) * 1e3
    table = _kernel_table(prof)
    top = dict(sorted(table.items(), key=lambda kv: -kv[1])[:12])
    return {"steps": steps, "wall_ms": wall, "kernel_ms": sum(table.values()) / 1e3, "tokens": tokens,
            "top_kernels_us": top}


@section("steady")
def s_steady(args):
    """A closed loop of STEADY_STREAMS streams of STEADY_LEN (in/out, e.g. 128/128) tokens on random weights of
    STEADY_SHAPE (STEADY_MODE fp8|bf16, STEADY_SERVING k=v,...): after a warm-up of two answer lengths, the GPU's
    kernel time against the wall over 60 steps, then cProfile of the host over 60 more."""
    import cProfile
    import io
    import pstats

    from bench.common import SHAPES
    from llmserve.config import ServingConfig
    from llmserve.engine.torch_engine import TorchEngine

    shape = os.environ.get("STEADY_SHAPE", "llama3.1-8b")
    mode = os.environ.get("STEADY_MODE", "fp8")
    streams = int(os.environ.get("STEADY_STREAMS", "1024"))
    prompt, out = (int(x) for x in os.environ.get("STEADY_LEN", "128/128").split("/"))
    vocab = SHAPES[shape]["vocab_size"]
    extra = dict(kv.split("=") for kv in os.environ.get("STEADY_SERVING", "").split(",") if kv)
    knobs = {"dtype": "bfloat16", "max_batch_size": streams, "max_num_tokens": 4096, "kv_cache_free_mem_fraction": 0.9,
             "max_model_len": 4096, "max_queue_size": 1 << 16, "max_queued_tokens": 1 << 26, **extra}
    key = f"{shape}/{mode}/{streams}/{prompt}x{out}/" + ",".join(f"{k}={v}" for k, v in extra.items())
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_random_checkpoint(Path(d), vocab, None if mode == "bf16" else mode, shape=shape)
        eng = TorchEngine(ServingConfig.from_parameters(knobs), ckpt)
        loop = _ClosedLoop(eng, streams, prompt, out, vocab)
        t0, tokens = time.perf_counter(), 0
        while loop.n < 3 * streams:  # two answer lengths: past the first burst's ramp
            tokens += loop.step()
        r = {"warmup_tok_s": tokens / (time.perf_counter() - t0), "busy": _busy(loop, 60)}
        prof, t0, tokens = cProfile.Profile(), time.perf_counter(), 0
        prof.enable()
        for _ in range(60):
            tokens += loop.step()
        prof.disable()
        r["cprofile_tok_s"] = tokens / (time.perf_counter() - t0)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        r["cprofile"] = buf.getvalue()[-7000:]
        eng.shutdown()
    args.report.results.setdefault("steady", {})[key] = r
    b = r["busy"]
    args.report.say(f"steady {key}: warm-up {r['warmup_tok_s']:,.0f} tok/s; 60 steps wall {b['wall_ms']:.0f} ms, "
                   f"kernels {b['kernel_ms']:.0f} ms ({b['kernel_ms'] / b['wall_ms']:.0%}), {b['tokens']} tokens")
    print(args.report.summary[-1], "\n", r["cprofile"][-3500:], flush=True)


@section("triton")
def s_triton(args):
    """Starts the real tritonserver on the random 7B (quick), prints what fails, keeps the server log."""
    from bench.run.plans import SERVING_DEFAULTS
    from bench.triton_path import Server, drive_triton, exact_length_prompts, model_repository, python_overlay

    work = Path(tempfile.mkdtemp(prefix="tri-"))
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in SERVING_DEFAULTS.items()}
    repo = model_repository(work, params)
    server = Server(work, repo)
    try:
        server.start(timeout=300)
        texts, _ = exact_length_prompts(Path(".carry/tokenizer"), 8, 128, 1)
        recs, wall = drive_triton(server.port, texts, 32, 8)
        args.report.say(f"triton: served 8 x 32 tokens in {wall:.2f} s, tokens {[len(r.token_times) for r in recs]}, "
                       f"errors {[r.error for r in recs if r.error][:2]}")
    except Exception as exc:  # noqa: BLE001
        log = server.tail(200000)
        bad = [ln for ln in log.splitlines() if any(m in ln for m in ("E11", "rror", "Traceback", "File \"",
                                                                       "UNAVAILABLE"))]
        print("\n".join(bad[-60:]), flush=True)
        py = python_overlay(work) / "python3"
        chk = subprocess.run([str(py), "-c", "import numpy, torch, transformers, llmserve.serving.factory; "
                              "from transformers import AutoTokenizer; "
                              "print(numpy.__version__, torch.__version__, torch.cuda.is_available())"],
                             capture_output=True, text=True)
        print("overlay python:", chk.stdout[-1500:], chk.stderr[-3000:], flush=True)
        args.report.say(f"triton FAILED: {str(exc)[:200]}")
        raise
    finally:
        server.stop()
        shutil.copy2(server.log, args.out / "tritonserver.log")

