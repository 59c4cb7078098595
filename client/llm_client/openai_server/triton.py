"""The Triton side: one gRPC stream per OpenAI request, over one shared asyncio channel.

Triton stays the serving core: the request goes to the decoupled `llm` model with its vllm_backend-style inputs, and
every answer comes back over gRPC streaming. Cancelling the call (a client that went away) makes Triton cancel the
request, and the model frees its KV blocks at the next engine step.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import grpc
import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, triton_to_np_dtype

from llm_client.client import FLAGS, build_inputs
from llm_client.openai_server.errors import OpenAIError, from_triton, unreachable
from llm_client.openai_server.schema import GenerationCall


@dataclass
class Piece:
    """One response of the model, per choice (its `text_output` holds one entry per choice, as vllm_backend's
    does): new text (the whole text when not streaming) and what came with it."""

    texts: list[str]
    final: bool = False
    finish_reasons: list[str | None] = field(default_factory=list)  # None: that choice still runs
    num_input_tokens: int | None = None
    num_output_tokens: list[int] = field(default_factory=list)
    logprobs: list[list[dict]] = field(default_factory=list)  # per token: {token_id: {logprob, decoded_token}}


_DATATYPES = {np.dtype(np.bool_): "BOOL", np.dtype(np.object_): "BYTES"}


def _raw(value: np.ndarray) -> bytes:
    """A tensor's raw contents as Triton's gRPC protocol carries them (BYTES: tritonclient's serialization)."""
    return serialize_byte_tensor(value).item() if value.dtype == np.object_ else value.tobytes()


def build_request(call: GenerationCall, request_id: str, model: str) -> service_pb2.ModelInferRequest:
    """The model's request, built straight into the protobuf message (the bytes tritonclient's InferInput and
    request builder give, without their per-tensor objects: this is on every request's path)."""
    flags = FLAGS + (("return_logprobs",) if call.logprobs is not None else ())
    # surrogatepass: a lone surrogate reaches the model, which refuses it naming the field (a 400, not a 500)
    inputs = build_inputs(call.prompt, call.messages, call.stream, call.params, flags, errors="surrogatepass")
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, value in inputs.items():
        request.inputs.add(name=name, datatype=_DATATYPES[value.dtype], shape=value.shape)
        request.raw_input_contents.append(_raw(value))
    return request


_LENGTH = struct.Struct("<I")
_INTS = {"INT32": "i", "UINT32": "I", "INT64": "q", "UINT64": "Q"}  # memoryview formats (native order, as numpy's)


def _strings(raw: bytes) -> list[bytes]:
    """A BYTES tensor's elements: each is a 4-byte little-endian length, then that many bytes."""
    out, offset, end = [], 0, len(raw)
    while offset < end:
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        out.append(raw[offset:offset + size])
        offset += size
    return out


def _outputs(response: service_pb2.ModelInferResponse) -> dict[str, list]:
    """Every output tensor of a response, flattened, in one pass over the raw contents (what `as_numpy` per name
    gives, without a scan of the outputs and a numpy array per tensor on every streamed token)."""
    outputs, raws = list(response.outputs), list(response.raw_output_contents)
    if len(raws) < len(outputs):  # not all sent as raw contents: tritonclient's own conversion
        result = InferResult(response)
        return {o.name: [] if (v := result.as_numpy(o.name)) is None else list(v.reshape(-1)) for o in outputs}
    out: dict[str, list] = {}
    for output, raw in zip(outputs, raws):
        datatype = output.datatype
        if datatype == "BYTES":
            out[output.name] = _strings(raw)
        elif datatype in _INTS:
            out[output.name] = memoryview(raw).cast(_INTS[datatype]).tolist()
        else:
            out[output.name] = np.frombuffer(raw, dtype=triton_to_np_dtype(datatype)).tolist()
    return out


def _decode(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def piece_from(response: service_pb2.ModelInferResponse, final: bool) -> Piece:
    outputs = _outputs(response)
    texts = [_decode(t) for t in outputs.get("text_output", ())]
    n = len(texts)
    # vllm_backend writes str(None) for a choice that has not finished
    reasons = [None if r == "None" else r for r in map(_decode, outputs.get("finish_reason", ()))] or [None] * n
    n_in = outputs.get("num_input_tokens")
    n_out = [int(v) for v in outputs.get("num_output_tokens", ())] or [0] * n
    logprobs = [json.loads(_decode(v)) or [] for v in outputs.get("logprobs", ())] or [[] for _ in range(n)]
    return Piece(texts, final, reasons, int(n_in[0]) if n_in else None, n_out, logprobs)


class TritonBackend:
    """The shared channel to Triton. `generate` yields the model's responses for one request."""

    def __init__(self, url: str, model: str = "llm"):
        self.url, self.model = url, model
        self._client: aioclient.InferenceServerClient | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None

    @property
    def client(self) -> aioclient.InferenceServerClient:
        if self._client is None:  # made lazily, inside the serving event loop
            self._client = aioclient.InferenceServerClient(self.url)
        return self._client

    @property
    def stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        """The gRPC stub on the client's channel: the generation streams skip tritonclient's per-call wrappers
        (a task to consume a request iterator, the result objects), which every request paid for in the front."""
        if self._stub is None:
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self.client._channel)
        return self._stub

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = self._stub = None

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_model_ready(self.model))
        except (InferenceServerException, grpc.RpcError):
            return False

    async def generate(self, call: GenerationCall, request_id: str) -> AsyncGenerator[Piece, None]:
        request = build_request(call, request_id, self.model)
        stream = self.stub.ModelStreamInfer()
        finished = False
        try:
            await stream.write(request)
            await stream.done_writing()
            async for message in stream:
                if message.error_message:
                    finished = True  # the model already answered this request
                    raise from_triton(message.error_message, call.renames)
                response = message.infer_response
                final = response.parameters["triton_final_response"].bool_param
                if response.outputs:
                    yield piece_from(response, final)
                if final:
                    finished = True
                    return
            raise OpenAIError("Triton closed the stream without a final response", 502, "server_error")
        except grpc.RpcError as exc:
            raise _rpc_error(self.url, exc) from None
        finally:
            if not finished:  # the client went away, or Triton failed: Triton cancels the request
                stream.cancel()


def _rpc_error(url: str, exc: grpc.RpcError) -> OpenAIError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return unreachable(url, details or "unavailable")
    return from_triton(f"[{code}] {details}")
