"""Client for the `llm` Triton model: sync and asyncio APIs, and the `llm` command."""

from llm_client.aio import AsyncLLMClient
from llm_client.client import Choice, Chunk, LLMClient, RequestError, Result, ServerUnreachable

__all__ = ["AsyncLLMClient", "Choice", "Chunk", "LLMClient", "RequestError", "Result", "ServerUnreachable"]
