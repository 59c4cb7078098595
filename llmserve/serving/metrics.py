"""What the service measures per request, independent of where it is exported (Triton, Prometheus, a test).

Names follow Prometheus conventions (base units, `_total` counters); the Triton adapter registers them as
`pb_utils.MetricFamily` under exactly these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

HISTOGRAMS = {
    "llm_time_to_first_token_seconds": ("Time from arrival to the first generated token",
                                        [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]),
    "llm_time_per_output_token_seconds": ("Time between consecutive generated tokens (inter-token latency)",
                                          [0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5]),
    "llm_e2e_request_latency_seconds": ("Time from arrival to the final response",
                                        [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]),
    "llm_request_prompt_tokens": ("Prompt tokens per request", [8, 32, 128, 512, 1024, 2048, 4096, 8192]),
    "llm_request_generation_tokens": ("Generated tokens per request", [8, 32, 128, 512, 1024, 2048, 4096]),
    "llm_response_repetition_ratio": ("Share of repeated token trigrams in a response (quality signal)",
                                      [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]),
}
COUNTERS = {
    "llm_prompt_tokens_total": "Prompt tokens processed",
    "llm_generation_tokens_total": "Tokens generated",
    "llm_prefix_cache_queries_total": "Prompt KV blocks looked up in the prefix cache",
    "llm_prefix_cache_hits_total": "Prompt KV blocks found in the prefix cache",
    "llm_request_cancellations_total": "Requests cancelled by the client",
    "llm_request_failures_total": "Requests that ended with an error, by reason",
    "llm_request_success_total": "Requests that finished normally, by finish reason",
    # The response cache (response_cache.py) counts deterministic requests only; a hit never reaches the engine
    "llm_response_cache_hits_total": "Deterministic requests answered from the response cache",
    "llm_response_cache_misses_total": "Deterministic requests not in the response cache (sent to the engine)",
}
GAUGES = {
    "llm_requests_running": "Requests in the running batch",
    "llm_requests_waiting": "Requests waiting for admission",
    "llm_kv_cache_blocks": "KV cache blocks by state (used, free)",
    "llm_engine_healthy": "1 while the engine serves, 0 once it failed (the model then unloads itself)",
    "llm_backend_resident_memory_bytes": "Resident memory of the model's backend processes: the stub, plus the "
                                         "engine's own process where engine_process is on (leak watch)",
}


def resident_memory_bytes(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


class MetricsSink(Protocol):
    def observe(self, name: str, value: float) -> None: ...

    def increment(self, name: str, value: float = 1.0, labels: dict[str, str] | None = None) -> None: ...

    def set(self, name: str, value: float, labels: dict[str, str] | None = None) -> None: ...


class NullSink:
    def observe(self, name: str, value: float) -> None:
        pass

    def increment(self, name: str, value: float = 1.0, labels: dict[str, str] | None = None) -> None:
        pass

    def set(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        pass


def repetition_ratio(tokens: list[int], n: int = 3) -> float:
    """1 - distinct n-grams / n-grams: 0 for no repeats, near 1 for a loop."""
    if len(tokens) < n + 1:
        return 0.0
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


@dataclass
class RequestTiming:
    arrival: float
    first_token: float | None = None
    last_token: float | None = None
