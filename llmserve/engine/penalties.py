"""Repetition, presence and frequency penalties over the tokens each row has seen, those tokens kept on the device
between steps: a sequence's tokens go up once, then only its new ones, so a step's host work grows with its rows
and their new tokens, not with their contexts (1,024 rows of 1,000-token contexts were a million ids a step)."""

from __future__ import annotations

from collections.abc import Hashable

import torch

from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.sequence import Status


def penalised(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)


def device_tensor(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list on the device without a stream sync (pinned staging, asynchronous copy)."""
    t = torch.tensor(values, dtype=dtype)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


class TokenHistory:
    """Device copies of rows' tokens: a slot (a row of `ids`) per owner (the engine's Sequence), taken back once the
    owner has finished, or when a row of the current step needs one and another owner is not in it (that one
    uploads its tokens again if it comes back)."""

    def __init__(self, slots: int, device: torch.device):
        self.device = device
        self.ids: torch.Tensor | None = None  # [slots, width] int32, made on first use, widened as contexts grow
        self.owner: list[Hashable | None] = [None] * slots
        self.length = [0] * slots  # tokens of the owner's on the device
        self.slot_of: dict[Hashable, int] = {}
        self.free = list(range(slots - 1, -1, -1))  # never used yet, taken from the end (slot 0 first)

    def rows(self, owners: list[Hashable], tokens: list[list[int]], lengths: list[int]) -> torch.Tensor:
        """Uploads what the device lacks of each owner's tokens[:length]; returns their slots, [rows] int64."""
        current = set(owners)
        slots = [self._slot(o, current) for o in owners]
        self._widen(max(lengths, default=0))
        where: list[int] = []
        pos: list[int] = []
        vals: list[int] = []
        for s, toks, n in zip(slots, tokens, lengths):
            have = self.length[s] if self.length[s] <= n else 0  # shorter than before: upload it whole again
            where += [s] * (n - have)
            pos += range(have, n)
            vals += toks[have:n]
            self.length[s] = n
        if vals:
            at = (device_tensor(where, torch.long, self.device), device_tensor(pos, torch.long, self.device))
            self.ids[at] = device_tensor(vals, torch.int32, self.device)
        return device_tensor(slots, torch.long, self.device)

    def _slot(self, owner: Hashable, current: set) -> int:
        if owner in self.slot_of:
            return self.slot_of[owner]
        s = self.free.pop() if self.free else None
        if s is None:  # a finished owner's, else one not in this step's rows
            s = next((i for i, o in enumerate(self.owner) if getattr(o, "status", None) == Status.FINISHED), None)
        if s is None:
            s = next(i for i, o in enumerate(self.owner) if o not in current)
        if self.owner[s] is not None:
            del self.slot_of[self.owner[s]]
        self.owner[s], self.length[s], self.slot_of[owner] = owner, 0, s
        return s

    def _widen(self, width: int) -> None:
        if self.ids is not None and self.ids.shape[1] >= width:
            return
        old = self.ids
        new_width = max(width, 256, 2 * (old.shape[1] if old is not None else 0))
        self.ids = torch.zeros(len(self.owner), new_width, dtype=torch.int32, device=self.device)
        if old is not None:
            self.ids[:, :old.shape[1]] = old


def apply_penalties(logits: torch.Tensor, params: list[SamplingParams], slots: torch.Tensor, ids: torch.Tensor,
                    lengths: list[int], num_prompt: list[int], rows: list[int]) -> None:
    """In place on `rows` of logits [B, V]: row rows[j] has seen ids[slots[j], :lengths[j]], of which those from
    num_prompt[j] on are generated. HF's repetition penalty (CTRL: a seen token's positive logit divided, a
    negative one multiplied) over all of them, then presence (once) and frequency (per occurrence) over the
    generated ones, with the arithmetic of a row at a time."""
    dev, dt = logits.device, logits.dtype
    width = max(lengths)
    seen = ids[slots, :width].long()
    pos = torch.arange(width, device=dev)
    n = device_tensor(lengths, torch.long, dev)[:, None]
    at = device_tensor(rows, torch.long, dev)
    rp = [params[r].repetition_penalty for r in rows]
    if any(v != 1.0 for v in rp):
        # Each seen token's logit, gathered and written back (padding repeats the row's first token, and a token
        # seen twice is written twice with the same value): no [rows, vocabulary] temporaries
        seen_at = torch.where(pos < n, seen, seen[:, :1])
        x = logits[at[:, None], seen_at]
        pen = device_tensor(rp, dt, dev)[:, None]
        logits[at[:, None], seen_at] = torch.where(x > 0, x / pen, x * pen)
    said_rows = [j for j, r in enumerate(rows) if params[r].presence_penalty or params[r].frequency_penalty]
    if said_rows:
        k = device_tensor(said_rows, torch.long, dev)
        said = (pos >= device_tensor(num_prompt, torch.long, dev)[:, None]) & (pos < n)
        counts = torch.zeros(len(said_rows), logits.shape[1] + 1, dtype=dt, device=dev)
        counts.scatter_add_(1, torch.where(said[k], seen[k], logits.shape[1]), said[k].to(dt))  # padding: last column
        counts = counts[:, :-1]
        presence = device_tensor([params[rows[j]].presence_penalty for j in said_rows], dt, dev)[:, None]
        frequency = device_tensor([params[rows[j]].frequency_penalty for j in said_rows], dt, dev)[:, None]
        logits[at[k]] -= presence * (counts > 0).to(dt) + frequency * counts
