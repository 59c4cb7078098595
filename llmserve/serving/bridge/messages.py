"""What the engine process and its clients say to each other: one frozen dataclass per message kind, pickled
over multiprocessing.connection (both ends run the same code, started from the same checkout).

Order: the engine sends `Ready` or `Failed` first; a client then sends `Add`, `Abort`, `Drain` and at last
`Stop`; the engine sends `Out` once per batch of deltas (one engine step's worth) and `Stopped` at the end.
Request ids are each client's own: the engine keys them by connection. Metric calls made in the engine go to
one client per batch, in turn: tritonserver merges the instances' metric families into the same series, so
any stub may report them. A client whose engine dies sees EOF: every request it has in flight gets a final
UNAVAILABLE error and `healthy` turns False.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.engine.api import EngineStats
from llmserve.serving.api import Delta, GenerateRequest

ADDRESS_TAKEN = 3  # the engine process's exit code when another engine already serves its share key

MetricCall = tuple[str, tuple]  # a MetricsSink method's name and its arguments, replayed in the client


# -- engine -> client ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    """The engine has loaded and takes this client's requests."""

    vocab_size: int
    max_model_len: int
    pid: int  # the engine's: a client that started an engine of its own learns whether it lost the race


@dataclass(frozen=True)
class Failed:
    """The engine could not load; sent to whoever connects in the two seconds before it exits."""

    traceback: str


@dataclass(frozen=True)
class Out:
    """One batch: this client's deltas, the metric calls it reports this time, and the engine's state."""

    deltas: list[Delta]
    metric_calls: list[MetricCall]
    stats: EngineStats
    healthy: bool
    resident_bytes: int  # the engine's and all its clients' resident memory, as last read


@dataclass(frozen=True)
class Stopped:
    """The answer to `Stop`. `last`: this was the engine's last client, and the engine has freed the model."""

    last: bool


# -- client -> engine ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Add:
    request: GenerateRequest  # tokenized: the prompt's text stays in the client


@dataclass(frozen=True)
class Abort:
    request_id: str


@dataclass(frozen=True)
class Drain:
    grace_s: float


@dataclass(frozen=True)
class Stop:
    """This client leaves; its requests still running end with an UNAVAILABLE error."""


FromEngine = Ready | Failed | Out | Stopped
FromClient = Add | Abort | Drain | Stop
