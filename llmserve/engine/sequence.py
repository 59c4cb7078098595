"""Per-request state inside the PyTorch engine."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from llmserve.engine.api import EngineRequest, TokenLogprob


class Status(str, enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request: EngineRequest
    tokens: list[int]  # prompt + generated so far
    num_prompt_tokens: int
    max_total_tokens: int  # prompt + max_tokens, capped by the model context
    status: Status = Status.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_cached_tokens: int = 0  # of those, served by the prefix cache at admission
    # Grows in place (append) while held, replaced by a new list otherwise: graph_inputs.TableRows relies on it to
    # rewrite only a table's new tail.
    block_table: list[int] = field(default_factory=list)
    num_hashed_blocks: int = 0  # leading full blocks registered in the prefix cache
    block_hashes: list[bytes] = field(default_factory=list)  # their chained hashes, extended incrementally
    generator: torch.Generator | None = None
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    num_emitted: int = 0  # generated tokens already handed out
    preempted: int = 0
    # Placeholders at the end of `tokens` for tokens launched on the GPU but not read back yet (async
    # scheduling): they count as computed inputs of the next step, never as output.
    num_pending: int = 0
    # Its step is in the pipeline (pipeline stages, several steps in flight): not scheduled again until read.
    in_flight: bool = False
    plain_greedy: bool = False  # argmax alone picks its tokens: it may run in a launched (async) step
    index: int = 0  # the choice of its request (params.n > 1)
    # Choices 1..n-1: the choice 0 whose computed prompt blocks they share (block_manager.allocate_prompt).
    leader: Sequence | None = None
    # Derived once from the request: the engine reads them for every sequence at every step.
    key: str | tuple[str, int] = field(init=False, default="")  # among the engine's sequences (see __post_init__)
    stop_ids: frozenset[int] = field(init=False, default=frozenset())  # ids that end it: stop ids, EOS unless ignored

    def __post_init__(self) -> None:
        # Choice 0 keeps the request id as its key (what n = 1 callers look up).
        self.key = self.request.request_id if self.index == 0 else (self.request.request_id, self.index)
        p = self.request.params
        self.stop_ids = frozenset(p.stop_token_ids) | (frozenset() if p.ignore_eos else
                                                       frozenset(self.request.eos_token_ids))

    @property
    def at_limit(self) -> bool:
        """Every token it may have is generated or on its way: nothing more to schedule."""
        return len(self.tokens) >= self.max_total_tokens

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_output_tokens(self) -> int:
        return len(self.tokens) - self.num_prompt_tokens

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed_tokens

    @property
    def output_tokens(self) -> list[int]:
        return self.tokens[self.num_prompt_tokens:]
