"""Server-sent events, and noticing a client that went away so its Triton request is cancelled.

Each wait on Triton (a whole answer, the first piece of a stream, the rest of the stream) races the ASGI receive
channel: on `http.disconnect` the wait is cancelled, which closes the generator reading the gRPC stream, whose
`finally` cancels the call, and Triton cancels the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")
DONE = "data: [DONE]\n\n"


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was complete."""


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # json.dumps makes one per call


def sse(obj: dict[str, Any]) -> str:
    return f"data: {_encode(obj)}\n\n"


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def race(receive: Receive, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientGone (with `work` cancelled) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(until_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientGone
    finally:
        for t in (task, watch):
            t.cancel()


class EventStream(Response):
    """`text/event-stream` of the events `events` yields (an empty one writes nothing); closes `events` on the
    client's disconnect. Its first event must come without waiting (it is not raced against a disconnect)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_disconnect: Callable[[], None] | None = None):
        super().__init__(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # chunked
        self.events = events
        self.on_disconnect = on_disconnect

    async def _body(self, send: Send, event: str) -> None:
        if event:
            await send({"type": "http.response.body", "body": event.encode("utf-8"), "more_body": True})

    async def _pump(self, send: Send) -> None:
        async for event in self.events:
            await self._body(send, event)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            # `events` opens with what is already in hand (no wait on Triton): written at once, before the
            # disconnect watch's tasks are made, which would cost the first token a turn of the event loop
            await self._body(send, await anext(self.events, ""))
            await race(receive, self._pump(send))
        except (ClientGone, OSError):
            if self.on_disconnect is not None:
                self.on_disconnect()
        finally:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
