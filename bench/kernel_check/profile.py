"""The `profile` section: torch.profiler kernel tables of prefill, mixed and decode steps of the 7B engine."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from bench.common import replay_median_ms, write_random_checkpoint
from bench.kernel_check.report import Report, section


def _prefilling(eng) -> bool:
    """Whether a sequence of the engine still has prompt tokens to compute (the eager ramp of a burst)."""
    return any(s.num_computed_tokens < s.num_prompt_tokens for s in eng.seqs.values())


def _kernel_table(prof) -> dict[str, float]:
    """Device microseconds per kernel name over a torch.profiler run (kernels inside graph replays included)."""
    out: dict[str, float] = {}
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        if us is None:
            us = getattr(e, "self_cuda_time_total", 0.0)
        if us and e.key and not e.key.startswith(("cudaGraph", "cuda", "aten::", "ProfilerStep")):
            out[e.key] = out.get(e.key, 0.0) + us
    return out


def _profiled(fn, reps: int) -> tuple[dict[str, float], float]:
    """Per-kernel device us per call of fn over `reps` calls, and the wall ms per call, its clock started inside the
    profiler (`s_profile` starts one once first: the first profiled step of a run took ~4 s more than its kernels,
    whichever case came first, in s14, s18 and s38's calls)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3 / reps
    return {k: v / reps for k, v in sorted(_kernel_table(prof).items(), key=lambda kv: -kv[1])}, wall


def _record_profile(report: Report, key: str, table: dict[str, float], ms: float) -> None:
    total = sum(table.values())
    report.results.setdefault("profile", {})[key] = {"ms": ms, "kernel_us_total": total, "kernels_us": table}
    top = "; ".join(f"{k[:40]} {v:.0f}" for k, v in list(table.items())[:8])
    report.summary.append(f"profile {key}: {ms:.3f} ms, kernels {total / 1000:.3f} ms: {top}")
    print(report.summary[-1], flush=True)


def _profile_mixed(eng, report: Report, key: str, reps: int = 2) -> None:
    """Steps as the engine runs them (host work included: wall ms a step, no profiler), then as many under the
    profiler for the kernels: the gap between the two is the GPU's idle time in a step."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        eng.step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) * 1e3 / reps
    rows = sum(s.num_computed_tokens >= s.num_prompt_tokens for s in eng.seqs.values())
    table, _ = _profiled(eng.step, reps)
    _record_profile(report, f"{key}({rows}_decoding)", table, wall)


def _profile_batch(eng, report: Report, mode: str, B: int, prompt: int, vocab: int) -> None:
    """The first prefill step of a burst of B prompts, then the decode step ~40 tokens later: its graph replay
    when one takes B rows, else 5 eager steps (host time included in ms)."""
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams

    g = torch.Generator().manual_seed(0)
    for i in range(B):
        ids = torch.randint(3, vocab - 3, (prompt,), generator=g).tolist()
        eng.add_request(EngineRequest(f"{B}-{i}", ids, SamplingParams(temperature=0.0, max_tokens=200,
                                                                      ignore_eos=True)))
    _record_profile(report, f"{mode}:{B}:first_prefill_step", *_profiled(eng.step, 1))
    mid = B * prompt // (2 * eng.cfg.batching.max_num_tokens)
    if mid >= 4:  # a burst long enough to have steps of decode rows plus a prefill chunk: profile two of them
        for _ in range(mid - 4):
            eng.step()
        _profile_mixed(eng, report, f"{mode}:{B}:mixed_step")
    while _prefilling(eng):
        eng.step()
    for _ in range(40):  # ~40 tokens past the prompt
        eng.step()
    if B in eng.runner.decode_graph_sizes:
        graph = eng.runner.graph_for(B)
        table, _ = _profiled(graph.replay, 10)
        _record_profile(report, f"{mode}:{B}:decode_graph", table, replay_median_ms(graph, 20))
    else:
        _record_profile(report, f"{mode}:{B}:decode_eager", *_profiled(eng.step, 5))
    for sid in list(eng.seqs):
        eng.abort(sid)
    while eng.has_work():
        eng.step()


@section("profile")
def s_profile(args):
    """Where a step's GPU time goes, per kernel, on random weights of PROFILE_SHAPE (default llama2-7b): for each
    mode:batch of PROFILE_CASES (mode: the weights, bf16 / fp8 / int8_wo / int4_sym ..., "+kv8" for an fp8 KV cache),
    the first prefill step of a burst of PROFILE_PROMPT-token prompts and a decode step 40 tokens later.
    PROFILE_SERVING adds knobs (k=v,k=v), e.g. max_num_tokens=4096."""
    from bench.common import SHAPES
    from llmserve.config import ServingConfig
    from llmserve.engine.torch_engine import TorchEngine

    shape = os.environ.get("PROFILE_SHAPE", "llama2-7b")
    vocab = SHAPES[shape]["vocab_size"]
    prompt = int(os.environ.get("PROFILE_PROMPT", "128"))
    extra = dict(kv.split("=") for kv in os.environ.get("PROFILE_SERVING", "").split(",") if kv)
    cases = os.environ.get("PROFILE_CASES", "bf16:1,bf16:8,fp8:256,fp8+kv8:256").split(",")
    _profiled(lambda: torch.zeros(1, device="cuda"), 1)  # the profiler's first start, outside every case
    by_mode: dict[str, list[int]] = {}
    for c in cases:
        m, b = c.split(":")
        by_mode.setdefault(m, []).append(int(b))
    for mode, batches in by_mode.items():
        with tempfile.TemporaryDirectory() as d:
            weights = mode.split("+")[0]  # bf16, fp8, int8_wo, int4_sym, ...; "+kv8": an fp8 KV cache
            ckpt = write_random_checkpoint(Path(d), vocab, None if weights == "bf16" else weights, shape=shape)
            # PDL off: with it a kernel's time includes its wait for the one before (overlap, not work)
            knobs = {"dtype": "bfloat16", "max_batch_size": max(256, *batches), "max_num_tokens": 1024, "pdl": "false",
                     "kv_cache_free_mem_fraction": 0.9, "kv_cache_dtype": "fp8" if "kv8" in mode else "auto",
                     "max_model_len": min(4096, SHAPES[shape]["max_position_embeddings"]), "max_queue_size": 4096,
                     "max_queued_tokens": 1 << 22, **extra}
            eng = TorchEngine(ServingConfig.from_parameters(knobs), ckpt)
            for B in batches:
                _profile_batch(eng, args.report, mode, B, prompt, vocab)
                args.report.save()
            eng.shutdown()
            del eng
            torch.cuda.empty_cache()

