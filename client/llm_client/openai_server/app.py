"""The routes: /v1/chat/completions, /v1/completions, /v1/models, /health and /metrics (Starlette).

A client of Triton only: every generation is one gRPC stream to the `llm` model (triton.py); this module checks
the request (schema.py), shapes the answer (translate.py) and streams it as server-sent events (streaming.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llm_client.openai_server.errors import OpenAIError, model_not_found
from llm_client.openai_server.metrics import Metrics, MetricsMiddleware
from llm_client.openai_server.schema import GenerationCall, parse_chat, parse_completion
from llm_client.openai_server.streaming import DONE, ClientGone, EventStream, race, sse
from llm_client.openai_server.translate import (
    Answer,
    finish_chunk,
    first_chunks,
    new_id,
    response,
    text_event,
    usage_chunk,
)
from llm_client.openai_server.triton import Piece, TritonBackend

ARGS_ENV = "LLM_OPENAI_SERVER_ARGS"  # create_app's arguments as JSON, for worker processes (cli.py --workers)
CLIENT_CLOSED = 499  # nginx's "client closed request": what the metrics count for a disconnect


class Service:
    """The state the routes share: the Triton channel, the served model names, the metrics."""

    def __init__(self, backend: TritonBackend, served_names: list[str], metrics: Metrics):
        self.backend, self.names, self.metrics = backend, served_names, metrics
        self.created = int(time.time())

    # -- generation --------------------------------------------------------------------------------------------
    async def generate(self, request: Request, parse: Callable[[Any], GenerationCall]) -> Response:
        call = parse(await _json_body(request))
        if call.model not in self.names:
            raise model_not_found(call.model)
        route, started = request.url.path, time.perf_counter()
        answer = Answer(call, new_id(call.kind))
        pieces = self.backend.generate(call, answer.id)
        try:
            if not call.stream:
                await race(request.receive, self._collect(answer, pieces))
                self._count_tokens(route, answer)
                return JSONResponse(response(answer))
            first = await race(request.receive, anext(pieces, None))
        except ClientGone:
            self.metrics.disconnects.labels(self.metrics.route(route)).inc()
            return Response(status_code=CLIENT_CLOSED)
        self._first_token(route, started)
        return EventStream(self._events(answer, first, pieces, route),
                           on_disconnect=self.metrics.disconnects.labels(self.metrics.route(route)).inc)

    async def _collect(self, answer: Answer, pieces: AsyncGenerator[Piece, None]) -> None:
        async for piece in pieces:
            answer.add(piece)

    async def _events(self, answer: Answer, first: Piece | None, pieces: AsyncGenerator[Piece, None],
                      route: str) -> AsyncIterator[str]:
        """The events of each model response joined into one string (one write to the socket, not one per
        event); the opening chunks go with the first response's, the closing ones and [DONE] together."""
        head = "".join(sse(chunk) for chunk in first_chunks(answer))
        offsets = [len(answer.call.prompt or "") if answer.call.echo else 0] * answer.call.n
        closed: set[int] = set()  # choices whose finish chunk is out
        piece = first
        try:
            while piece is not None:  # the first yield comes at once (EventStream writes it before racing)
                yield head + _piece_events(answer, piece, offsets, closed)
                head = ""
                piece = await anext(pieces, None)
        except OpenAIError as exc:  # the status line is gone: the error travels as an event, as OpenAI's does
            yield sse(exc.body())
            return
        finally:
            with contextlib.suppress(Exception):
                await pieces.aclose()
        tail = [sse(finish_chunk(answer, i)) for i in range(answer.call.n) if i not in closed]
        if answer.call.include_usage:
            tail.append(sse(usage_chunk(answer)))
        self._count_tokens(route, answer)
        yield head + "".join(tail) + DONE

    def _first_token(self, route: str, started: float) -> None:
        self.metrics.ttft.labels(self.metrics.route(route)).observe(time.perf_counter() - started)

    def _count_tokens(self, route: str, answer: Answer) -> None:
        label = self.metrics.route(route)
        self.metrics.tokens.labels(label, "prompt").inc(answer.prompt_tokens)
        self.metrics.tokens.labels(label, "completion").inc(answer.completion_tokens)

    # -- routes ------------------------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self.generate(request, parse_chat)

    async def completions(self, request: Request) -> Response:
        return await self.generate(request, parse_completion)

    def _model_card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "llmserve"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card(n) for n in self.names]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in self.names:
            raise model_not_found(name)
        return JSONResponse(self._model_card(name))

    async def health(self, request: Request) -> Response:
        """Ready when Triton's model is: 503 otherwise, so a load balancer skips this instance."""
        if await self.backend.ready():
            return JSONResponse({"status": "ok", "triton": self.backend.url, "model": self.backend.model})
        return OpenAIError(f"the Triton model {self.backend.model!r} at {self.backend.url} is not ready", 503,
                           "server_error", code="backend_unavailable", retry_after=1).response()

    async def live(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})


def _piece_events(answer: Answer, piece: Piece, offsets: list[int], closed: set[int]) -> str:
    """The events of one model response: each choice's new text, then its finish chunk if it ended here."""
    ended = answer.add(piece)
    events = []
    for i in range(answer.call.n):
        events.append(text_event(answer, piece, i, offsets[i]))
        offsets[i] += len(piece.texts[i]) if i < len(piece.texts) else 0
        if i in ended:
            events.append(sse(finish_chunk(answer, i)))
            closed.add(i)
    return "".join(events)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        raise OpenAIError("We could not parse the JSON body of your request: it must be valid JSON "
                          "(Content-Type: application/json).", code="invalid_json") from None


async def _openai_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = f"Invalid URL ({request.method} {request.url.path})" if exc.status_code == 404 else exc.detail
    return OpenAIError(message, exc.status_code).response()


async def _server_error(request: Request, exc: Exception) -> Response:
    return OpenAIError(f"internal error: {type(exc).__name__}: {exc}", 500, "server_error").response()


def create_app(triton_url: str = "localhost:8001", model: str = "llm",
               served_names: list[str] | None = None) -> Starlette:
    """The ASGI app. `served_names`: the names clients may ask for (default: the Triton model's)."""
    service = Service(TritonBackend(triton_url, model), served_names or [model], Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await service.backend.close()

    routes = [
        Route("/v1/chat/completions", service.chat, methods=["POST"]),
        Route("/v1/completions", service.completions, methods=["POST"]),
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/v1/models/{model:path}", service.model, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/health/live", service.live, methods=["GET"]),
        Route("/metrics", service.metrics.endpoint, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(MetricsMiddleware, metrics=service.metrics)],
                    exception_handlers={OpenAIError: _openai_error, HTTPException: _http_error,
                                        Exception: _server_error})
    app.state.service = service
    return app


def app_from_env() -> Starlette:
    """The app of one worker process of `--workers N`: create_app with the arguments cli.py put in ARGS_ENV."""
    return create_app(**json.loads(os.environ[ARGS_ENV]))
