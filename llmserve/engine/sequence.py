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
    plain_greedy: bool = False  # argmax alone picks its tokens: it may run in a launched (async) step
    index: int = 0  # the choice of its request (params.n > 1)
    # Choices 1..n-1: the choice 0 whose computed prompt blocks they share (block_manager.allocate_prompt).
    leader: Sequence | None = None

    @property
    def at_limit(self) -> bool:
        """Every token it may have is generated or on its way: nothing more to schedule."""
        return len(self.tokens) >= self.max_total_tokens

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def key(self) -> str | tuple[str, int]:
        """Its key among the engine's sequences: choice 0 keeps the request id (what n = 1 callers look up)."""
        return self.request.request_id if self.index == 0 else (self.request.request_id, self.index)

    @property
    def num_output_tokens(self) -> int:
        return len(self.tokens) - self.num_prompt_tokens

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed_tokens

    @property
    def output_tokens(self) -> list[int]:
        return self.tokens[self.num_prompt_tokens:]
