"""Batched sampling on the device the logits live on: penalties, temperature, top-k/top-p/min-p, draw.

Each row carries its own parameters. Rows with a seed draw their noise from their own generator, so a
seeded request gives the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from llmserve.engine.api import TokenLogprob
from llmserve.engine.penalties import TokenHistory, apply_penalties, device_tensor, penalised
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.sequence import Sequence


@dataclass
class SamplingBatch:
    params: list[SamplingParams]
    tokens: list[list[int]]  # each row's prompt + generated tokens (a Sequence's own list: not copied)
    num_prompt: list[int]  # where each row's generated tokens start (presence and frequency penalties count those)
    generators: list[torch.Generator | None]
    banned: list[list[int]]  # ids masked this step (EOS/stop ids before min_tokens)
    lengths: list[int] = field(default_factory=list)  # tokens a row has as of this step (default: all of them)
    owners: list[Hashable] = field(default_factory=list)  # each row's key in `history` (the engine's Sequence)
    history: TokenHistory | None = None  # the engine's device copies of penalised rows' tokens (None: made here)

    @classmethod
    def of(cls, rows: list[Sequence], history: TokenHistory | None = None) -> SamplingBatch:
        """The sampling inputs of a step's rows (EOS and stop ids banned before min_tokens), as they are now."""
        banned = []
        for s in rows:
            p = s.request.params
            stop_ids = list(p.stop_token_ids) + ([] if p.ignore_eos else list(s.request.eos_token_ids))
            banned.append(stop_ids if s.num_output_tokens < p.min_tokens else [])
        return cls(params=[s.request.params for s in rows], tokens=[s.tokens for s in rows],
                   num_prompt=[s.num_prompt_tokens for s in rows], generators=[s.generator for s in rows],
                   banned=banned, lengths=[len(s.tokens) - s.num_pending for s in rows], owners=list(rows),
                   history=history)

    def penalise(self, logits: torch.Tensor) -> None:
        """The rows' penalties, in place (llmserve/engine/penalties.py)."""
        rows = [i for i, p in enumerate(self.params) if penalised(p)]
        if not rows:
            return
        lengths = [self.lengths[i] if self.lengths else len(self.tokens[i]) for i in rows]
        owners = [self.owners[i] for i in rows] if self.owners else [object() for _ in rows]
        history = self.history or TokenHistory(len(rows), logits.device)
        slots = history.rows(owners, [self.tokens[i] for i in rows], lengths)
        apply_penalties(logits, self.params, slots, history.ids, lengths, [self.num_prompt[i] for i in rows], rows)


def plain_greedy_params(p: SamplingParams) -> bool:
    """Argmax alone decides: no temperature, penalties or logprobs (bans before min_tokens aside)."""
    return (p.greedy and p.logprobs is None and p.repetition_penalty == 1.0 and not p.presence_penalty
            and not p.frequency_penalty)


def is_plain_greedy(batch: SamplingBatch) -> bool:
    """Argmax alone decides every row: no temperature, penalties, bans or logprobs (the CUDA graph's argmax)."""
    return all(not banned and plain_greedy_params(p) for p, banned in zip(batch.params, batch.banned))


# Tokens ranked per row before a whole-vocabulary sort is needed: top-p's prefix and min-p's survivors nearly always
# lie within them (a row whose cut falls further is sorted whole, exactly as before)
CANDIDATES = 1024


def _removed(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Which tokens top-k, top-p and min-p drop, of rows ranked most likely first (`probs` over the whole
    vocabulary, possibly only its first ranks). Each mask drops a suffix of the ranks."""
    ranks = torch.arange(probs.shape[-1], device=probs.device)
    remove = ranks >= torch.where(top_k > 0, top_k, torch.full_like(top_k, probs.shape[-1] + 1))[:, None]
    # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already does.
    mass_before = probs.cumsum(dim=-1) - probs
    remove |= mass_before >= top_p[:, None]
    remove |= probs < (min_p[:, None] * probs[:, :1])
    remove[:, 0] = False  # the most likely token always survives
    return remove


def _mask_sorted(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    remove = _removed(sorted_logits.softmax(dim=-1), top_k, top_p, min_p)
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits.masked_fill(remove, float("-inf")))


def top_k_top_p_min_p_mask(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor,
                           candidates: int = CANDIDATES) -> torch.Tensor:
    """Returns logits with every token outside top-k, top-p and min-p set to -inf.

    top_k: [B] int (0 = off); top_p, min_p: [B] float. Logits are already divided by temperature. Only the first
    `candidates` ranks of each row are found (topk, not a sort of 128k entries a row); rows whose cut falls past
    them, and rows that ask for no mask but share the batch, are handled whole."""
    if candidates >= logits.shape[-1]:
        return _mask_sorted(logits, top_k, top_p, min_p)
    vals, idx = logits.topk(candidates, dim=-1)
    remove = _removed((vals - logits.logsumexp(dim=-1, keepdim=True)).exp(), top_k, top_p, min_p)
    out = torch.full_like(logits, float("-inf")).scatter_(-1, idx, vals.masked_fill(remove, float("-inf")))
    unmasked = (top_k <= 0) & (top_p >= 1.0) & (min_p <= 0.0)
    out = torch.where(unmasked[:, None], logits, out)
    past = ~(remove[:, -1] | unmasked)  # the cut falls past the candidates (a device-to-host read, rarely true)
    if bool(past.any()):
        rows = past.nonzero().squeeze(1)
        out[rows] = _mask_sorted(logits[rows], top_k[rows], top_p[rows], min_p[rows])
    return out


def masks(p: SamplingParams) -> bool:
    """Whether top-k, top-p or min-p drops any token of the row (top_k 0 or -1: off)."""
    return p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0


def candidates(params: list[SamplingParams]) -> int:
    """Ranks the mask needs per row: one past the largest top-k when every masked row sets one, else CANDIDATES."""
    masked = [p for p in params if masks(p)]
    if masked and all(p.top_k > 0 for p in masked):
        return max(p.top_k for p in masked) + 1
    return CANDIDATES


def sample(logits: torch.Tensor, batch: SamplingBatch) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits: [B, V], float32 or the model's 16 bits (upcast here; a float32 tensor is changed in place).
    Returns the chosen token per row, and its logprob when asked."""
    logits = logits.float()
    B = logits.shape[0]
    params = batch.params
    raw_logprobs = logits.log_softmax(dim=-1) if any(p.logprobs is not None for p in params) else None
    batch.penalise(logits)
    for i, banned in enumerate(batch.banned):
        if banned:
            logits[i, device_tensor(banned, torch.long, logits.device)] = float("-inf")

    dev = logits.device
    chosen = logits.argmax(dim=-1)
    if not all(p.greedy for p in params):  # decided on the host: no device sync
        greedy = device_tensor([p.greedy for p in params], torch.bool, dev)
        temp = device_tensor([p.temperature if not p.greedy else 1.0 for p in params], logits.dtype, dev)
        scaled = logits / temp[:, None]
        if any(map(masks, params)):
            scaled = top_k_top_p_min_p_mask(
                scaled,
                device_tensor([p.top_k for p in params], torch.long, dev),
                device_tensor([p.top_p for p in params], logits.dtype, dev),
                device_tensor([p.min_p for p in params], logits.dtype, dev), candidates(params))
        probs = scaled.softmax(dim=-1)
        # Exponential race (Gumbel-max in disguise): argmax(p / E) with E ~ Exp(1) samples from p.
        noise = torch.empty_like(probs).exponential_()
        for i, g in enumerate(batch.generators):
            if g is not None:
                noise[i].exponential_(generator=g)  # in place: the same draws as a fresh row of its size
        drawn = (probs / noise).argmax(dim=-1)
        chosen = torch.where(greedy, chosen, drawn)

    tokens = chosen.tolist()
    out: list[TokenLogprob | None] = [None] * B
    if raw_logprobs is not None:
        for i, lp in zip(*_logprobs(raw_logprobs, chosen, params)):
            out[i] = TokenLogprob(tokens[i], *lp)
    return tokens, out


def _logprobs(raw: torch.Tensor, chosen: torch.Tensor, params: list[SamplingParams]
              ) -> tuple[list[int], list[tuple[float, dict[int, float]]]]:
    """The rows that ask for logprobs, and each one's (chosen token's logprob, its top-n): one top-k of the
    largest n over all of them and three reads back whatever the rows (a row at a time was two a row)."""
    want = [i for i, p in enumerate(params) if p.logprobs is not None]
    at = device_tensor(want, torch.long, raw.device)
    picked = raw[at, chosen[at]].tolist()
    k = max(params[i].logprobs for i in want)
    vals, ids = raw[at].topk(k) if k > 0 else (raw[at, :0], raw[at, :0].long())
    vals, ids = vals.tolist(), ids.tolist()
    n = [params[i].logprobs for i in want]
    return want, [(picked[j], dict(zip(ids[j][:n[j]], vals[j][:n[j]]))) for j in range(len(want))]
