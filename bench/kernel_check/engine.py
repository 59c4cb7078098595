"""Sections on the engine as a whole: environment, the GPU kernel tests, small and 7B engine timings, CUDA graphs
at batch 1 and programmatic dependent launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import environment, replay_median_ms, write_random_checkpoint
from bench.kernel_check.report import section


@section("env")
def s_env(args):
    args.report.results["env"] = environment()
    print(args.report.results["env"], flush=True)


@section("tests")
def s_tests(args):
    files = sorted(str(p) for p in Path("tests").glob("test_kernels*.py"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                       capture_output=True, text=True, timeout=300)
    tail = (r.stdout + r.stderr)[-3000:]
    print(tail, flush=True)
    args.report.results["tests"] = {"rc": r.returncode, "tail": tail[-600:]}
    args.report.say(f"test_kernels*.py rc={r.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}")


def _small_engine_tokens(ckpt: Path, mode: str, graphs: bool, sampling: bool = False):
    from llmserve.config import ServingConfig
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams
    from llmserve.engine.torch_engine import TorchEngine

    os.environ["LLMSERVE_TRITON_KERNELS"] = mode
    eng = TorchEngine(ServingConfig.of(dtype="bfloat16", cuda_graphs=graphs, max_batch_size=16, max_num_tokens=64,
                                    kv_cache_memory_bytes=256 << 20), ckpt)
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        ids = torch.randint(3, 1000, (3 + 11 * i,), generator=g).tolist()
        p = SamplingParams(temperature=1.0, top_p=0.9, seed=i, max_tokens=20, ignore_eos=True) if sampling and i % 2 \
            else SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
        eng.add_request(EngineRequest(str(i), ids, p))
    out: dict[str, list[int]] = {}
    while eng.has_work():
        for o in eng.step():
            out.setdefault(o.request_id, []).extend(o.new_token_ids)
    os.environ["LLMSERVE_TRITON_KERNELS"] = "1"
    return out


def _agree(a, b):
    same = sum(x == y for k in a for x, y in zip(a[k], b[k]))
    total = sum(len(v) for v in a.values())
    prefix = sum(next((i for i, (x, y) in enumerate(zip(a[k], b[k])) if x != y), len(a[k])) for k in a)
    return same / max(total, 1), prefix / max(total, 1)


@section("engine_small")
def s_engine_small(args):
    """A small random GQA model (SmolLM2's shape, vocab 1000): graphs vs eager Triton vs the torch path."""
    res = {}
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d)
        cfg = {"vocab_size": 1000, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 6,
               "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 512,
               "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "llmserve_random_init": {"seed": 1, "std": 0.15}}
        for quant in (None, "int8_wo", "fp8"):
            c = dict(cfg)
            if quant:
                c["quantization"] = {"mode": quant}
            (ckpt / "config.json").write_text(json.dumps(c))
            ref = _small_engine_tokens(ckpt, "0", False)
            eager = _small_engine_tokens(ckpt, "1", False)
            graph = _small_engine_tokens(ckpt, "1", True)
            sampled = _small_engine_tokens(ckpt, "1", True, sampling=True)
            sampled2 = _small_engine_tokens(ckpt, "1", True, sampling=True)
            seeded_same = all(sampled[k] == sampled2[k] for k in sampled if int(k) % 2)
            r = {"eager_vs_torch": _agree(eager, ref), "graph_vs_eager": _agree(graph, eager),
                 "graph_vs_torch": _agree(graph, ref), "seeded_sampling_repeats": seeded_same,
                 "lengths_ok": all(len(v) == 20 for v in graph.values())}
            res[quant or "bf16"] = r
            args.report.say(f"small engine {quant or 'bf16'}: token agreement (all, prefix) eager/torch "
                           f"{r['eager_vs_torch'][0]:.2f},{r['eager_vs_torch'][1]:.2f} graph/eager "
                           f"{r['graph_vs_eager'][0]:.2f},{r['graph_vs_eager'][1]:.2f} seeded={seeded_same} "
                           f"len={r['lengths_ok']}")
            print(args.report.summary[-1], flush=True)
    args.report.results["engine_small"] = res


@section("engine7b")
def s_engine7b(args):
    from llmserve.config import ServingConfig
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams
    from llmserve.engine.torch_engine import TorchEngine

    res = args.report.results.setdefault("engine7b", {})
    modes = os.environ.get("BENCH_MODES", "bf16,fp8,int8_wo").split(",")
    tag = os.environ.get("BENCH_TAG", "")
    for quant in [None if m == "bf16" else m for m in modes]:
        with tempfile.TemporaryDirectory() as d:
            ckpt = write_random_checkpoint(Path(d), 32000, quant)
            t0 = time.time()
            cfg = ServingConfig.of(dtype="bfloat16", max_batch_size=256, kv_cache_free_mem_fraction=0.5)
            eng = TorchEngine(cfg, ckpt)
            t_init = time.time() - t0
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(3, 32000, (128,), generator=g).tolist()
            eng.add_request(EngineRequest("a", ids, SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)))
            times = _run_steps(eng)
            dec = sorted(times[1:])
            step_ms = dec[len(dec) // 2] * 1000
            t_graph = replay_median_ms(eng.runner.graph_for(1), 20)
            # batch 8 too
            for i in range(8):
                eng.add_request(EngineRequest(f"b{i}", ids, SamplingParams(temperature=0.0, max_tokens=64,
                                                                             ignore_eos=True)))
            d8 = sorted(_run_steps(eng)[2:])
            res[f"{quant or 'bf16'} {tag}"] = {"init_s": t_init, "bs1_step_ms": step_ms, "bs1_graph_ms": t_graph,
                                               "prefill_ms": times[0] * 1000, "bs8_step_ms": d8[len(d8) // 2] * 1000}
            args.report.say(f"engine 7B {quant or 'bf16'} {tag}: init {t_init:.0f}s, bs1 step {step_ms:.3f} ms "
                           f"(graph replay {t_graph:.3f} ms), bs8 step {d8[len(d8) // 2] * 1000:.3f} ms, "
                           f"prefill128 {times[0] * 1000:.1f} ms")
            print(args.report.summary[-1], flush=True)
            eng.shutdown()
            del eng
            torch.cuda.empty_cache()


@section("graphs_bs1")
def s_graphs_bs1(args):
    """The batch-1 decode graph's replay time with and without the prefill graphs beside it (bench runs found it
    ~1% slower with them): GRAPH_CASES, each prefill_graph_max_tokens, "own" = the prefill graphs in a memory
    pool of their own instead of the decode graphs' pool, "warm" = their eager warm-up runs without the capture.
    One engine at a time, the first case again last."""
    from llmserve.config import ServingConfig
    from llmserve.engine.prefill_graphs import PrefillGraphs
    from llmserve.engine.torch_engine import TorchEngine

    res = args.report.results.setdefault("graphs_bs1", {})
    capture_all = PrefillGraphs.capture_all
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_random_checkpoint(Path(d), 32000, None)
        for i, case in enumerate(os.environ.get("GRAPH_CASES", "0,2048,2048own,256,0").split(",")):
            if case.endswith("own"):
                PrefillGraphs.capture_all = lambda self, pool: capture_all(self, torch.cuda.graph_pool_handle())
            elif case.endswith("warm"):
                PrefillGraphs.capture_all = lambda self, pool: [self._layers(T) for T in self.buckets for _ in "ab"]
            else:
                PrefillGraphs.capture_all = capture_all
            tokens = int("".join(c for c in case if c.isdigit()))
            eng = TorchEngine(ServingConfig.of(dtype="bfloat16", max_batch_size=256, max_num_tokens=1024,
                                            kv_cache_free_mem_fraction=0.9, prefill_graph_max_tokens=tokens), ckpt)
            graph = eng.runner.graph_for(1)
            times = [replay_median_ms(graph, 50) for _ in range(3)]
            res[f"{i}:{case}"] = times
            args.report.say(f"graphs_bs1 {case}: bs1 decode graph replay " + ", ".join(f"{t:.3f}" for t in times)
                           + " ms")
            print(args.report.summary[-1], flush=True)
            eng.shutdown()
            del eng, graph
            torch.cuda.empty_cache()
    PrefillGraphs.capture_all = capture_all


@section("pdl")
def s_pdl(args):
    """Programmatic dependent launch per kernel module in the decode graphs: which kernels gain. (The attention
    module had a PDL switch for the run in bench/results/2026-11-25-h100-pdl; it lost, and was taken out.)
    BENCH_PDL_MASKS: the modules launched with PDL per run (linear, gemv, fused, int4, int4_pairs joined by +, or
    none; `linear` is the 2-16-row kernels, `gemv` the one-row GEMV of 16- and 8-bit weights);
    BENCH_PDL_SHAPE and BENCH_PDL_WEIGHTS (bf16, int4_sym, ...): the model (default Llama-2-7B's shape, bf16)."""
    from llmserve import kernels
    from llmserve.config import ServingConfig
    from llmserve.engine.torch_engine import TorchEngine
    from llmserve.kernels import fused, gemv, int4, int4_pairs, linear

    res = args.report.results.setdefault("pdl", {})
    # Each module's launches forced on or off, whatever the model asks (every graph the runner captures)
    on, off = (lambda pdl: kernels.launch_args(True)), (lambda pdl: kernels.launch_args(False))
    modules = {"linear": linear, "gemv": gemv, "fused": fused, "int4": int4, "int4_pairs": int4_pairs}
    masks = [tuple(m.split("+")) if m != "none" else () for m in
             os.environ.get("BENCH_PDL_MASKS", "none,linear+fused,fused,linear").split(",")]
    sizes = [int(x) for x in os.environ.get("BENCH_PDL_SIZES", "1,8").split(",")]
    weights = os.environ.get("BENCH_PDL_WEIGHTS", "bf16")
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_random_checkpoint(Path(d), None if "BENCH_PDL_SHAPE" in os.environ else 32000,
                                       None if weights == "bf16" else weights,
                                       shape=os.environ.get("BENCH_PDL_SHAPE", "llama2-7b"))
        eng = TorchEngine(ServingConfig.of(dtype="bfloat16", max_batch_size=max(sizes), kv_cache_free_mem_fraction=0.5,
                                        pdl="false", max_model_len=4096), ckpt)
        runner = eng.runner
        for mask in masks:
            for name, mod in modules.items():
                mod.launch_args = on if name in mask else off
            runner.capture_graphs()  # drops the earlier ones first
            row = {}
            for S in sizes:
                row[f"bs{S}_ms"] = replay_median_ms(runner.graph_for(S), 30)
            key = "+".join(mask) or "none"
            res[key] = row
            args.report.say(f"pdl on {key}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
            print(args.report.summary[-1], flush=True)
        for mod in modules.values():
            mod.launch_args = kernels.launch_args
        eng.shutdown()


def _run_steps(eng) -> list[float]:
    """The engine's steps until it is idle: wall seconds each."""
    times = []
    while eng.has_work():
        t = time.perf_counter()
        eng.step()
        times.append(time.perf_counter() - t)
    return times
