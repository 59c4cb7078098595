"""The service's own Prometheus metrics (Triton's stay on Triton's metrics port): requests by route and status,
latency and time-to-first-token histograms, requests in flight, client disconnects and tokens."""

from __future__ import annotations

import glob
import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/health/ready", "/metrics")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class WorkerFilesCollector(MultiProcessCollector):
    """MultiProcessCollector for `--workers N`, with two fixes to what prometheus_client leaves to its user:
    - a worker's file is skipped while it is still empty: the library creates it and sizes it a moment later, and a
      scrape in between failed with struct.error, a 500 losing every worker's metrics (client_python issue 1199,
      open on 0.26); an empty file holds no values yet and never shrinks back;
    - the live gauges (requests in flight) of a worker that died are dropped (the library's `mark_process_dead`,
      which uvicorn never calls): a worker killed mid-request would count its requests as in flight for good."""

    def collect(self):  # type: ignore[no-untyped-def]
        files = glob.glob(os.path.join(self._path, "*.db"))
        for pid in {_pid(f) for f in files if os.path.basename(f).startswith("gauge_live")} - {None}:
            if not _alive(pid):
                mark_process_dead(pid, self._path)
        return self.merge([f for f in files if _size(f) > 0], accumulate=True)


def _pid(path: str) -> int | None:
    tail = os.path.basename(path).rsplit("_", 1)[-1].removesuffix(".db")
    return int(tail) if tail.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:  # removed after the listing (a dead worker's live gauges)
        return 0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("openai_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("openai_request_duration_seconds", "Request start to last byte, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("openai_time_to_first_token_seconds", "Request start to the first text (streams)",
                              ["route"], buckets=LATENCY_BUCKETS, registry=r)
        # livesum: with several worker processes, the sum over the live ones (ignored in one process)
        self.in_flight = Gauge("openai_requests_in_flight", "Requests being answered", ["route"], registry=r,
                               multiprocess_mode="livesum")
        self.disconnects = Counter("openai_client_disconnects", "Streams the client left before the end "
                                   "(their Triton requests were cancelled)", ["route"], registry=r)
        self.tokens = Counter("openai_tokens", "Tokens in answered requests", ["route", "kind"], registry=r)

    def route(self, path: str) -> str:
        if path.startswith("/v1/models/"):
            return "/v1/models"
        return path if path in ROUTES else "other"

    def endpoint(self, request: Request) -> Response:
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # worker processes (cli.py --workers): all of them
            registry = CollectorRegistry()
            WorkerFilesCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts every HTTP request once it is fully sent (a stream counts at its end) with the status it got."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.metrics.route(scope["path"])
        status = {"code": 500}
        started = time.perf_counter()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.labels(route).inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.in_flight.labels(route).dec()
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
