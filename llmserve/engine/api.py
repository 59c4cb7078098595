"""The interface every engine implements (our PyTorch engine, TensorRT-LLM's Executor).

Engines work on token ids only. Tokenizing, detokenizing and stop strings live in `service.py`, so
every engine gets the same text behaviour, and the Triton adapter talks to neither engine directly.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Protocol

from llmserve.engine.sampling_params import InvalidRequest, SamplingParams


class FinishReason(str, enum.Enum):
    """Why a request ended; the value is what the wire carries (vLLM's and OpenAI's names)."""

    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the model context
    ABORT = "abort"  # cancelled
    ERROR = "error"

    __str__ = str.__str__  # the value, on every Python (3.11 formats a str mixin enum as its name)
    __format__ = str.__format__


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
    """New tokens of one choice of a request (`index`, below `params.n`) since its last output. `finish_reason`
    set means this is that choice's last."""

    request_id: str
    new_token_ids: list[int]
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None
    error: EngineError | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    index: int = 0  # the choice


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


@dataclass(frozen=True)
class PromptLimits:
    """What an engine can take as a prompt, in tokens: every engine checks its prompts here."""

    max_model_len: int  # the context: at least one token must remain for the answer
    max_input_len: int | None = None  # an engine built for shorter prompts (TensorRT-LLM)
    kv_cache_tokens: int | None = None  # what the whole KV cache holds
    max_position_embeddings: int | None = None  # the model's own context, named beside max_model_len in refusals

    def check(self, n: int) -> None:
        if n == 0:
            raise InvalidRequest("text_input", "the prompt is empty")
        if n >= self.max_model_len:
            limits = "" if self.max_position_embeddings is None else (
                f"; the model's max_position_embeddings is {self.max_position_embeddings} and the KV cache holds "
                f"{self.kv_cache_tokens} tokens")
            raise InvalidRequest("text_input", f"the prompt has {n} tokens; the model context is "
                                 f"{self.max_model_len} tokens (max_model_len{limits}), and at least one must "
                                 "remain for the answer")
        if self.max_input_len is not None and n > self.max_input_len:
            raise InvalidRequest("text_input", f"the prompt has {n} tokens; this engine was built for at most "
                                 f"{self.max_input_len}")
        if self.kv_cache_tokens is not None and n + 1 > self.kv_cache_tokens:
            raise InvalidRequest("text_input", f"the prompt has {n} tokens, more than the KV cache holds "
                                 f"({self.kv_cache_tokens} tokens); raise kv_cache_memory_bytes")


class Engine(Protocol):
    """Iteration-level engine. Not thread-safe: one thread (the service's engine thread) drives it."""

    vocab_size: int
    max_model_len: int

    def add_request(self, request: EngineRequest) -> None: ...

    def abort(self, request_id: str) -> None:
        """Stops every choice of a request; a final output (finish_reason "abort") comes from a later `step`."""

    def finish(self, request_id: str, index: int | None = None) -> None:
        """Ends a request's choice `index` (None: all of them) early, say on a stop string matched on text,
        freeing its resources; no output of it follows."""

    def has_work(self) -> bool: ...

    def step(self) -> list[EngineOutput]:
        """One scheduler iteration. May block briefly (an accelerator step, or a wait for responses)."""

    def stats(self) -> EngineStats: ...

    def shutdown(self) -> None: ...
