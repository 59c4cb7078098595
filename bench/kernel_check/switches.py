"""Decode steps of one engine with `llmserve.kernels.linear`'s switches set case by case (`--sections switches`):
SKINNY_MAX_M (which kernel takes a step's rows), GATE_OUT (silu(gate) * up in gate_up's epilogue); another kernels
module's as "module:NAME" (int4:MMA_ROWS). The graphs are
captured again for each case, so each case is measured as it would serve; the first case again last shows drift."""

from __future__ import annotations

import os

from bench.kernel_check.report import section


def parse_cases(text: str) -> list[dict[str, int]]:
    """"GATE_OUT=1;GATE_OUT=0,SKINNY_MAX_M.fp8=1" -> [{"GATE_OUT": 1}, {"GATE_OUT": 0, "SKINNY_MAX_M.fp8": 1}]."""
    cases = []
    for case in text.split(";"):
        pairs = (item.split("=") for item in case.split(",") if item)
        cases.append({name.strip(): int(value) for name, value in pairs})
    return cases


def apply_case(case: dict[str, int]) -> dict[str, int]:
    """Sets the switches (`linear`'s, or another kernels module's as "int4:MMA_ROWS"); returns what they were
    (apply_case(returned) undoes it)."""
    import importlib

    before = {}
    for name, value in case.items():
        module, _, switch = name.rpartition(":")
        mod = importlib.import_module(f"llmserve.kernels.{module or 'linear'}")
        attr, _, key = switch.partition(".")
        if key:
            table = getattr(mod, attr)
            before[name], table[key] = table[key], value
        else:
            before[name] = int(getattr(mod, attr))
            setattr(mod, attr, type(getattr(mod, attr))(value))
    return before


@section("switches")
def s_switches(args):
    """One engine (SWITCH_MODE fp8/bf16/..., default fp8; SWITCH_SHAPE, default llama3.1-8b), for each case of
    SWITCH_CASES (default "SKINNY_MAX_M.fp8=32;SKINNY_MAX_M.fp8=1;SKINNY_MAX_M.fp8=32") the median decode step of
    each batch of SWITCH_BATCHES (default 2,4,8,16,32)."""
    import tempfile
    from pathlib import Path

    from bench.common import SHAPES, write_random_checkpoint
    from llmserve.config import ServingConfig
    from llmserve.engine.torch_engine import TorchEngine

    mode = os.environ.get("SWITCH_MODE", "fp8")
    shape = os.environ.get("SWITCH_SHAPE", "llama3.1-8b")
    cases = parse_cases(os.environ.get("SWITCH_CASES", "SKINNY_MAX_M.fp8=32;SKINNY_MAX_M.fp8=1;SKINNY_MAX_M.fp8=32"))
    batches = [int(b) for b in os.environ.get("SWITCH_BATCHES", "2,4,8,16,32").split(",")]
    res = args.report.results.setdefault("switches", {}).setdefault(f"{shape}/{mode}", {})
    vocab = SHAPES[shape]["vocab_size"]
    with tempfile.TemporaryDirectory() as d:
        ckpt = write_random_checkpoint(Path(d), vocab, None if mode == "bf16" else mode, shape=shape)
        eng = TorchEngine(ServingConfig.of(dtype="bfloat16", max_batch_size=max(batches), max_num_tokens=4096,
                                        prefill_graph_max_tokens=0, kv_cache_free_mem_fraction=0.5), ckpt)
        for i, case in enumerate(cases):
            before = apply_case(case)
            eng.runner.capture_graphs()  # the layers' launches under this case
            row = {f"bs{b}_step_ms": decode_steps_ms(eng, b, vocab) for b in batches}
            apply_case(before)
            label = ",".join(f"{k}={v}" for k, v in case.items())
            res[f"{i}:{label}"] = row
            args.report.say(f"switches {shape}/{mode} {label}: " + ", ".join(f"{k} {x:.3f}" for k, x in row.items()))
            print(args.report.summary[-1], flush=True)
            args.report.save()
        eng.shutdown()


def decode_steps_ms(eng, rows: int, vocab: int) -> float:
    """Median wall ms of the decode steps of `rows` requests (128-token prompts, 64 new tokens each)."""
    import torch

    from bench.kernel_check.engine import _run_steps
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams

    g = torch.Generator().manual_seed(rows)
    for i in range(rows):
        ids = torch.randint(3, vocab - 3, (128,), generator=g).tolist()
        eng.add_request(EngineRequest(f"r{rows}-{i}", ids, SamplingParams(temperature=0.0, max_tokens=64,
                                                                          ignore_eos=True)))
    dec = sorted(_run_steps(eng)[2:])
    return dec[len(dec) // 2] * 1000
