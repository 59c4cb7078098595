"""What callers of the service see, wherever the engine runs: the `Service` interface, its requests and deltas.

Two implementations: `LLMService` (service.py) runs the engine in the caller's process; `ServiceProcess`
(bridge/client.py) forwards to an engine process. `factory.build_service` picks one; the Triton adapter, the
tests and the benchmark use only what `Service` declares.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from llmserve.engine.api import EngineStats, FinishReason, TokenLogprob
from llmserve.engine.sampling_params import InvalidRequest, SamplingParams
from llmserve.serving.tokenizer import Tokenizer

# The errors every implementation gives with status UNAVAILABLE (clients and load balancers go elsewhere).
DRAINING_MESSAGE = "the server is shutting down (draining): send the request to another replica"
SHUTTING_DOWN_MESSAGE = "the server is shutting down"
NOT_SERVING_MESSAGE = "the engine is not serving (shutting down or failed)"


@dataclass
class GenerateRequest:
    request_id: str
    params: SamplingParams
    prompt: str | None = None
    messages: list | None = None
    prompt_token_ids: list[int] | None = None
    # When the server took the request (the adapter stamps Triton's hand-over): the time-to-first-token and
    # request-latency metrics count from here. CLOCK_MONOTONIC, shared by the stub and the engine process.
    arrival_time: float = field(default_factory=time.monotonic)
    # With LLMSERVE_STEP_TRACE: the times each hop passed it on (the stub to the engine process's pipe, that
    # process's reader to the engine thread), so the trace splits a burst's intake by stage.
    hops: tuple[float, ...] = ()


@dataclass
class Delta:
    """New text of one choice (`index`) of a request. `finish_reason` set ends that choice; exactly one delta per
    request has `finished` True: the last (an error or an abort ends every choice at once)."""

    request_id: str
    text: str
    token_ids: list[int]
    num_input_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None
    error: Exception | None = None
    index: int = 0  # the choice (params.n > 1)
    choices_left: int = 0  # choices of the request still running after this delta

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None and not self.choices_left


Callback = Callable[[Delta], None]


class Service(Protocol):
    """Text in, deltas out. `submit` and the rest may be called from any thread; callbacks run on the service's
    own thread and must not block."""

    tokenizer: Tokenizer  # the adapter decodes prompt ids for echoing the input with it
    healthy: bool  # False once the engine has failed: the adapter then unloads the model

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_model_len(self) -> int: ...

    def submit(self, request: GenerateRequest, callback: Callback) -> None:
        """Tokenizes (where the request has no ids yet) and queues a request. Raises InvalidRequest for a bad
        prompt and EngineError (UNAVAILABLE) while draining or stopped; every later problem arrives through
        the callback as the request's final delta."""
        ...

    def abort(self, request_id: str) -> None: ...

    def drain(self, grace_s: float) -> None:
        """Stops taking requests (UNAVAILABLE); running ones get `grace_s` seconds to finish, then each ends
        with a final UNAVAILABLE error."""
        ...

    def stats(self) -> EngineStats: ...

    def resident_memory_bytes(self) -> int:
        """Resident memory of the processes serving this engine (the leak-watch gauge)."""
        ...

    def shutdown(self) -> None:
        """Stops serving and frees the engine; requests still in flight end with an UNAVAILABLE error."""
        ...


def take_deltas(q: queue.SimpleQueue, timeout: float | None = None) -> tuple[list[Delta], bool]:
    """Everything queued by the callbacks now, waiting up to `timeout` (None: forever) for the first; and whether
    the end marker (None) came. Whoever sends them sends a batch at a time: when the engine outruns the
    sends, a batch holds several deltas of one request."""
    try:
        item = q.get(timeout=timeout)
    except queue.Empty:
        return [], False
    deltas: list[Delta] = []
    while item is not None:
        deltas.append(item)
        try:
            item = q.get_nowait()
        except queue.Empty:
            return deltas, False
    return deltas, True


def tokenize_request(tokenizer: Tokenizer, request: GenerateRequest, max_prompt_chars: int) -> list[int]:
    """The prompt's token ids: the one place that checks prompt text (its token count is the engine's
    PromptLimits)."""
    if request.messages is not None:
        return tokenizer.apply_chat_template(request.messages)
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise InvalidRequest("text_input", "the prompt is empty")
    if len(request.prompt) > max_prompt_chars:
        raise InvalidRequest("text_input", f"the prompt has {len(request.prompt)} characters; "
                             f"the limit is {max_prompt_chars} (max_input_bytes)")
    return tokenizer.encode(request.prompt)
