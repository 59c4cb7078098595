"""OpenAI request bodies -> one call of the Triton model, checked field by field.

Each bad field becomes a 400 in OpenAI's error body with `param` naming it. Fields the model checks itself (ranges
of top_k, min_p, seed, the stop-string limits, ...) are passed on: its INVALID_ARGUMENT names the field and
errors.from_triton turns it into the same 400. Fields that would change the answer but that we cannot honour
(tools, response_format json, logit_bias, best_of > 1, ...) are refused rather than dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llm_client.openai_server.errors import OpenAIError, invalid, unsupported

MAX_TOP_LOGPROBS = 20
MAX_N = 128  # OpenAI's limit on `n`
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Accepted and ignored: they do not change the answer (user: "a stable identifier for your end-users").
IGNORED = {"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
           "prompt_cache_retention", "parallel_tool_calls"}
# vLLM-style extensions (the openai SDK sends them through extra_body): the model validates them.
EXTENSIONS = ("top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
              "skip_special_tokens")
# Refused unless given their neutral value.
NEUTRAL = {"tools": (None, []), "tool_choice": (None, "none", "auto"), "functions": (None, []),
           "function_call": (None, "none", "auto"), "logit_bias": (None, {}), "audio": (None,),
           "modalities": (None, ["text"]), "prediction": (None,), "web_search_options": (None,),
           "reasoning_effort": (None,), "verbosity": (None,), "suffix": (None, ""),
           "response_format": (None, {"type": "text"}), "prompt_cache_options": (None,)}
COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop",
          "presence_penalty", "frequency_penalty", "n", "logprobs"} | IGNORED | set(EXTENSIONS)
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens", "top_logprobs"} | (set(NEUTRAL) - {"suffix"})
COMPLETION_FIELDS = COMMON | {"prompt", "echo", "best_of", "suffix", "logit_bias"}


@dataclass
class GenerationCall:
    """What one OpenAI request asks of the Triton model, and how to answer it."""

    kind: str  # "chat" | "completion"
    model: str
    params: dict[str, Any]  # -> the `sampling_parameters` JSON tensor
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # None: off; else how many alternatives per token
    echo: bool = False
    n: int = 1  # choices, each with its own seeded stream; the prompt is computed once
    renames: dict[str, str] = field(default_factory=dict)  # the model's field name -> the param the client sent


# -- field checks ----------------------------------------------------------------------------------------------
def _number(body: dict, key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(key, f"expected a number, got {type(value).__name__}", "invalid_type")
    if not lo <= value <= hi:
        raise invalid(key, f"must be between {lo:g} and {hi:g}, got {value}")
    return value


def _integer(body: dict, key: str, lo: int | None = None, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(key, f"expected an integer, got {type(value).__name__}", "invalid_type")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise invalid(key, f"must be {bounds}, got {value}")
    return value


def _boolean(body: dict, key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise invalid(key, f"expected a boolean, got {type(value).__name__}", "invalid_type")
    return value


def _stop(body: dict) -> list[str] | None:
    value = body.get("stop")
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    raise invalid("stop", "expected a string, an array of strings or null", "invalid_type")


def _check_fields(body: dict, allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise OpenAIError(f"Unrecognized request argument supplied: {key}", param=key, code="unknown_parameter")
    for key, neutral in NEUTRAL.items():
        if key in body and body[key] not in neutral:
            raise unsupported(key)


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", "a model name (string) is required", "missing_required_parameter")
    return model


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = bool(_boolean(body, "stream"))
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise invalid("stream_options", "only allowed when 'stream' is true")
    if not isinstance(options, dict):
        raise invalid("stream_options", "expected an object", "invalid_type")
    for key in options:
        if key not in ("include_usage", "include_obfuscation"):
            raise OpenAIError(f"Unrecognized stream option: {key}", param=f"stream_options.{key}",
                              code="unknown_parameter")
    return stream, bool(_boolean(options, "include_usage"))


def _choices(body: dict, params: dict[str, Any]) -> int:
    """`n`, forwarded to the model (which samples choice i from seed + i)."""
    n = _integer(body, "n", 1, MAX_N) or 1
    if n > 1:
        params["n"] = n
    return n


def _no_best_of(body: dict) -> None:
    if _integer(body, "best_of", 1) not in (None, 1):
        raise invalid("best_of", f"only 1 is supported, got {body['best_of']} (no server-side ranking of "
                      "candidates); use n for several answers")


def _sampling(body: dict) -> dict[str, Any]:
    """The sampling keys both endpoints share, checked against OpenAI's ranges."""
    params: dict[str, Any] = {
        "temperature": _number(body, "temperature", 0, 2),
        "top_p": _number(body, "top_p", 0, 1),
        "presence_penalty": _number(body, "presence_penalty", -2, 2),
        "frequency_penalty": _number(body, "frequency_penalty", -2, 2),
        "seed": _integer(body, "seed"),
        "stop": _stop(body),
    }
    for key in EXTENSIONS:
        params[key] = body.get(key)
    return {k: v for k, v in params.items() if v is not None}


def _max_tokens(body: dict, keys: tuple[str, ...]) -> tuple[int | None, str]:
    """The output budget and the field it came from (so the model's complaint names that field)."""
    given = [(k, _integer(body, k, 1)) for k in keys if body.get(k) is not None]
    if len({v for _, v in given}) > 1:
        raise invalid(given[0][0], f"conflicts with '{given[1][0]}'; send one of them")
    return (given[0][1], given[0][0]) if given else (None, keys[0])


# -- chat ------------------------------------------------------------------------------------------------------
def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"messages[{i}].content[{j}]", "only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(f"messages[{i}].content", "expected a string or an array of text parts", "invalid_type")


def _message(message: Any, i: int) -> dict[str, str]:
    if not isinstance(message, dict):
        raise invalid(f"messages[{i}]", "expected an object with 'role' and 'content'", "invalid_type")
    role = message.get("role")
    if role in ("tool", "function"):
        raise unsupported(f"messages[{i}].role", f"'{role}' is not supported (this server has no tool calling)")
    if role not in ROLES:
        raise invalid(f"messages[{i}].role", f"unknown role {role!r}; supported: {', '.join(ROLES)}")
    if message.get("tool_calls") or message.get("function_call"):
        raise unsupported(f"messages[{i}].tool_calls")
    return {"role": ROLES[role], "content": _content(message, i)}


def parse_chat(body: Any) -> GenerationCall:
    if not isinstance(body, dict):
        raise OpenAIError("the request body must be a JSON object", code="invalid_type")
    _check_fields(body, CHAT_FIELDS)
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "a non-empty array of messages is required", "missing_required_parameter")
    parsed = [_message(m, i) for i, m in enumerate(messages)]
    stream, include_usage = _stream_flags(body)
    params = _sampling(body)
    n = _choices(body, params)
    max_tokens, source = _max_tokens(body, ("max_completion_tokens", "max_tokens"))
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    want = _boolean(body, "logprobs")
    top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not want:
        raise invalid("top_logprobs", "requires 'logprobs' to be true")
    logprobs = (top or 0) if want else None
    if logprobs is not None:
        params["logprobs"] = logprobs
    renames = {"max_tokens": source, "logprobs": "top_logprobs"}
    return GenerationCall("chat", model, params, messages=parsed, stream=stream, include_usage=include_usage,
                          logprobs=logprobs, n=n, renames=renames)


# -- completions -----------------------------------------------------------------------------------------------
def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise invalid("prompt", "one prompt per request is supported for now, got an array of several")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (int, list)) for p in prompt):
        raise unsupported("prompt", "as token ids is not supported; send text")
    raise invalid("prompt", "a string is required", "missing_required_parameter" if prompt is None else "invalid_type")


def parse_completion(body: Any) -> GenerationCall:
    if not isinstance(body, dict):
        raise OpenAIError("the request body must be a JSON object", code="invalid_type")
    _check_fields(body, COMPLETION_FIELDS)
    model = _model(body)
    prompt = _prompt(body)
    _no_best_of(body)
    stream, include_usage = _stream_flags(body)
    params = _sampling(body)
    n = _choices(body, params)
    max_tokens, _ = _max_tokens(body, ("max_tokens",))
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    logprobs = _integer(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    if logprobs is not None:
        params["logprobs"] = logprobs
    return GenerationCall("completion", model, params, prompt=prompt, stream=stream, include_usage=include_usage,
                          logprobs=logprobs, echo=bool(_boolean(body, "echo")), n=n, renames={"text_input": "prompt"})
