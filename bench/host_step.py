"""The engine's host time per decode step at N running sequences, on the CPU with a tiny random model: each step's
wall time less the model's forward (on a GPU the forward is the device's work, which async scheduling overlaps with
this host work). Greedy rows with async scheduling on, as the GPU runs them (no CUDA graphs here: a graph's inputs
are filled on the host instead of the eager step's tensors being built). What it counts: scheduling, the step's
inputs, accepting and emitting tokens.

    python -m bench.host_step --rows 256,1024 [--out bench/results/DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "vocab_size": 512, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False, "torch_dtype": "float32",
        "llmserve_random_init": {"seed": 0, "std": 0.02}}


class ForwardClock:
    """Wraps the model's forward and adds up the seconds spent in it."""

    def __init__(self, model: torch.nn.Module):
        self.seconds, self._forward = 0.0, model.forward
        model.forward = self

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._forward(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def _engine(rows: int, ckpt: Path):
    from llmserve.config import ServingConfig
    from llmserve.engine.torch_engine import TorchEngine

    knobs = {"device": "cpu", "dtype": "float32", "max_batch_size": rows, "max_num_tokens": 8192,
             "max_model_len": 512, "kv_cache_memory_bytes": 1 << 30, "max_queue_size": 100_000,
             "max_queued_tokens": 1 << 24, "async_scheduling": "true"}  # the GPU's path: steps launched behind
    return TorchEngine(ServingConfig.from_parameters({k: str(v) for k, v in knobs.items()}), ckpt)


def measure(rows: int, ckpt: Path, steps: int = 20) -> dict:
    """`rows` sequences of 128-token prompts, prefilled, then `steps` decode steps timed."""
    from llmserve.engine.api import EngineRequest
    from llmserve.engine.sampling_params import SamplingParams

    eng = _engine(rows, ckpt)
    g = torch.Generator().manual_seed(0)
    for i in range(rows):
        ids = torch.randint(3, TINY["vocab_size"] - 3, (128,), generator=g).tolist()
        eng.add_request(EngineRequest(f"r{i}", ids, SamplingParams(temperature=0.0, max_tokens=steps + 16,
                                                                   ignore_eos=True)))
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in eng.seqs.values()):
        eng.step()
    for _ in range(3):
        eng.step()
    clock = ForwardClock(eng.runner.model)
    t0 = time.perf_counter()
    for _ in range(steps):
        eng.step()
    wall = (time.perf_counter() - t0) / steps * 1e3
    forward = clock.seconds / steps * 1e3
    eng.shutdown()
    return {"rows": rows, "step_ms": round(wall, 2), "forward_ms": round(forward, 2),
            "host_ms": round(wall - forward, 2), "host_us_per_row": round((wall - forward) / rows * 1e3, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.host_step", description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="256,1024")
    ap.add_argument("--out", help="a folder for results.json")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d)
        (ckpt / "config.json").write_text(json.dumps(TINY))
        points = [measure(int(r), ckpt) for r in a.rows.split(",")]
    for p in points:
        print(f"{p['rows']} rows: step {p['step_ms']} ms, forward {p['forward_ms']} ms, host {p['host_ms']} ms "
              f"({p['host_us_per_row']} us a row)", flush=True)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
               "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "points": points}
        (out / "results.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
