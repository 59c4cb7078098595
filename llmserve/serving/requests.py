"""The wire protocol of the Triton model: input tensors -> GenerateRequest, deltas -> output tensors.

Names and dtypes follow vllm_backend (text_input, stream, sampling_parameters, exclude_input_in_output,
return_* -> text_output, finish_reason, ...) so /generate, genai-perf `--backend vllm` and Triton's OpenAI
frontend work unchanged; TensorRT-LLM's scalar inputs (max_tokens, temperature, stop_words, ...) are
accepted too. Plain numpy in and out: model.py turns them into pb_utils tensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmserve.engine.sampling_params import KNOWN_KEYS, InvalidRequest, SamplingParams, parse_sampling_params
from llmserve.serving.api import Delta, GenerateRequest

# Scalar tensors that carry a sampling parameter (TensorRT-LLM ensemble names and ours).
SAMPLING_TENSORS = ("max_tokens", "min_tokens", "min_length", "temperature", "top_k", "top_p", "min_p",
                    "repetition_penalty", "presence_penalty", "frequency_penalty", "seed", "random_seed",
                    "stop_words", "stop_token_ids", "ignore_eos", "logprobs", "beam_width",
                    "num_return_sequences", "end_id", "pad_id", "length_penalty")
FLAG_TENSORS = ("stream", "exclude_input_in_output", "return_finish_reason", "return_cumulative_logprob",
                "return_logprobs", "return_num_input_tokens", "return_num_output_tokens")
TEXT_TENSORS = ("text_input", "messages", "sampling_parameters")
ALL_INPUTS = TEXT_TENSORS + FLAG_TENSORS + SAMPLING_TENSORS
LIST_TENSORS = ("stop_words", "stop_token_ids")


@dataclass
class ParsedRequest:
    request: GenerateRequest
    prompt_text: str | None
    stream: bool = False
    exclude_input_in_output: bool = True
    want: dict[str, bool] = field(default_factory=dict)


def _text(name: str, array: np.ndarray, limit: int) -> str:
    values = array.reshape(-1)
    if values.size != 1:
        raise InvalidRequest(name, f"expected one string, got {values.size} elements")
    raw = values[0]
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not isinstance(raw, (bytes, np.bytes_)):
        raise InvalidRequest(name, f"expected a BYTES/STRING tensor, got {array.dtype}")
    if len(raw) > limit:
        raise InvalidRequest(name, f"{len(raw)} bytes; the limit is {limit} (max_input_bytes)")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(name, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _scalar(name: str, array: np.ndarray) -> Any:
    values = array.reshape(-1)
    if name in LIST_TENSORS:
        if values.size > 64:
            raise InvalidRequest(name, f"at most 64 entries, got {values.size}")
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v.item() for v in values]
    if values.size != 1:
        raise InvalidRequest(name, f"expected a single value, got {values.size} elements")
    v = values[0]
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8", "replace")
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and not math.isfinite(v):
        raise InvalidRequest(name, f"must be finite, got {v}")
    return v


def parse_request(request_id: str, inputs: dict[str, np.ndarray], parameters: dict[str, Any],
                  defaults: SamplingParams, max_input_bytes: int, exclude_input_default: bool = True,
                  vocab_size: int | None = None, max_model_len: int | None = None) -> ParsedRequest:
    unknown = set(inputs) - set(ALL_INPUTS)
    if unknown:
        raise InvalidRequest(sorted(unknown)[0], "unknown input tensor")
    prompt = _text("text_input", inputs["text_input"], max_input_bytes) if "text_input" in inputs else None
    messages = None
    if "messages" in inputs:
        try:
            messages = json.loads(_text("messages", inputs["messages"], max_input_bytes))
        except json.JSONDecodeError as exc:
            raise InvalidRequest("messages", f"not valid JSON: {exc.msg}") from None
    if (prompt is None) == (messages is None):
        raise InvalidRequest("text_input", "send exactly one of text_input and messages")

    raw: dict[str, Any] = {}
    if "sampling_parameters" in inputs:
        text = _text("sampling_parameters", inputs["sampling_parameters"], 65536)
        try:
            raw = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidRequest("sampling_parameters", f"not valid JSON: {exc.msg} at char {exc.pos}") from None
        if not isinstance(raw, dict):
            raise InvalidRequest("sampling_parameters", f"expected a JSON object, got {type(raw).__name__}")
    for source in (_tensor_params(inputs), _request_params(parameters)):
        for key, value in source.items():
            if key in raw and raw[key] != value:
                raise InvalidRequest(key, f"given twice with different values ({raw[key]!r} and {value!r})")
            raw[key] = value

    flags = {name: bool(_scalar(name, inputs[name])) for name in FLAG_TENSORS if name in inputs}
    stream = flags.get("stream", False)
    exclude = flags.get("exclude_input_in_output", exclude_input_default)
    if stream and not exclude:
        raise InvalidRequest("exclude_input_in_output", "false is not supported with stream=true "
                             "(streamed responses carry only new text)")
    if flags.get("return_logprobs") or flags.get("return_cumulative_logprob"):
        raw.setdefault("logprobs", 0)
    params = parse_sampling_params(raw, defaults, vocab_size=vocab_size, max_model_len=max_model_len)
    want = {k: v for k, v in flags.items() if k.startswith("return_")}
    return ParsedRequest(GenerateRequest(request_id, params, prompt=prompt, messages=messages), prompt,
                         stream, exclude, want)


def _tensor_params(inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: _scalar(name, inputs[name]) for name in SAMPLING_TENSORS if name in inputs}


def _request_params(parameters: dict[str, Any]) -> dict[str, Any]:
    """Triton request parameters (scalars only): the fallback vllm_backend also reads."""
    out = {}
    for key, value in parameters.items():
        if key.startswith(("triton_", "_")) or key in ("headers", "priority", "timeout", "binary_data_output"):
            continue
        if key not in KNOWN_KEYS:
            raise InvalidRequest(key, "unknown request parameter")
        out[key] = value
    return out


@dataclass
class _ChoiceOut:
    """What one choice has produced and not yet sent (streaming), or all of it (unary)."""

    text: list[str] = field(default_factory=list)
    num_output_tokens: int = 0
    cumulative_logprob: float = 0.0
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None


class ResponseBuilder:
    """Turns a request's deltas into output tensors: when streaming, one response per batch of deltas with news,
    else one at the end. Every output holds one entry per choice (params.n), as vllm_backend's does: the text
    (streaming: new since the last response, possibly empty), the finish reason ("None" while that choice runs:
    vllm_backend's str(None); sent once some choice has ended), output tokens, logprobs; num_input_tokens once."""

    def __init__(self, parsed: ParsedRequest, tokenizer_decode=None):
        self.parsed = parsed
        self.decode = tokenizer_decode
        self.choices = [_ChoiceOut() for _ in range(parsed.request.params.n)]
        self.num_input_tokens = 0
        self.news = False  # streaming: something to send since the last response

    def add(self, deltas: list[Delta]) -> dict[str, np.ndarray] | None:
        """Takes the deltas of one batch (in order); returns the tensors of the response now due, if any."""
        for delta in deltas:
            self._take(delta)
        finished = bool(deltas) and deltas[-1].finished
        if not (finished or (self.parsed.stream and self.news)):
            return None
        tensors = self._tensors()
        if self.parsed.stream:
            self.news = False
            for c in self.choices:
                c.text, c.num_output_tokens, c.logprobs = [], 0, []
        return tensors

    def _take(self, delta: Delta) -> None:
        c = self.choices[delta.index]
        c.text.append(delta.text)
        c.num_output_tokens += len(delta.token_ids)
        c.logprobs.extend(self._logprob_entry(lp) for lp in delta.logprobs or [])
        c.cumulative_logprob += sum(lp.logprob for lp in delta.logprobs or [])
        if delta.finish_reason is not None:
            c.finish_reason = str(delta.finish_reason)
        self.num_input_tokens = delta.num_input_tokens
        self.news = self.news or bool(delta.text or delta.token_ids or delta.finish_reason is not None)

    def _logprob_entry(self, lp) -> dict:
        entry = {str(lp.token_id): {"logprob": lp.logprob, "rank": None,
                                    "decoded_token": self.decode([lp.token_id]) if self.decode else None}}
        for tid, val in lp.top.items():
            entry.setdefault(str(tid), {"logprob": val, "rank": None,
                                        "decoded_token": self.decode([tid]) if self.decode else None})
        return entry

    def _texts(self) -> list[bytes]:
        p = self.parsed
        prefix = p.prompt_text if not p.exclude_input_in_output and p.prompt_text is not None else ""
        return [(prefix + "".join(c.text)).encode("utf-8") for c in self.choices]

    def _tensors(self) -> dict[str, np.ndarray]:
        want, choices = self.parsed.want, self.choices
        out = {"text_output": np.array(self._texts(), dtype=np.object_)}
        if want.get("return_finish_reason") and any(c.finish_reason is not None for c in choices):
            out["finish_reason"] = np.array([str(c.finish_reason).encode() for c in choices], dtype=np.object_)
        if want.get("return_num_input_tokens"):
            out["num_input_tokens"] = np.array([self.num_input_tokens], dtype=np.uint32)
        if want.get("return_num_output_tokens"):
            out["num_output_tokens"] = np.array([c.num_output_tokens for c in choices], dtype=np.uint32)
        if want.get("return_cumulative_logprob"):
            out["cumulative_logprob"] = np.array([c.cumulative_logprob for c in choices], dtype=np.float32)
        if want.get("return_logprobs"):
            out["logprobs"] = np.array([json.dumps(c.logprobs).encode() for c in choices], dtype=np.object_)
        return out
