"""Serving configuration: the knobs that live in config.pbtxt `parameters`, as one dataclass.

Every field can be set from config.pbtxt as `parameters { key: "<field>" value: { string_value: "..." } }`.
Unset or `${...}` placeholders (NVIDIA's fill_template convention) keep the default.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# Knobs that take "auto" | "true" | "false"; `switch` resolves them.
SWITCHES = ("async_scheduling", "pdl", "engine_process")


def switch(value: str, auto: Callable[[], bool]) -> bool:
    """An auto|true|false knob as a bool; `auto` is called only for "auto" (it may need a device)."""
    value = value.lower()
    return auto() if value == "auto" else value == "true"


class ConfigError(ValueError):
    pass


@dataclass
class ServingConfig:
    engine: str = "pytorch"  # "pytorch" | "tensorrtllm" | "synthetic" (no model: measures the serving layers)
    checkpoint_dir: str = "checkpoint"  # relative to the model directory, confined to it
    engine_dir: str = "engine"  # TensorRT-LLM engine directory, relative to the model directory
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto" | "float32" | "float16" | "bfloat16"
    kv_cache_memory_bytes: int = 0  # 0: derive from kv_cache_free_mem_fraction (GPU) or 256 MiB (CPU)
    kv_cache_free_mem_fraction: float = 0.9
    kv_block_size: int = 16
    enable_prefix_caching: bool = True
    max_batch_size: int = 64  # sequences per step
    max_num_tokens: int = 2048  # tokens per step (chunked-prefill budget)
    max_queue_delay_us: int = 0  # wait this long after the first arrival to batch prefills
    queue_delay_gap_us: int = 0  # ... but only until no request arrived for this long (0: the whole delay)
    max_queue_size: int = 1024  # waiting requests beyond which new ones get UNAVAILABLE
    max_queued_tokens: int = 1_000_000  # prompt tokens waiting, likewise
    max_model_len: int = 0  # 0: the model's max_position_embeddings
    max_input_bytes: int = 1_000_000  # size limit on text_input / messages
    cuda_graphs: bool = True
    # Prefill and mixed steps of up to this many tokens replay a CUDA graph per padded token count (up to
    # max_num_tokens; with cuda_graphs only); 0: they run eagerly
    prefill_graph_max_tokens: int = 2048
    synthetic_step_ms: float = 15.0  # engine "synthetic": the stand-in for one GPU step
    # KV cache storage: "auto" (the model's dtype) or "fp8" (e4m3, unscaled: half the bytes to read per decode
    # step and twice the tokens in the same memory, at some accuracy cost)
    kv_cache_dtype: str = "auto"
    # Queue greedy decode step N+1 on the GPU before reading step N's tokens, so host work overlaps the GPU:
    # "auto" (on for CUDA), "true", "false".
    async_scheduling: str = "auto"
    # Programmatic dependent launch of our linear and fused kernels in the decode graphs of up to 16 rows (each
    # kernel's launch overlaps the previous one's tail): "auto" (on for compute capability 9.0+), "true", "false".
    pdl: str = "auto"
    # Run the engine in a child process (its own GIL: in Triton's Python backend the stub's GIL is shared with
    # Triton's execute calls and the response sends): "auto" (on for the pytorch engine on CUDA), "true", "false".
    engine_process: str = "auto"
    # Python's thread switch interval (sys.setswitchinterval) in the stub and the engine process: how long a
    # thread that waits for the GIL may wait while another runs Python (a new request's intake behind the
    # response sends, the engine's reader behind a step's launches); 0 keeps Python's 5000
    gil_switch_interval_us: int = 0
    cancellation_check_period_ms: int = 20
    exclude_input_in_output: bool = True  # when the request does not say (vllm_backend echoes the prompt)
    log_prompts: bool = False  # prompt text stays out of logs unless asked for
    enable_kv_cache_reuse: bool = True  # TensorRT-LLM KvCacheConfig.enable_block_reuse
    enable_chunked_context: bool = True  # TensorRT-LLM
    batch_scheduler_policy: str = "guaranteed_no_evict"  # TensorRT-LLM: or "max_utilization"
    # tests only: "fail_on_token:<id>" fails the sequences that feed that token; "crash_on_token:<id>" breaks
    # the whole engine (an error escapes step, as a CUDA fault would)
    fault_injection: str = ""

    @classmethod
    def from_parameters(cls, params: dict[str, Any]) -> ServingConfig:
        """From Triton's model_config["parameters"] ({key: {"string_value": v}}) or a plain dict."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in params.items():
            value = raw.get("string_value") if isinstance(raw, dict) else raw
            if value is None or value == "" or (isinstance(value, str) and value.startswith("${")):
                continue
            if key not in known:
                continue  # other backends' keys (e.g. REPORT_CUSTOM_METRICS) may share the file
            values[key] = _coerce(key, known[key].type, value)
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.engine not in ("pytorch", "tensorrtllm", "synthetic"):
            raise ConfigError(f"engine: expected pytorch, tensorrtllm or synthetic, got {self.engine!r}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype: expected auto|float32|float16|bfloat16, got {self.dtype!r}")
        for name in ("max_batch_size", "max_num_tokens", "kv_block_size", "max_queue_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.gil_switch_interval_us < 0:
            raise ConfigError(f"gil_switch_interval_us: must be >= 0, got {self.gil_switch_interval_us}")
        if self.prefill_graph_max_tokens < 0:
            raise ConfigError(f"prefill_graph_max_tokens: must be >= 0, got {self.prefill_graph_max_tokens}")
        if not 0.0 < self.kv_cache_free_mem_fraction <= 1.0:
            raise ConfigError("kv_cache_free_mem_fraction: must be in (0, 1]")
        if self.kv_cache_dtype not in ("auto", "fp8"):
            raise ConfigError(f"kv_cache_dtype: expected auto|fp8, got {self.kv_cache_dtype!r}")
        for name in SWITCHES:
            if getattr(self, name).lower() not in ("auto", "true", "false"):
                raise ConfigError(f"{name}: expected auto|true|false, got {getattr(self, name)!r}")
        if self.batch_scheduler_policy not in ("guaranteed_no_evict", "max_utilization"):
            raise ConfigError("batch_scheduler_policy: expected guaranteed_no_evict or max_utilization")

    def replace(self, **changes: Any) -> ServingConfig:
        return dataclasses.replace(self, **changes)


def apply_switch_interval(cfg: ServingConfig) -> None:
    if cfg.gil_switch_interval_us:
        sys.setswitchinterval(cfg.gil_switch_interval_us / 1e6)


def _coerce(key: str, type_name: Any, value: Any) -> Any:
    t = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    try:
        if t == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if t == "int":
            return int(value)
        if t == "float":
            return float(value)
        return str(value)
    except ValueError:
        raise ConfigError(f"{key}: cannot read {value!r} as {t}") from None


def resolve_inside(model_dir: str | os.PathLike, relative: str, knob: str) -> Path:
    """Resolves a path from config against the model directory and refuses anything outside it."""
    root = Path(model_dir).resolve()
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise ConfigError(f"{knob}: {relative!r} resolves outside the model directory {root}")
    return path
