"""An OpenAI-compatible HTTP front for the `llm` Triton model: /v1/chat/completions, /v1/completions, /v1/models.

A client of Triton (gRPC streaming), never of the server code: run it beside any tritonserver that serves `llm`.
`python -m llm_client.openai_server --triton localhost:8001 --port 9000` or `llm openai ...`.
"""

from llm_client.openai_server.app import create_app

__all__ = ["create_app"]
