"""A hook on the service's requests, for diagnostics: no-op by default.

`RequestTrace` appends one line when the engine thread takes a request (with Triton's hand-over time and the
times each hop passed it on) and one at its final delta, to the same file as the engine's step trace
(LLMSERVE_STEP_TRACE, read once, by the factory); the bench splits a burst's intake by stage from them.
"""

from __future__ import annotations

import time
from typing import Protocol

from llmserve.serving.api import GenerateRequest

TRACE_ENV = "LLMSERVE_STEP_TRACE"


class RequestObserver(Protocol):
    def taken(self, request: GenerateRequest) -> None: ...

    def ended(self, request_id: str) -> None: ...

    def close(self) -> None: ...


class NoRequestObserver:
    def taken(self, request: GenerateRequest) -> None:
        pass

    def ended(self, request_id: str) -> None:
        pass

    def close(self) -> None:
        pass


class RequestTrace:
    def __init__(self, path: str):
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - lives with the service

    def taken(self, request: GenerateRequest) -> None:
        hops = "".join(f" hop{i}={t:.4f}" for i, t in enumerate(request.hops))
        self.file.write(f"{time.monotonic():.4f} add arrival={request.arrival_time:.4f}{hops}\n")

    def ended(self, request_id: str) -> None:
        self.file.write(f"{time.monotonic():.4f} end\n")

    def close(self) -> None:
        self.file.close()


def request_observer(trace_path: str | None) -> RequestObserver:
    return RequestTrace(trace_path) if trace_path else NoRequestObserver()
