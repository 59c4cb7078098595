"""Serving configuration: the knobs that live in config.pbtxt `parameters`, grouped by who reads them.

config.pbtxt names every knob flat (`parameters { key: "max_batch_size" value: { string_value: "64" } }`);
`ServingConfig.from_parameters` puts each into its group, and every group checks its values when it is built,
so no `ServingConfig` holds a value that was not checked. Unset or `${...}` placeholders (NVIDIA's
fill_template convention) keep the default; a key no group knows is left for other backends
(REPORT_CUSTOM_METRICS, say). The defaults in model_repository/llm/config.pbtxt equal these
(tests/test_config.py).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmserve.errors import ConfigError

SWITCH_VALUES = ("auto", "true", "false")
__all__ = ["ConfigError", "ServingConfig", "switch", "resolve_inside", "apply_switch_interval"]


def switch(value: str, auto: Callable[[], bool]) -> bool:
    """An auto|true|false knob as a bool; `auto` is called only for "auto" (it may need a device)."""
    value = value.lower()
    return auto() if value == "auto" else value == "true"


def _at_least(group: Any, minimum: float, *names: str) -> None:
    for name in names:
        value = getattr(group, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{name}: must be >= {minimum:g}, got {value}")


def _one_of(group: Any, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(group, name)
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ConfigError(f"{name}: expected {'|'.join(allowed)}, got {value!r}")


@dataclass(frozen=True)
class BatchingConfig:
    """What runs in one engine step and what may wait for one (every engine)."""

    max_batch_size: int = 64  # sequences per step
    max_num_tokens: int = 2048  # tokens per step (chunked-prefill budget)
    max_queue_delay_us: int = 0  # wait this long after the first arrival to batch prefills
    queue_delay_gap_us: int = 0  # ... but only until no request arrived for this long (0: the whole delay)
    max_queue_size: int = 1024  # waiting requests beyond which new ones get UNAVAILABLE
    max_queued_tokens: int = 1_000_000  # prompt tokens waiting, likewise

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_batch_size", "max_num_tokens", "max_queue_size", "max_queued_tokens")
        _at_least(self, 0, "max_queue_delay_us", "queue_delay_gap_us")


@dataclass(frozen=True)
class CacheConfig:
    """The KV cache (our engine; TensorRT-LLM reads the budget and reuse)."""

    kv_cache_memory_bytes: int = 0  # 0: derive from kv_cache_free_mem_fraction (GPU) or 256 MiB (CPU)
    kv_cache_free_mem_fraction: float = 0.9
    kv_block_size: int = 16
    enable_prefix_caching: bool = True
    # "auto" (the model's dtype) or "fp8" (e4m3, unscaled: twice the tokens in the same memory, some accuracy cost)
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        _at_least(self, 1, "kv_block_size")
        _at_least(self, 0, "kv_cache_memory_bytes")
        if not 0.0 < self.kv_cache_free_mem_fraction <= 1.0:
            raise ConfigError(f"kv_cache_free_mem_fraction: must be in (0, 1], got {self.kv_cache_free_mem_fraction}")
        _one_of(self, "kv_cache_dtype", ("auto", "fp8"))


@dataclass(frozen=True)
class PytorchConfig:
    """Our engine's device work."""

    dtype: str = "auto"  # "auto" (bf16 on a GPU, fp32 on a CPU) | "float32" | "float16" | "bfloat16"
    cuda_graphs: bool = True  # decode steps replay CUDA graphs per batch size
    # Prefill and mixed steps of up to this many tokens replay a CUDA graph per padded token count (up to
    # max_num_tokens; with cuda_graphs only); 0: they run eagerly
    prefill_graph_max_tokens: int = 2048
    # Queue greedy decode step N+1 on the GPU before reading step N's tokens, so host work overlaps the GPU
    # ("auto": on for CUDA)
    async_scheduling: str = "auto"
    # Programmatic dependent launch of our linear and fused kernels in the decode graphs of up to 16 rows
    # ("auto": on for compute capability 9.0+)
    pdl: str = "auto"
    # fp8 weights: the e4m3 x e4m3 GEMMs accumulate in the tensor cores' own precision over the whole K, as
    # vLLM's CUTLASS fp8 GEMMs do (FP8FastAccum); false: promote to fp32 every 128 products (cuBLAS's default)
    fp8_fast_accum: bool = True
    # Ranks that each hold a slice of every layer's heads and MLP rows (llmserve/engine/parallel): rank 0 is this
    # process, the others are worker processes it starts; all-reduces over NCCL on GPUs, gloo on the CPU
    tensor_parallel_size: int = 1
    # Stages that each hold a contiguous slice of the layers (rank 0 also the embedding, the last stage also the
    # norm and lm_head), each with the KV cache of its own layers; a step's micro-batches flow stage to stage.
    # tensor_parallel_size x pipeline_parallel_size ranks in all (llmserve/engine/parallel/pipeline.py)
    pipeline_parallel_size: int = 1
    # Micro-batches a pipelined step's sequences are cut into (at most one per sequence); 0: one per stage for
    # steps of 64 tokens or more, else one (llmserve/engine/parallel/pipeline.py AUTO_SPLIT_TOKENS)
    pipeline_micro_batches: int = 0
    # Steps the engine keeps in the pipeline at once, each over sequences none of the others has (vLLM's batch
    # queue), so decode steps overlap the stages too; 0: one per stage; 1: one step at a time
    pipeline_steps_in_flight: int = 0
    # "always": run through the rank group (its step messages, its all-reduces) even with one rank, to measure
    # what the group costs (bench.run's engine_group1 variant); "auto": only with more than one rank
    distributed: str = "auto"
    # tests only: "fail_on_token:<id>" fails the sequences that feed that token; "crash_on_token:<id>" breaks
    # the whole engine (an error escapes step, as a CUDA fault would)
    fault_injection: str = ""

    @property
    def world_size(self) -> int:
        """The engine's ranks: rank = stage * tensor_parallel_size + tensor-parallel rank."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def __post_init__(self) -> None:
        _one_of(self, "dtype", ("auto", "float32", "float16", "bfloat16"))
        _at_least(self, 0, "prefill_graph_max_tokens")
        _one_of(self, "async_scheduling", SWITCH_VALUES)
        _one_of(self, "pdl", SWITCH_VALUES)
        _at_least(self, 1, "tensor_parallel_size", "pipeline_parallel_size")
        _at_least(self, 0, "pipeline_micro_batches", "pipeline_steps_in_flight")
        _one_of(self, "distributed", ("auto", "always"))
        kind, _, arg = self.fault_injection.partition(":")
        if self.fault_injection and (kind not in ("fail_on_token", "crash_on_token") or not arg.isdigit()):
            raise ConfigError(f"fault_injection: expected fail_on_token:<id> or crash_on_token:<id>, "
                              f"got {self.fault_injection!r}")


@dataclass(frozen=True)
class TrtllmConfig:
    """TensorRT-LLM's Executor."""

    engine_dir: str = "engine"  # the engine files, relative to the model directory
    enable_kv_cache_reuse: bool = True  # KvCacheConfig.enable_block_reuse
    enable_chunked_context: bool = True
    batch_scheduler_policy: str = "guaranteed_no_evict"  # or "max_utilization"

    def __post_init__(self) -> None:
        _one_of(self, "batch_scheduler_policy", ("guaranteed_no_evict", "max_utilization"))


@dataclass(frozen=True)
class FrontConfig:
    """The Triton adapter and the service in front of the engine."""

    # Run the engine in a child process with its own GIL ("auto": on for the pytorch engine on CUDA)
    engine_process: str = "auto"
    # Python's thread switch interval in the stub and the engine process (sys.setswitchinterval); 0 keeps 5000
    gil_switch_interval_us: int = 0
    cancellation_check_period_ms: int = 20
    exclude_input_in_output: bool = True  # when the request does not say (vllm_backend echoes the prompt)
    log_prompts: bool = False  # prompt text reaches the server log only when asked for
    max_input_bytes: int = 1_000_000  # size limit on text_input / messages
    # The response cache (llmserve/serving/response_cache.py): repeated greedy or seeded requests answered from
    # memory; 0 entries: off. Least recently used out first past either bound; an answer expires after the TTL
    response_cache_max_entries: int = 0
    response_cache_max_bytes: int = 64 << 20
    response_cache_ttl_s: float = 300.0

    def __post_init__(self) -> None:
        _one_of(self, "engine_process", SWITCH_VALUES)
        _at_least(self, 0, "gil_switch_interval_us", "response_cache_max_entries", "response_cache_ttl_s")
        _at_least(self, 1, "cancellation_check_period_ms", "max_input_bytes", "response_cache_max_bytes")
        if self.response_cache_ttl_s == 0:
            raise ConfigError("response_cache_ttl_s: must be > 0, got 0")


_GROUPS = {"batching": BatchingConfig, "cache": CacheConfig, "pytorch": PytorchConfig, "trtllm": TrtllmConfig,
           "front": FrontConfig}


@dataclass(frozen=True)
class ServingConfig:
    engine: str = "pytorch"  # "pytorch" | "tensorrtllm" | "synthetic" (no model: measures the serving layers)
    checkpoint_dir: str = "checkpoint"  # relative to the model directory, confined to it
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    max_model_len: int = 0  # 0: the smaller of max_position_embeddings and what the KV cache holds (our engine)
    synthetic_step_ms: float = 15.0  # engine "synthetic": the stand-in for one GPU step
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    pytorch: PytorchConfig = field(default_factory=PytorchConfig)
    trtllm: TrtllmConfig = field(default_factory=TrtllmConfig)
    front: FrontConfig = field(default_factory=FrontConfig)

    def __post_init__(self) -> None:
        _one_of(self, "engine", ("pytorch", "tensorrtllm", "synthetic"))
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device: expected auto|cpu|cuda|cuda:N, got {self.device!r}")
        _at_least(self, 0, "max_model_len", "synthetic_step_ms")

    @classmethod
    def of(cls, **knobs: Any) -> ServingConfig:
        """From flat knobs, as config.pbtxt names them (`ServingConfig.of(max_batch_size=4)`)."""
        top = {f.name for f in fields(cls)} - set(_GROUPS)
        groups: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
        for key, value in knobs.items():
            if key in _GROUP_OF:
                groups[_GROUP_OF[key]][key] = value
            elif key not in top:
                raise ConfigError(f"{key}: not a knob of this model")
        flat = {k: v for k, v in knobs.items() if k in top}
        return cls(**flat, **{name: _GROUPS[name](**values) for name, values in groups.items()})

    @classmethod
    def from_parameters(cls, params: dict[str, Any]) -> ServingConfig:
        """From Triton's model_config["parameters"] ({key: {"string_value": v}}) or a plain dict."""
        types = {f.name: f.type for group in (cls, *_GROUPS.values()) for f in fields(group)
                 if f.name not in _GROUPS}
        knobs: dict[str, Any] = {}
        for key, raw in params.items():
            value = raw.get("string_value") if isinstance(raw, dict) else raw
            if value is None or value == "" or (isinstance(value, str) and value.startswith("${")):
                continue
            if key in types:  # other backends' keys may share the file
                knobs[key] = _coerce(key, types[key], value)
        return cls.of(**knobs)

    def knobs(self) -> dict[str, Any]:
        """Every knob, flat, as config.pbtxt names them (what `of` takes back)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _GROUPS}
        for name in _GROUPS:
            out.update(dataclasses.asdict(getattr(self, name)))
        return out

    def replace(self, **knobs: Any) -> ServingConfig:
        return ServingConfig.of(**{**self.knobs(), **knobs})


_GROUP_OF = {f.name: name for name, group in _GROUPS.items() for f in fields(group)}


def apply_switch_interval(cfg: ServingConfig) -> None:
    if cfg.front.gil_switch_interval_us:
        sys.setswitchinterval(cfg.front.gil_switch_interval_us / 1e6)


def _coerce(key: str, type_name: Any, value: Any) -> Any:
    t = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    try:
        if t == "bool":
            return _as_bool(value)
        if t == "int":
            return int(value)
        if t == "float":
            return float(value)
        return str(value)
    except ValueError:
        raise ConfigError(f"{key}: cannot read {value!r} as {t}") from None


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes", "on"):
        return True
    if str(value).lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(value)


def resolve_inside(model_dir: str | os.PathLike, relative: str, knob: str) -> Path:
    """Resolves a path from config against the model directory and refuses anything outside it."""
    root = Path(model_dir).resolve()
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise ConfigError(f"{knob}: {relative!r} resolves outside the model directory {root}")
    return path
