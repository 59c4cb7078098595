"""A thin client for the `llm` model: gRPC streaming (tritonclient) and HTTP generate / generate_stream.

Sampling parameters travel as the `sampling_parameters` JSON tensor, so every key the server knows works
here without client changes.
"""

from __future__ import annotations

import json
import queue
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


class ServerUnreachable(ConnectionError):
    pass


class RequestError(RuntimeError):
    """The server answered the request with an error (its message names the field and the reason)."""

    @property
    def retryable(self) -> bool:
        # Stream errors reach tritonclient without their status code, so the server marks overload and
        # draining (a replica shutting down: another one behind the load balancer will answer) in the text.
        text = str(self)
        marked = "server overloaded" in text or "(draining)" in text
        return marked or getattr(self, "status", None) in ("StatusCode.UNAVAILABLE", 503)


@dataclass
class Chunk:
    """One response of the model. `text`, `finish_reason` and `num_output_tokens` are choice 0's; with the `n`
    sampling parameter the lists hold every choice's (one entry per choice, as vllm_backend returns them)."""

    text: str
    final: bool = False
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)  # None: that choice still runs
    output_token_counts: list[int] = field(default_factory=list)


@dataclass
class Choice:
    """One of the n answers to a request: its whole text, why it ended and its generated tokens."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    num_output_tokens: int = 0


@dataclass
class Result:
    """`text`, `finish_reason` and `num_output_tokens` are choice 0's; `choices` holds all n."""

    text: str
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int = 0
    chunks: list[Chunk] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)


def collect(chunks: list[Chunk]) -> Result:
    """The whole answer from a request's chunks (streamed: each choice's pieces joined; unary: one chunk)."""
    choices: list[Choice] = []
    for chunk in chunks:
        for i, text in enumerate(chunk.texts):
            if i == len(choices):
                choices.append(Choice(i))
            c = choices[i]
            c.text += text
            c.num_output_tokens += chunk.output_token_counts[i] if i < len(chunk.output_token_counts) else 0
            if i < len(chunk.finish_reasons) and chunk.finish_reasons[i] is not None:
                c.finish_reason = chunk.finish_reasons[i]
    first = choices[0] if choices else Choice(0)
    n_in = next((c.num_input_tokens for c in chunks if c.num_input_tokens is not None), None)
    return Result(first.text, first.finish_reason, n_in, first.num_output_tokens, chunks, choices)


def _unreachable(url: str, exc: Exception) -> ServerUnreachable:
    return ServerUnreachable(f"cannot reach the Triton server at {url} ({exc}). Is it running? Start it with "
                             "`python -m llmserve.launch serve`, or pass --url.")


FLAGS = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")


def build_inputs(prompt: str | None, messages: list | None, stream: bool, params: dict, flags: tuple[str, ...] = FLAGS,
                 errors: str = "strict") -> dict[str, np.ndarray]:
    """The model's input arrays; `errors`: how text is encoded to UTF-8 (str.encode's argument)."""
    def text(value: str) -> np.ndarray:
        return np.array([value.encode("utf-8", errors)], dtype=np.object_)

    inputs: dict[str, np.ndarray] = {}
    if messages is not None:
        inputs["messages"] = text(json.dumps(messages))
    else:
        inputs["text_input"] = text(prompt or "")
    inputs["stream"] = np.array([stream])
    inputs["exclude_input_in_output"] = np.array([True])
    inputs["sampling_parameters"] = text(json.dumps(params))
    for flag in flags:
        inputs[flag] = np.array([True])
    return inputs


def _decode(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _chunk_from_outputs(get) -> Chunk:
    def every(name, cast) -> list:
        value = get(name)
        return [] if value is None else [cast(v) for v in value.reshape(-1)]

    texts = every("text_output", _decode) or [""]
    # vllm_backend writes str(None) for a choice that is still running
    reasons = [None if r == "None" else r for r in every("finish_reason", _decode)]
    counts = every("num_output_tokens", int)
    n_in = every("num_input_tokens", int)
    return Chunk(texts[0], finish_reason=reasons[0] if reasons else None, num_input_tokens=n_in[0] if n_in else None,
                 num_output_tokens=counts[0] if counts else None, texts=texts, finish_reasons=reasons,
                 output_token_counts=counts)


class LLMClient:
    """`retries`: how often an overloaded server (UNAVAILABLE) is asked again, with exponential backoff from
    `backoff_s` up to `max_backoff_s` and full jitter, so clients refused together do not return together."""

    def __init__(self, url: str = "localhost:8001", model: str = "llm", protocol: str = "grpc", retries: int = 3,
                 backoff_s: float = 0.25, max_backoff_s: float = 8.0):
        if protocol not in ("grpc", "http"):
            raise ValueError("protocol must be grpc or http")
        self.url, self.model, self.protocol = url, model, protocol
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.retried = 0

    def stream(self, prompt: str | None = None, messages: list | None = None, **params) -> Iterator[Chunk]:
        yield from self._with_retries(prompt, messages, params, stream=True)

    def _with_retries(self, prompt, messages, params, stream: bool) -> Iterator[Chunk]:
        send = self._http if self.protocol == "http" else self._grpc
        for attempt in range(self.retries + 1):
            started = False
            try:
                for chunk in send(prompt, messages, params, stream=stream):
                    started = True
                    yield chunk
                return
            except RequestError as exc:
                # Retry only before any text reached the caller: a half-streamed answer cannot be replayed.
                if started or not exc.retryable or attempt == self.retries:
                    raise
                self.retried += 1
                time.sleep(random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt)))

    def generate(self, prompt: str | None = None, messages: list | None = None, stream: bool = False,
                 **params) -> Result:
        """The whole answer; with `n=...` among the params, `Result.choices` holds every choice."""
        return collect(list(self._with_retries(prompt, messages, params, stream=stream)))

    # -- gRPC ------------------------------------------------------------------------------------------------
    def _grpc(self, prompt, messages, params, stream: bool) -> Iterator[Chunk]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        client = grpcclient.InferenceServerClient(self.url)
        responses: queue.SimpleQueue = queue.SimpleQueue()
        tensors = []
        for name, value in build_inputs(prompt, messages, stream, params).items():
            t = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            t.set_data_from_numpy(value)
            tensors.append(t)
        finished = False
        try:
            # One stream per request: stop_stream(cancel_requests=True) then cancels only this one.
            client.start_stream(callback=lambda result, error: responses.put((result, error)))
            client.async_stream_infer(self.model, tensors, enable_empty_final_response=True)
            while True:
                result, error = responses.get()
                if error is not None:
                    if not live(client):  # the stream failed because nothing listens there
                        raise _unreachable(self.url, error)
                    raise _grpc_error(self.url, error)
                params_ = result.get_response().parameters
                final = params_["triton_final_response"].bool_param if "triton_final_response" in params_ else False
                if result.get_response().outputs:
                    chunk = _chunk_from_outputs(result.as_numpy)
                    chunk.final = final
                    yield chunk
                if final:
                    finished = True
                    return
        except InferenceServerException as exc:
            if not live(client):
                raise _unreachable(self.url, exc) from None
            raise _grpc_error(self.url, exc) from None
        finally:
            try:
                client.stop_stream(cancel_requests=not finished)
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead channel is not the caller's problem
                pass

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _http(self, prompt, messages, params, stream: bool) -> Iterator[Chunk]:
        body: dict = {"stream": stream, "exclude_input_in_output": True, "sampling_parameters": json.dumps(params),
                      "return_finish_reason": True, "return_num_input_tokens": True, "return_num_output_tokens": True}
        if messages is not None:
            body["messages"] = json.dumps(messages)
        else:
            body["text_input"] = prompt or ""
        route = "generate_stream" if stream else "generate"
        url = f"http://{self.url}/v2/models/{self.model}/{route}"
        req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            resp = urllib.request.urlopen(req, timeout=600)
        except urllib.error.HTTPError as exc:
            err = RequestError(_http_error_text(exc.read()))
            err.status = exc.code
            raise err from None
        except (urllib.error.URLError, ConnectionError) as exc:
            raise _unreachable(self.url, exc) from None
        with resp:
            if not stream:
                yield _json_chunk(json.loads(resp.read()), final=True)
                return
            for line in resp:
                line = line.strip()
                if line.startswith(b"data:"):
                    yield _json_chunk(json.loads(line[5:]), final=False)


def live(client) -> bool:
    try:
        return bool(client.is_server_live())
    except Exception:  # noqa: BLE001 - any failure to ask means we cannot reach it
        return False


def _json_chunk(obj: dict, final: bool) -> Chunk:
    if "error" in obj:
        raise RequestError(obj["error"])

    def get(name):
        return None if name not in obj else np.array([obj[name]]).reshape(-1)

    chunk = _chunk_from_outputs(get)
    chunk.final = final or bool(chunk.finish_reasons) and None not in chunk.finish_reasons  # every choice ended
    return chunk


def _http_error_text(body: bytes) -> str:
    try:
        return json.loads(body).get("error", body.decode())
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace")


def _grpc_error(url: str, exc) -> Exception:
    text = str(exc)
    if "StatusCode.UNAVAILABLE" in text and ("connect" in text.lower() or "Socket closed" in text):
        return _unreachable(url, exc)
    msg = exc.message() if hasattr(exc, "message") and callable(exc.message) else text
    err = RequestError(msg)
    err.status = exc.status() if hasattr(exc, "status") and callable(exc.status) else None
    return err
