"""The model's responses -> OpenAI's objects: chat.completion, text_completion and their stream chunks."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from json.encoder import encode_basestring  # what the events' encoder (ensure_ascii=False) does to a str
from typing import Any

from llm_client.openai_server.schema import GenerationCall
from llm_client.openai_server.streaming import sse
from llm_client.openai_server.triton import Piece

FINISH_REASONS = {"stop": "stop", "length": "length"}


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


@dataclass
class Choice:
    """One of the n answers, accumulated over the model's responses."""

    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[dict] = field(default_factory=list)


@dataclass
class Answer:
    """Everything the model said for one request, accumulated over its responses."""

    call: GenerationCall
    id: str
    created: int = field(default_factory=lambda: int(time.time()))
    choices: list[Choice] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0  # over all choices, as OpenAI counts them
    templates: dict[int, tuple[str, str]] = field(default_factory=dict)  # text_event's, per choice

    def __post_init__(self) -> None:
        self.choices = self.choices or [Choice() for _ in range(self.call.n)]

    def add(self, piece: Piece) -> list[int]:
        """Takes a response; returns the choices it ended."""
        if piece.num_input_tokens is not None:
            self.prompt_tokens = piece.num_input_tokens
        self.completion_tokens += sum(piece.num_output_tokens)
        ended = []
        for i, (choice, text) in enumerate(zip(self.choices, piece.texts)):
            choice.text.append(text)
            choice.logprobs.extend(piece.logprobs[i] if i < len(piece.logprobs) else [])
            reason = piece.finish_reasons[i] if i < len(piece.finish_reasons) else None
            if reason is not None and choice.finish_reason is None:
                choice.finish_reason = FINISH_REASONS.get(reason, reason)
                ended.append(i)
        return ended

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
def _whole_choice(call: GenerationCall, index: int, c: Choice) -> dict[str, Any]:
    text = "".join(c.text)
    if call.kind == "chat":
        return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": _logprobs(call, c.logprobs), "finish_reason": c.finish_reason}
    prefix = (call.prompt or "") if call.echo else ""
    return {"index": index, "text": prefix + text, "logprobs": _logprobs(call, c.logprobs, len(prefix)),
            "finish_reason": c.finish_reason}


def response(answer: Answer) -> dict[str, Any]:
    call = answer.call
    obj = "chat.completion" if call.kind == "chat" else "text_completion"
    choices = [_whole_choice(call, i, c) for i, c in enumerate(answer.choices)]
    return {"id": answer.id, "object": obj, "created": answer.created, "model": call.model,
            "system_fingerprint": None, "choices": choices, "usage": answer.usage()}


# -- stream chunks ---------------------------------------------------------------------------------------------
def _chunk(answer: Answer, choices: list[dict]) -> dict[str, Any]:
    call = answer.call
    obj = "chat.completion.chunk" if call.kind == "chat" else "text_completion"
    chunk = {"id": answer.id, "object": obj, "created": answer.created, "model": call.model,
             "system_fingerprint": None, "choices": choices}
    if call.include_usage:
        chunk["usage"] = None
    return chunk


def first_chunks(answer: Answer) -> list[dict[str, Any]]:
    """Chat opens each choice with the role; an echoed completion opens each with the prompt."""
    call = answer.call
    if call.kind == "chat":
        delta = {"role": "assistant", "content": ""}
        return [_chunk(answer, [{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
                for i in range(call.n)]
    if call.echo and call.prompt:
        return [_chunk(answer, [{"index": i, "text": call.prompt, "logprobs": None, "finish_reason": None}])
                for i in range(call.n)]
    return []


def text_chunk(answer: Answer, piece: Piece, index: int, offset: int) -> dict[str, Any] | None:
    """A chunk for the new text of choice `index` in `piece` (None when it has neither text nor logprobs)."""
    text = piece.texts[index] if index < len(piece.texts) else ""
    entries = piece.logprobs[index] if index < len(piece.logprobs) else []
    if not text and not (entries and answer.call.logprobs is not None):
        return None
    logprobs = _logprobs(answer.call, entries, offset)
    if answer.call.kind == "chat":
        choice = {"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None}
    else:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}
    return _chunk(answer, [choice])


def text_event(answer: Answer, piece: Piece, index: int, offset: int) -> str:
    """text_chunk as a server-sent event ("" for no chunk). Without logprobs only the text changes from token to
    token: the choice's event is encoded once around a placeholder, then each token costs one string encode."""
    if answer.call.logprobs is not None:
        chunk = text_chunk(answer, piece, index, offset)
        return sse(chunk) if chunk is not None else ""
    text = piece.texts[index] if index < len(piece.texts) else ""
    if not text:
        return ""
    if index not in answer.templates:
        event = sse(text_chunk(answer, Piece(["\0"] * (index + 1)), index, offset))
        head, _, tail = event.rpartition(encode_basestring("\0"))  # the text is the event's last string
        answer.templates[index] = head, tail
    head, tail = answer.templates[index]
    return head + encode_basestring(text) + tail


def finish_chunk(answer: Answer, index: int) -> dict[str, Any]:
    reason = answer.choices[index].finish_reason
    if answer.call.kind == "chat":
        choice = {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
    else:
        choice = {"index": index, "text": "", "logprobs": None, "finish_reason": reason}
    return _chunk(answer, [choice])


def usage_chunk(answer: Answer) -> dict[str, Any]:
    chunk = _chunk(answer, [])
    chunk["usage"] = answer.usage()
    return chunk
