"""What the engine checks, decides and measures while it starts: host memory for a CPU KV cache, the served
context (max_model_len) and the seconds spent in each phase (checkpoint load, KV cache allocation, kernel
warm-up, CUDA graph capture)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from llmserve.config import ServingConfig
from llmserve.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")
PHASES = ("load", "kv_allocation", "warmup", "graph_capture")


class StartupTimes:
    """Seconds per start phase (`seconds`, in PHASES order as they ran). A CUDA device is synchronized at the end
    of each phase, so its queued work (the KV cache's zeroing, say) counts where it was issued."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    def timed(self, phase: str, fn: Callable[..., T], *args, **kwargs) -> T:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0
        return out


def served_context(knob: int, max_position_embeddings: int, kv_cache_tokens: int) -> int:
    """max_model_len: the knob if set (refused above either limit), else the smaller of the model's
    max_position_embeddings and the tokens the KV cache holds for one sequence (the winner is logged)."""
    limits = (f"the model's max_position_embeddings is {max_position_embeddings} and the KV cache holds "
              f"{kv_cache_tokens} tokens for one sequence")
    if knob:
        if knob > min(max_position_embeddings, kv_cache_tokens):
            raise ConfigError(f"max_model_len: {knob} tokens is more than this engine can serve: {limits}; lower "
                              "max_model_len (0: the smaller of the two), or give the KV cache more memory "
                              "(kv_cache_memory_bytes, kv_cache_free_mem_fraction)")
        return knob
    if max_position_embeddings <= kv_cache_tokens:
        log.info("max_model_len %d: the model's max_position_embeddings (%s)", max_position_embeddings, limits)
        return max_position_embeddings
    log.warning("max_model_len %d: what the KV cache holds for one sequence, below the model's context (%s); "
                "raise kv_cache_memory_bytes or kv_cache_free_mem_fraction to serve longer ones",
                kv_cache_tokens, limits)
    return kv_cache_tokens


def check_host_memory(cfg: ServingConfig) -> None:
    """A CPU KV cache larger than free RAM would be OOM-killed mid-serving; refuse it at start instead."""
    if cfg.device not in ("cpu", "auto") or torch.cuda.is_available() or not cfg.cache.kv_cache_memory_bytes:
        return
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return
    if cfg.cache.kv_cache_memory_bytes > avail:
        raise ConfigError(f"kv_cache_memory_bytes: {cfg.cache.kv_cache_memory_bytes} bytes do not fit the {avail} "
                          "bytes of memory available; lower kv_cache_memory_bytes in config.pbtxt")
