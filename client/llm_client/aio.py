"""asyncio client over tritonclient.grpc.aio: `async for chunk in client.stream(...)`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from llm_client.client import Chunk, Result, _chunk_from_outputs, _grpc_error, build_inputs, collect


class AsyncLLMClient:
    def __init__(self, url: str = "localhost:8001", model: str = "llm"):
        self.url, self.model = url, model

    async def stream(self, prompt: str | None = None, messages: list | None = None, stream: bool = True,
                     **params) -> AsyncIterator[Chunk]:
        import tritonclient.grpc.aio as aioclient
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        tensors = []
        for name, value in build_inputs(prompt, messages, stream, params).items():
            t = aioclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            t.set_data_from_numpy(value)
            tensors.append(t)

        async def requests():
            yield {"model_name": self.model, "inputs": tensors, "enable_empty_final_response": True}

        async with aioclient.InferenceServerClient(self.url) as client:
            try:
                async for result, error in client.stream_infer(inputs_iterator=requests()):
                    if error is not None:
                        raise _grpc_error(self.url, error)
                    response = result.get_response()
                    final = response.parameters["triton_final_response"].bool_param
                    if response.outputs:
                        chunk = _chunk_from_outputs(result.as_numpy)
                        chunk.final = final
                        yield chunk
                    if final:
                        return
            except InferenceServerException as exc:
                raise _grpc_error(self.url, exc) from None

    async def generate(self, prompt: str | None = None, messages: list | None = None, stream: bool = False,
                       **params) -> Result:
        return collect([c async for c in self.stream(prompt, messages, stream=stream, **params)])
