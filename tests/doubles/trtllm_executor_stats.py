"""Iteration statistics of the contract double (tests/doubles/trtllm_executor_double.py); NOT TensorRT-LLM.

Field names as the nanobind bindings expose them (cpp/tensorrt_llm/nanobind/executor/bindings.cpp); only the
fields llmserve/engine/trtllm.py reads, plus a few neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KvCacheStats:  # bindings.cpp
    max_num_blocks: int = 0
    free_num_blocks: int = 0
    used_num_blocks: int = 0
    tokens_per_block: int = 0
    reused_blocks: int = 0
    missed_blocks: int = 0


@dataclass
class InflightBatchingStats:  # bindings.cpp (subset)
    num_scheduled_requests: int = 0
    num_context_requests: int = 0
    num_gen_requests: int = 0
    num_paused_requests: int = 0


@dataclass
class IterationStats:  # bindings.cpp (subset)
    iter: int = 0
    num_active_requests: int = 0
    num_queued_requests: int = 0
    max_num_active_requests: int = 0
    kv_cache_stats: KvCacheStats | None = None
    static_batching_stats: object = None
    inflight_batching_stats: InflightBatchingStats | None = None
