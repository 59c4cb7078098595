"""Shared pieces of the benchmarks: the model shapes and their random checkpoint, GPU timing, environment stamp."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# The models' config.json values (weights are random, nothing is downloaded). Llama-2-7B: meta-llama/Llama-2-7b-hf.
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 128,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 32000,
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16", "initializer_range": 0.02,
}
# meta-llama/Llama-3.1-8B (the instruct model's eos_token_id is [128001, 128008, 128009]; generation ignores EOS)
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
    "vocab_size": 128256, "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16",
    "initializer_range": 0.02,
}
# Qwen/Qwen2.5-7B (model_type qwen2: biases on q/k/v, none on o_proj)
QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "head_dim": 128,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "vocab_size": 152064,
    "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": 131072, "max_window_layers": 28,
    "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643, "torch_dtype": "bfloat16",
    "initializer_range": 0.02,
}
# mistralai/Mistral-7B-v0.3
MISTRAL_7B_V03 = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
    "sliding_window": None, "vocab_size": 32768, "tie_word_embeddings": False, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16", "initializer_range": 0.02,
}
# `python -m bench.run --shape NAME`; Llama-3.1-8B is the shape of the runs of record from issue 18 on, Llama-2-7B
# the one of the earlier runs (kept for history, and still the default).
SHAPES = {"llama3.1-8b": LLAMA31_8B, "qwen2.5-7b": QWEN25_7B, "mistral-7b-v0.3": MISTRAL_7B_V03,
          "llama2-7b": LLAMA2_7B}
DEFAULT_SHAPE = "llama2-7b"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def shape_config(shape: str = DEFAULT_SHAPE) -> dict:
    """The shape's config.json values, shrunk by LLMSERVE_BENCH_TINY=1 (CPU smoke tests of the plumbing)."""
    cfg = json.loads(json.dumps(SHAPES[shape]))  # a deep copy
    if os.environ.get("LLMSERVE_BENCH_TINY") == "1":
        cfg.update(tiny_dimensions(cfg))
    return cfg


def tiny_dimensions(cfg: dict) -> dict:
    """Small sizes that keep what picks code paths: the query heads per KV head (a shape without grouping gets 4 / 4,
    as before shapes, a grouped one 2 KV heads) and head_dim 32, hidden = heads x head_dim as in all four shapes.
    Vocabulary, rope, biases (model_type) and tied or untied embeddings stay the shape's own."""
    group = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    kv = 4 if group == 1 else 2
    hidden = kv * group * 32
    return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2,
            "num_attention_heads": kv * group, "num_key_value_heads": kv, "head_dim": 32}


def linear_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear weight of one layer as our model stores it (q/k/v and gate/up fused)."""
    hid, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    return {"qkv": (q + 2 * kv, hid), "o": (hid, q), "gate_up": (2 * inter, hid), "down": (hid, inter)}


def write_random_checkpoint(out: Path, vocab: int | None = None, quant: str | None = None,
                            keep_attention_fp16: bool = False, tokenizer_dir: Path | None = None,
                            seed: int = 0, shape: str = DEFAULT_SHAPE) -> Path:
    """config.json only: llama.load_model makes the weights on the GPU (llmserve_random_init). `quant`: a mode, with
    "+head8" the lm_head in int8 too. `vocab` other than the
    shape's (the Triton phase's tokenizer) keeps every other dimension; token ids it cannot hold become 1 / 2."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = shape_config(shape)
    if vocab is not None and vocab != cfg["vocab_size"]:
        cfg["vocab_size"] = vocab
        for key, fallback in (("bos_token_id", 1), ("eos_token_id", 2)):
            if cfg.get(key) is not None and cfg[key] >= vocab:
                cfg[key] = fallback
    cfg["llmserve_random_init"] = {"seed": seed, "std": 0.02}
    if quant:
        mode, _, head = quant.partition("+")  # "int4_sym+head8": the lm_head in int8 weight-only too
        cfg["quantization"] = {"mode": mode, "keep_attention_fp16": keep_attention_fp16}
        if head:
            cfg["quantization"]["lm_head"] = {"head8": "int8_wo"}[head]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, out / name)
    return out


def hf_tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """The checkpoint tensors of a shape as transformers names and saves them (q/k/v and gate/up separate)."""
    hid, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg["vocab_size"], hid)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (hid,), p + "self_attn.q_proj.weight": (q, hid),
                    p + "self_attn.k_proj.weight": (kv, hid), p + "self_attn.v_proj.weight": (kv, hid)})
        if cfg.get("model_type") == "qwen2":
            out.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                        p + "self_attn.v_proj.bias": (kv,)})
        out.update({p + "self_attn.o_proj.weight": (hid, q), p + "post_attention_layernorm.weight": (hid,),
                    p + "mlp.gate_proj.weight": (inter, hid), p + "mlp.up_proj.weight": (inter, hid),
                    p + "mlp.down_proj.weight": (hid, inter)})
    out["model.norm.weight"] = (hid,)
    if not cfg.get("tie_word_embeddings"):
        out["lm_head.weight"] = (cfg["vocab_size"], hid)
    return out


def write_sharded_checkpoint(out: Path, shape: str = DEFAULT_SHAPE, shards: int = 4, seed: int = 0) -> dict:
    """A real checkpoint on disk: the shape's config.json and bf16 N(0, 0.02) weights (norms 1) in `shards`
    safetensors files with transformers' names, file names and index (Llama-3.1-8B: 16 GB in four files of up to
    5 GB, as published). Made on the GPU when there is one; the host holds one shard at a time. Each file is
    flushed and dropped from the page cache, so a load that follows reads the disk. Returns its sizes."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    cfg = shape_config(shape)
    cfg["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    shapes = hf_tensor_shapes(cfg)
    nbytes = {k: 2 * math.prod(s) for k, s in shapes.items()}
    per_shard = -(-sum(nbytes.values()) // shards)
    groups: list[list[str]] = [[]]
    for k in shapes:  # transformers' sharding: in order, a new file once the current one would pass the size
        if groups[-1] and sum(nbytes[x] for x in groups[-1]) + nbytes[k] > per_shard:
            groups.append([])
        groups[-1].append(k)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(seed)
    weight_map = {}
    for i, keys in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: (torch.ones(shapes[k], dtype=torch.bfloat16) if "norm" in k else
                       (0.02 * torch.randn(shapes[k], generator=gen, device=device)).to(torch.bfloat16).cpu())
                   for k in keys}
        save_file(tensors, out / name, metadata={"format": "pt"})
        del tensors
        _drop_from_page_cache(out / name)
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(nbytes.values())
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    sizes = [(out / f).stat().st_size for f in sorted(set(weight_map.values()))]
    return {"total_bytes": total, "shards": len(sizes), "largest_shard_bytes": max(sizes)}


def _drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


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


# The chunked read floor: torch.sum over one flat buffer per storage type in chunks of this many bytes, all in one
# CUDA graph (about 3.5-4.0 TB/s on an H200; a sum per weight tensor reads slower and flatters a ratio against it).
CHUNK_BYTES = 256 * 2**20


def flat_buffers(tensors: list[torch.Tensor], align: int = 256) -> list[torch.Tensor]:
    """Copies of `tensors` packed into one flat uint8 buffer per dtype (each tensor at a multiple of `align` bytes,
    the buffer padded with zeros to a multiple of 4 bytes, so it can be summed as float32)."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    flats = []
    for group in groups.values():
        offsets, end = [], 0
        for t in group:
            offsets.append(end)
            end = -(-(end + t.numel() * t.element_size()) // align) * align
        flat = torch.zeros(end, dtype=torch.uint8, device=group[0].device)
        for t, off in zip(group, offsets):
            flat[off:off + t.numel() * t.element_size()].view(t.dtype).copy_(t.reshape(-1))
        flats.append(flat)
    return flats


def chunked_sum_ms(flats: list[torch.Tensor], chunk_bytes: int = CHUNK_BYTES) -> float:
    """GPU time (ms) of reading every byte of `flats` once: torch.sum over float32 views of `chunk_bytes` each,
    captured in one CUDA graph."""
    chunks = [c for f in flats for c in f.view(torch.float32).split(chunk_bytes // 4)]
    return graph_time_ms(lambda: [c.sum() for c in chunks])
