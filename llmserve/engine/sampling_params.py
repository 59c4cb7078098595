"""Per-request sampling parameters: parsing, coercion and validation.

Values may arrive as JSON numbers, strings ("0.7", as vllm_backend's sample client sends) or Triton
scalars. Every failure raises `InvalidRequest` naming the field, so the adapter can answer with a
per-request INVALID_ARGUMENT instead of a log line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_TOKENS = 256  # documented in README: vLLM's 16 truncates chat answers, TRT-LLM has none.
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_LOGPROBS = 20
MAX_SEED = 2**63 - 1
MAX_N = 128  # OpenAI's limit on `n`


class InvalidRequest(ValueError):
    """A request field is missing, mistyped or out of range. The message names the field."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason

    def __reduce__(self):  # crosses the engine process's pipe (the default pickles one argument, not two)
        return InvalidRequest, (self.field, self.reason)


@dataclass
class SamplingParams:
    max_tokens: int = DEFAULT_MAX_TOKENS
    min_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; 0: sampled token only; n: plus top-n alternatives
    skip_special_tokens: bool = True
    n: int = 1  # choices: sequences sampled from one prompt, which is computed once

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidRequest(name, f"expected an integer, got boolean {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise InvalidRequest(name, f"expected an integer, got {value!r}")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise InvalidRequest(name, f"expected an integer, got {value!r}") from None
    if hasattr(value, "item"):  # numpy scalar from a Triton tensor
        return _as_int(name, value.item())
    raise InvalidRequest(name, f"expected an integer, got {type(value).__name__}")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidRequest(name, f"expected a number, got boolean {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            raise InvalidRequest(name, f"expected a number, got {value!r}") from None
    elif hasattr(value, "item"):
        return _as_float(name, value.item())
    else:
        raise InvalidRequest(name, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(out):
        raise InvalidRequest(name, f"must be finite, got {value!r}")
    return out


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if hasattr(value, "item"):
        return _as_bool(name, value.item())
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise InvalidRequest(name, f"expected a boolean, got {value!r}")


def _as_str_list(name: str, value: Any) -> list[str]:
    if isinstance(value, (str, bytes)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise InvalidRequest(name, f"expected a string or a list of strings, got {type(value).__name__}")
    if len(value) > MAX_STOP_STRINGS:
        raise InvalidRequest(name, f"at most {MAX_STOP_STRINGS} entries, got {len(value)}")
    out = []
    for item in value:
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(name, "entries must be valid UTF-8") from None
        if not isinstance(item, str):
            raise InvalidRequest(name, f"entries must be strings, got {type(item).__name__}")
        if not item:
            raise InvalidRequest(name, "entries must not be empty")
        if len(item) > MAX_STOP_STRING_CHARS:
            raise InvalidRequest(name, f"entries must be at most {MAX_STOP_STRING_CHARS} characters")
        out.append(item)
    return out


def _as_int_list(name: str, value: Any) -> list[int]:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise InvalidRequest(name, f"expected a list of integers, got {type(value).__name__}")
    if len(value) > 64:
        raise InvalidRequest(name, f"at most 64 entries, got {len(value)}")
    return [_as_int(name, v) for v in value]


# Aliases used by the clients we must serve unchanged (TRT-LLM ensemble names, genai-perf, OpenAI).
ALIASES = {
    "min_length": "min_tokens",
    "random_seed": "seed",
    "stop_words": "stop",
    "max_new_tokens": "max_tokens",
    "runtime_top_k": "top_k",
    "runtime_top_p": "top_p",
    "num_return_sequences": "n",  # TensorRT-LLM's name
}
# Keys that clients send that do not change generation for a single sequence.
IGNORED_KEYS = {"best_of", "lora_name", "beam_width", "end_id", "pad_id", "use_beam_search", "length_penalty",
                "detokenize"}

_CONVERTERS = {
    "max_tokens": _as_int,
    "min_tokens": _as_int,
    "temperature": _as_float,
    "top_k": _as_int,
    "top_p": _as_float,
    "min_p": _as_float,
    "repetition_penalty": _as_float,
    "presence_penalty": _as_float,
    "frequency_penalty": _as_float,
    "seed": _as_int,
    "stop": _as_str_list,
    "stop_token_ids": _as_int_list,
    "ignore_eos": _as_bool,
    "logprobs": _as_int,
    "skip_special_tokens": _as_bool,
    "n": _as_int,
}
KNOWN_KEYS = set(_CONVERTERS) | set(ALIASES) | IGNORED_KEYS


def parse_sampling_params(raw: dict[str, Any], defaults: SamplingParams | None = None,
                          vocab_size: int | None = None, max_model_len: int | None = None) -> SamplingParams:
    """Builds validated SamplingParams from a client dict layered over `defaults`.

    Unknown keys are refused rather than dropped: a misspelt `temprature` silently ignored is the kind of
    bug users cannot see.
    """
    if not isinstance(raw, dict):
        raise InvalidRequest("sampling_parameters", f"expected a JSON object, got {type(raw).__name__}")
    params = dataclasses.replace(defaults) if defaults else SamplingParams()
    seen: set[str] = set()
    for key, value in raw.items():
        if not isinstance(key, str) or key not in KNOWN_KEYS:
            raise InvalidRequest(str(key), f"unknown sampling parameter; known: {', '.join(sorted(_CONVERTERS))}")
        name = ALIASES.get(key, key)
        if name in IGNORED_KEYS:
            _check_ignored(name, value)
            continue
        if name in seen:
            raise InvalidRequest(key, f"given twice (also as an alias of {name})")
        seen.add(name)
        if value is None:
            continue
        setattr(params, name, _CONVERTERS[name](key, value))
    validate(params, vocab_size=vocab_size, max_model_len=max_model_len)
    return params


def _check_ignored(name: str, value: Any) -> None:
    # Refuse what we would otherwise get wrong silently: server-side ranking of candidates, or beams.
    if name == "best_of" and value is not None and _as_int(name, value) != 1:
        raise InvalidRequest(name, "only 1 is supported (no server-side ranking of candidates); use n for "
                             "several answers")
    if name == "beam_width" and value is not None and _as_int(name, value) != 1:
        raise InvalidRequest(name, "only 1 is supported (beam search is not supported)")
    if name == "use_beam_search" and value is not None and _as_bool(name, value):
        raise InvalidRequest(name, "beam search is not supported")


def validate(p: SamplingParams, vocab_size: int | None = None, max_model_len: int | None = None) -> None:
    def check(ok: bool, name: str, reason: str) -> None:
        if not ok:
            raise InvalidRequest(name, reason)

    check(1 <= p.n <= MAX_N, "n", f"must be in [1, {MAX_N}], got {p.n}")
    check(p.max_tokens >= 1, "max_tokens", f"must be >= 1, got {p.max_tokens}")
    if max_model_len is not None:
        check(p.max_tokens <= max_model_len, "max_tokens", f"must be <= {max_model_len} (the model context)")
    check(p.min_tokens >= 0, "min_tokens", f"must be >= 0, got {p.min_tokens}")
    check(p.min_tokens <= p.max_tokens, "min_tokens", f"must be <= max_tokens ({p.max_tokens}), got {p.min_tokens}")
    check(0.0 <= p.temperature <= 100.0, "temperature", f"must be in [0, 100], got {p.temperature}")
    check(p.top_k >= 0 or p.top_k == -1, "top_k", f"must be >= 0 (0 or -1 = off), got {p.top_k}")
    if p.top_k == -1:
        p.top_k = 0
    check(0.0 < p.top_p <= 1.0, "top_p", f"must be in (0, 1], got {p.top_p}")
    check(0.0 <= p.min_p <= 1.0, "min_p", f"must be in [0, 1], got {p.min_p}")
    check(0.0 < p.repetition_penalty <= 10.0, "repetition_penalty", f"must be in (0, 10], got {p.repetition_penalty}")
    check(-2.0 <= p.presence_penalty <= 2.0, "presence_penalty", f"must be in [-2, 2], got {p.presence_penalty}")
    check(-2.0 <= p.frequency_penalty <= 2.0, "frequency_penalty", f"must be in [-2, 2], got {p.frequency_penalty}")
    if p.seed is not None:
        check(0 <= p.seed <= MAX_SEED, "seed", f"must be in [0, 2^63-1], got {p.seed}")
    if p.logprobs is not None:
        check(0 <= p.logprobs <= MAX_LOGPROBS, "logprobs", f"must be in [0, {MAX_LOGPROBS}], got {p.logprobs}")
    if vocab_size is not None:
        for t in p.stop_token_ids:
            check(0 <= t < vocab_size, "stop_token_ids", f"token id {t} outside the vocabulary [0, {vocab_size})")


def defaults_from_generation_config(gen: dict[str, Any]) -> SamplingParams:
    """Model defaults (generation_config.json). Greedy unless the model asks to sample."""
    p = SamplingParams()
    if gen.get("do_sample"):
        for key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
            if gen.get(key) is not None:
                setattr(p, key, _CONVERTERS[key](key, gen[key]))
    else:
        p.temperature = 0.0
        if gen.get("repetition_penalty") is not None:
            p.repetition_penalty = float(gen["repetition_penalty"])
    validate(p)
    return p


# The guide's "stable output" preset (section 6.2): temperature 0.5-0.7, top_k 20-50, repetition_penalty > 1.
STABLE_PRESET = {"temperature": 0.6, "top_k": 40, "top_p": 0.95, "repetition_penalty": 1.1}
