"""The interface every engine implements (our PyTorch engine, TensorRT-LLM's Executor).

Engines work on token ids only. Tokenizing, detokenizing and stop strings live in `service.py`, so
every engine gets the same text behaviour, and the Triton adapter talks to neither engine directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from llmserve.engine.sampling_params import SamplingParams


class EngineError(RuntimeError):
    """The engine failed a request (or all of them). `status` maps to a Triton error code."""

    def __init__(self, message: str, status: str = "INTERNAL"):
        super().__init__(message)
        self.status = status


class Overloaded(EngineError):
    """Admission refused because the queue is full. Clients retry these (the text marks them)."""

    MARK = "server overloaded"

    def __init__(self, message: str):
        super().__init__(f"{self.MARK}: {message}", status="UNAVAILABLE")
        self.detail = message

    def __reduce__(self):  # crosses the engine process's pipe; the default would prefix MARK twice
        return Overloaded, (self.detail,)


@dataclass
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = field(default_factory=time.monotonic)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)


@dataclass
class EngineOutput:
    """New tokens of one request since the last output. `finish_reason` set means this is its last."""

    request_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    logprobs: list[TokenLogprob] | None = None
    error: EngineError | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    kv_blocks_total: int = 0
    kv_blocks_free: int = 0
    kv_block_size: int = 0
    prefix_cache_hit_blocks: int = 0
    prefix_cache_query_blocks: int = 0
    preemptions: int = 0
    steps: int = 0


class Engine(Protocol):
    """Iteration-level engine. Not thread-safe: one thread (the service's engine thread) drives it."""

    vocab_size: int
    max_model_len: int

    def add_request(self, request: EngineRequest) -> None: ...

    def abort(self, request_id: str) -> None:
        """Stops a request; its final output (finish_reason "abort") comes from a later `step`."""

    def finish(self, request_id: str, reason: str = "stop") -> None:
        """Ends a request early (a stop string matched on text), freeing its resources; no output follows."""

    def has_work(self) -> bool: ...

    def step(self) -> list[EngineOutput]:
        """One scheduler iteration. May block briefly (an accelerator step, or a wait for responses)."""

    def stats(self) -> EngineStats: ...

    def shutdown(self) -> None: ...
