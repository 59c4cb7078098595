"""Batched sampling on the device the logits live on: penalties, temperature, top-k/top-p/min-p, draw.

Each row carries its own parameters. Rows with a seed draw their noise from their own generator, so a
seeded request gives the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmserve.engine.api import TokenLogprob
from llmserve.engine.sampling_params import SamplingParams
from llmserve.engine.sequence import Sequence


@dataclass
class SamplingBatch:
    params: list[SamplingParams]
    output_tokens: list[list[int]]  # generated so far, for presence/frequency penalties
    all_tokens: list[list[int]]  # prompt + generated, for the repetition penalty
    generators: list[torch.Generator | None]
    banned: list[list[int]]  # ids masked this step (EOS/stop ids before min_tokens)

    @classmethod
    def of(cls, rows: list[Sequence]) -> SamplingBatch:
        """The sampling tensors of a step's rows (EOS and stop ids banned before min_tokens)."""
        banned = []
        for s in rows:
            p = s.request.params
            stop_ids = list(p.stop_token_ids) + ([] if p.ignore_eos else list(s.request.eos_token_ids))
            banned.append(stop_ids if s.num_output_tokens < p.min_tokens else [])
        return cls(params=[s.request.params for s in rows], output_tokens=[s.output_tokens for s in rows],
                   all_tokens=[s.tokens for s in rows], generators=[s.generator for s in rows], banned=banned)


def plain_greedy_params(p: SamplingParams) -> bool:
    """Argmax alone decides: no temperature, penalties or logprobs (bans before min_tokens aside)."""
    return (p.greedy and p.logprobs is None and p.repetition_penalty == 1.0 and not p.presence_penalty
            and not p.frequency_penalty)


def is_plain_greedy(batch: SamplingBatch) -> bool:
    """Argmax alone decides every row: no temperature, penalties, bans or logprobs (the CUDA graph's argmax)."""
    return all(not banned and plain_greedy_params(p) for p, banned in zip(batch.params, batch.banned))


def _tensor(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list on the device without a stream sync (pinned staging, asynchronous copy)."""
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> None:
    for i, p in enumerate(batch.params):
        if p.repetition_penalty != 1.0 and batch.all_tokens[i]:
            ids = _tensor(sorted(set(batch.all_tokens[i])), torch.long, logits.device)
            row = logits[i, ids]
            # HF/CTRL convention: shrink positive logits, push negative ones further down.
            logits[i, ids] = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and batch.output_tokens[i]:
            ids = _tensor(batch.output_tokens[i], torch.long, logits.device)
            counts = torch.zeros(logits.shape[1], dtype=logits.dtype, device=logits.device)
            counts.index_add_(0, ids, torch.ones(ids.shape[0], dtype=logits.dtype, device=logits.device))
            logits[i] -= p.presence_penalty * (counts > 0).to(logits.dtype) + p.frequency_penalty * counts


def top_k_top_p_min_p_mask(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                           min_p: torch.Tensor) -> torch.Tensor:
    """Returns logits with every token outside top-k, top-p and min-p set to -inf.

    top_k: [B] int (0 = off); top_p, min_p: [B] float. Logits are already divided by temperature.
    """
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    ranks = torch.arange(vocab, device=logits.device).expand_as(sorted_logits)
    remove = ranks >= k[:, None]
    probs = sorted_logits.softmax(dim=-1)
    # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already does.
    mass_before = probs.cumsum(dim=-1) - probs
    remove |= mass_before >= top_p[:, None]
    remove |= probs < (min_p[:, None] * probs[:, :1])
    remove[:, 0] = False  # the most likely token always survives
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits: [B, V], float32 or the model's 16 bits (upcast here; a float32 tensor is changed in place).
    Returns the chosen token per row, and its logprob when asked."""
    logits = logits.float()
    B = logits.shape[0]
    params = batch.params
    raw_logprobs = logits.log_softmax(dim=-1) if any(p.logprobs is not None for p in params) else None
    apply_penalties(logits, batch)
    for i, banned in enumerate(batch.banned):
        if banned:
            logits[i, _tensor(banned, torch.long, logits.device)] = float("-inf")

    dev = logits.device
    chosen = logits.argmax(dim=-1)
    if not all(p.greedy for p in params):  # decided on the host: no device sync
        greedy = _tensor([p.greedy for p in params], torch.bool, dev)
        temp = _tensor([p.temperature if not p.greedy else 1.0 for p in params], logits.dtype, dev)
        scaled = logits / temp[:, None]
        needs_mask = any(p.top_k or p.top_p < 1.0 or p.min_p > 0.0 for p in params)
        if needs_mask:
            scaled = top_k_top_p_min_p_mask(
                scaled,
                _tensor([p.top_k for p in params], torch.long, dev),
                _tensor([p.top_p for p in params], logits.dtype, dev),
                _tensor([p.min_p for p in params], logits.dtype, dev))
        probs = scaled.softmax(dim=-1)
        # Exponential race (Gumbel-max in disguise): argmax(p / E) with E ~ Exp(1) samples from p.
        noise = torch.empty_like(probs).exponential_()
        for i, g in enumerate(batch.generators):
            if g is not None:
                noise[i] = torch.empty(probs.shape[1], device=probs.device).exponential_(generator=g)
        drawn = (probs / noise).argmax(dim=-1)
        chosen = torch.where(greedy, chosen, drawn)

    tokens = chosen.tolist()
    out: list[TokenLogprob | None] = [None] * B
    if raw_logprobs is not None:
        for i, p in enumerate(params):
            if p.logprobs is None:
                continue
            top: dict[int, float] = {}
            if p.logprobs > 0:
                vals, ids = raw_logprobs[i].topk(p.logprobs)
                top = dict(zip(ids.tolist(), vals.tolist()))
            out[i] = TokenLogprob(tokens[i], float(raw_logprobs[i, tokens[i]]), top)
    return tokens, out
