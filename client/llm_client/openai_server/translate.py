"""The model's responses -> OpenAI's objects: chat.completion, text_completion and their stream chunks."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from llm_client.openai_server.schema import GenerationCall
from llm_client.openai_server.triton import Piece

FINISH_REASONS = {"stop": "stop", "length": "length"}


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


@dataclass
class Answer:
    """Everything the model said for one request, accumulated over its responses."""

    call: GenerationCall
    id: str
    created: int = field(default_factory=lambda: int(time.time()))
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[dict] = field(default_factory=list)

    def add(self, piece: Piece) -> None:
        self.text.append(piece.text)
        self.completion_tokens += piece.num_output_tokens
        if piece.num_input_tokens is not None:
            self.prompt_tokens = piece.num_input_tokens
        if piece.finish_reason is not None:
            self.finish_reason = FINISH_REASONS.get(piece.finish_reason, piece.finish_reason)
        self.logprobs.extend(piece.logprobs)

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


# -- logprobs --------------------------------------------------------------------------------------------------
def _token_entries(entry: dict) -> tuple[tuple[str, float], list[tuple[str, float]]]:
    """(sampled token, logprob) and all candidates best first; the model lists the sampled token first."""
    items = [(v.get("decoded_token") or "", float(v["logprob"])) for v in entry.values()]
    return items[0], sorted(items, key=lambda item: -item[1])


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(entries: list[dict], top_n: int) -> dict[str, Any]:
    content = []
    for entry in entries:
        (token, logprob), ranked = _token_entries(entry)
        top = [{"token": t, "logprob": lp, "bytes": _bytes(t)} for t, lp in ranked[:top_n]]
        content.append({"token": token, "logprob": logprob, "bytes": _bytes(token), "top_logprobs": top})
    return {"content": content, "refusal": None}


def completion_logprobs(entries: list[dict], top_n: int, offset: int = 0) -> dict[str, Any]:
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for entry in entries:
        (token, logprob), ranked = _token_entries(entry)
        out["tokens"].append(token)
        out["token_logprobs"].append(logprob)
        out["top_logprobs"].append(dict(ranked[:top_n]))
        out["text_offset"].append(offset)
        offset += len(token)
    return out


def _logprobs(call: GenerationCall, entries: list[dict], offset: int = 0) -> dict[str, Any] | None:
    if call.logprobs is None:
        return None
    if call.kind == "chat":
        return chat_logprobs(entries, call.logprobs)
    return completion_logprobs(entries, call.logprobs, offset)


# -- whole responses -------------------------------------------------------------------------------------------
def response(answer: Answer) -> dict[str, Any]:
    call = answer.call
    text = "".join(answer.text)
    if call.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                  "logprobs": _logprobs(call, answer.logprobs), "finish_reason": answer.finish_reason}
        obj = "chat.completion"
    else:
        prefix = call.prompt if call.echo else ""
        choice = {"index": 0, "text": (prefix or "") + text,
                  "logprobs": _logprobs(call, answer.logprobs, len(prefix or "")),
                  "finish_reason": answer.finish_reason}
        obj = "text_completion"
    return {"id": answer.id, "object": obj, "created": answer.created, "model": call.model,
            "system_fingerprint": None, "choices": [choice], "usage": answer.usage()}


# -- stream chunks ---------------------------------------------------------------------------------------------
def _chunk(answer: Answer, choices: list[dict]) -> dict[str, Any]:
    call = answer.call
    obj = "chat.completion.chunk" if call.kind == "chat" else "text_completion"
    chunk = {"id": answer.id, "object": obj, "created": answer.created, "model": call.model,
             "system_fingerprint": None, "choices": choices}
    if call.include_usage:
        chunk["usage"] = None
    return chunk


def first_chunk(answer: Answer) -> dict[str, Any] | None:
    """Chat opens with the role; an echoed completion opens with the prompt."""
    call = answer.call
    if call.kind == "chat":
        delta = {"role": "assistant", "content": ""}
        return _chunk(answer, [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
    if call.echo and call.prompt:
        return _chunk(answer, [{"index": 0, "text": call.prompt, "logprobs": None, "finish_reason": None}])
    return None


def text_chunk(answer: Answer, piece: Piece, offset: int) -> dict[str, Any] | None:
    """A chunk for the new text of `piece` (None when it has neither text nor logprobs)."""
    if not piece.text and not (piece.logprobs and answer.call.logprobs is not None):
        return None
    logprobs = _logprobs(answer.call, piece.logprobs, offset)
    if answer.call.kind == "chat":
        choice = {"index": 0, "delta": {"content": piece.text}, "logprobs": logprobs, "finish_reason": None}
    else:
        choice = {"index": 0, "text": piece.text, "logprobs": logprobs, "finish_reason": None}
    return _chunk(answer, [choice])


def finish_chunk(answer: Answer) -> dict[str, Any]:
    if answer.call.kind == "chat":
        choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": answer.finish_reason}
    else:
        choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": answer.finish_reason}
    return _chunk(answer, [choice])


def usage_chunk(answer: Answer) -> dict[str, Any]:
    chunk = _chunk(answer, [])
    chunk["usage"] = answer.usage()
    return chunk
