"""OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, and the mapping of Triton's errors onto it.

The model names the field first in its INVALID_ARGUMENT text (`top_p: must be in (0, 1], got 1.5`), marks overload
as `server overloaded: ...` and a replica shutting down as `(draining)`; gRPC stream errors carry no status code, so
the text is all there is to go on (as in llm_client.client.RequestError.retryable).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from starlette.responses import Response

# Triton input and sampling-parameter names -> the OpenAI request field a client sent them as.
TRITON_TO_OPENAI = {"text_input": "prompt", "messages": "messages", "stop_words": "stop", "random_seed": "seed",
                    "sampling_parameters": None, "exclude_input_in_output": "echo"}
_FIELD = re.compile(r"^\s*(?:\[StatusCode\.\w+\]\s*)?([A-Za-z_][A-Za-z0-9_.\[\]]*): ")
RETRY_AFTER_S = 1
# Fields the model may name in an INVALID_ARGUMENT (its input tensors and sampling keys); any other text is a 500.
REQUEST_FIELDS = {"text_input", "messages", "stream", "sampling_parameters", "exclude_input_in_output", "max_tokens",
                  "min_tokens", "min_length", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                  "presence_penalty", "frequency_penalty", "seed", "random_seed", "stop", "stop_words",
                  "stop_token_ids", "ignore_eos", "logprobs", "skip_special_tokens", "n", "best_of"}


@dataclass
class OpenAIError(Exception):
    message: str
    status: int = 400
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after: int | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        # ASCII JSON: a message quoting the client's input stays sendable even if that held a lone surrogate
        return Response(json.dumps(self.body()), self.status, headers, media_type="application/json")


def invalid(param: str, reason: str, code: str | None = None) -> OpenAIError:
    """400 naming the field, worded as OpenAI words its own (`'n': only 1 is supported`)."""
    return OpenAIError(f"'{param}': {reason}", param=param, code=code or "invalid_value")


def unsupported(param: str, reason: str = "is not supported by this server") -> OpenAIError:
    return OpenAIError(f"'{param}' {reason}", param=param, code="unsupported_parameter")


def overloaded(message: str) -> OpenAIError:
    return OpenAIError(message, status=503, type="server_error", code="server_overloaded", retry_after=RETRY_AFTER_S)


def unreachable(url: str, detail: str) -> OpenAIError:
    return OpenAIError(f"cannot reach the Triton server at {url}: {detail}", status=503, type="server_error",
                       code="backend_unavailable", retry_after=RETRY_AFTER_S)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(f"The model `{model}` does not exist.", status=404, param="model", code="model_not_found")


def from_triton(text: str, renames: dict[str, str] | None = None) -> OpenAIError:
    """An error the Triton model answered with, as OpenAI's: 400 naming the field, 503 + Retry-After on overload."""
    if "server overloaded" in text or "(draining)" in text:
        return overloaded(text)
    match = _FIELD.match(text)
    field = match.group(1) if match else None
    if field is None or field not in REQUEST_FIELDS:
        return OpenAIError(text, status=500, type="server_error", code="backend_error")
    param = (renames or {}).get(field, TRITON_TO_OPENAI.get(field, field))
    return OpenAIError(f"'{param or field}': {text[match.end():]}", param=param, code="invalid_value")
