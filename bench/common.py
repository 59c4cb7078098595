"""Shared pieces of the benchmarks: the random Llama-2-7B-shaped checkpoint, GPU timing, environment stamp."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# Llama-2-7B's shape (meta-llama/Llama-2-7b-hf config.json); weights are random, nothing is downloaded.
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 32000,
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16", "initializer_range": 0.02,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def write_random_checkpoint(out: Path, vocab: int = 32000, quant: str | None = None,
                            keep_attention_fp16: bool = False, tokenizer_dir: Path | None = None,
                            seed: int = 0) -> Path:
    """config.json only: llama.load_model makes the weights on the GPU (llmserve_random_init)."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(LLAMA2_7B, vocab_size=vocab, llmserve_random_init={"seed": seed, "std": 0.02})
    if os.environ.get("LLMSERVE_BENCH_TINY") == "1":  # CPU smoke tests of the benchmark plumbing only
        cfg.update(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, head_dim=32)
    if quant:
        cfg["quantization"] = {"mode": quant, "keep_attention_fp16": keep_attention_fp16}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, out / name)
    return out


def graph_time_ms(fn, reps: int = 20, warmup: int = 2) -> float:
    """Median time of one replay of `fn` captured in a CUDA graph (ms)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    ms = replay_median_ms(g, reps)
    del g
    return ms


def replay_median_ms(graph, reps: int) -> float:
    """Median GPU time of replaying a captured CUDA graph, timed with events."""
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def environment() -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "host": platform.node()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                   cuda=torch.version.cuda)
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem,power.limit",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
            env["driver"], env["max_sm_clock"], env["max_mem_clock"], env["power_limit"] = [
                x.strip() for x in q.split(",")]
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return env
