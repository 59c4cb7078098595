"""Triton adapter: requests in, responses out. Lifecycle and wiring only; the engine lives in `llmserve`.

Threads: Triton calls `execute` (queue the requests, never block); the intake thread reads, parses,
tokenizes and submits them; the service's engine thread steps the engine and puts deltas on a queue; the response
thread here sends them; a housekeeping thread polls cancelled requests, drains, and exports engine gauges.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import triton_python_backend_utils as pb_utils

try:
    import llmserve  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from llmserve.config import ServingConfig, apply_switch_interval
from llmserve.engine.api import EngineError
from llmserve.engine.sampling_params import InvalidRequest, defaults_from_generation_config
from llmserve.serving.api import Delta, Service, take_deltas
from llmserve.serving.drain import DrainWatch, control_dir
from llmserve.serving.factory import build_service
from llmserve.serving.metrics import COUNTERS, GAUGES, HISTOGRAMS, NullSink
from llmserve.serving.requests import ParsedRequest, ResponseBuilder, parse_request

log = logging.getLogger("llmserve.triton")

MAX_CANCEL_POLLS = 64  # is_cancelled() calls per cancellation_check_period_ms
# Every pb_utils metric call is an IPC round trip to tritonserver, so buffered metric calls and the engine's gauges
# go out at this period, not at every cancellation poll; the resident-memory gauge reads /proc, once a second.
METRICS_PERIOD_S = 0.1
RSS_PERIOD_S = 1.0
_CODES = {"INVALID_ARGUMENT": "INVALID_ARG", "UNAVAILABLE": "UNAVAILABLE", "CANCELLED": "CANCELLED",
          "INTERNAL": "INTERNAL"}


def _error(message: str, status: str) -> pb_utils.InferenceResponse:
    code = getattr(pb_utils.TritonError, _CODES.get(status, "INTERNAL"))
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


@dataclass
class _InFlight:
    sender: object
    builder: ResponseBuilder
    done: bool = False  # FINAL sent: the sender's response factory is gone, never touch it again


class TritonMetrics:
    """MetricsSink over pb_utils.MetricFamily, labelled {model, version}."""

    def __init__(self, model: str, version: str):
        self.labels = {"model": model, "version": version}
        self.families = {}
        self.metrics = {}
        self.lock = threading.Lock()
        self.observations: list = []
        self.increments: dict = {}
        kinds = [(HISTOGRAMS, pb_utils.MetricFamily.HISTOGRAM), (COUNTERS, pb_utils.MetricFamily.COUNTER),
                 (GAUGES, pb_utils.MetricFamily.GAUGE)]
        for table, kind in kinds:
            for name, spec in table.items():
                desc = spec[0] if isinstance(spec, tuple) else spec
                self.families[name] = pb_utils.MetricFamily(name=name, description=desc, kind=kind)
        # Create the unlabelled series up front so every family shows on /metrics before the first request.
        for name in HISTOGRAMS:
            self._metric(name, None)
        for name in COUNTERS:
            if name not in ("llm_request_failures_total", "llm_request_success_total"):
                self._metric(name, None)

    def _metric(self, name, extra):
        key = (name, tuple(sorted((extra or {}).items())))
        metric = self.metrics.get(key)
        if metric is None:
            labels = {**self.labels, **(extra or {})}
            if name in HISTOGRAMS:
                metric = self.families[name].Metric(labels=labels, buckets=HISTOGRAMS[name][1])
            else:
                metric = self.families[name].Metric(labels=labels)
            self.metrics[key] = metric
        return metric

    # Calls only record; `flush` (the housekeeping thread) crosses into the server. pb_utils metric calls are
    # IPC round trips, and the engine thread produces one observation per token.
    def observe(self, name, value):
        with self.lock:
            self.observations.append((name, value))

    def increment(self, name, value=1.0, labels=None):
        key = (name, tuple(sorted((labels or {}).items())))
        with self.lock:
            self.increments[key] = self.increments.get(key, 0.0) + value

    def set(self, name, value, labels=None):
        self._metric(name, labels).set(value)

    def flush(self):
        with self.lock:
            observations, self.observations = self.observations, []
            increments, self.increments = self.increments, {}
        for name, value in observations:
            self._metric(name, None).observe(value)
        for (name, labels), value in increments.items():
            self._metric(name, dict(labels)).increment(value)


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException("model_transaction_policy { decoupled: true } is required")
        self.cfg = ServingConfig.from_parameters(model_config.get("parameters", {}))
        if args.get("model_instance_kind") == "GPU" and self.cfg.device in ("auto", "cuda"):
            # instance_group { kind: KIND_GPU, gpus: [...] }: one engine replica per listed GPU.
            self.cfg = self.cfg.replace(device=f"cuda:{args['model_instance_device_id']}")
        apply_switch_interval(self.cfg)
        model_dir = Path(args["model_repository"])
        try:
            self.metrics = TritonMetrics(args["model_name"], args["model_version"])
        except Exception as exc:  # server started with --allow-metrics=false
            log.warning("custom metrics disabled: %s", exc)
            self.metrics = NullSink()
        # Instances of this model version on one device (instance_group count > 1) share one engine process:
        # each instance is a stub process of its own, so intake, response sends and metric calls spread over them.
        share_key = f"{os.getppid()}|{model_dir.resolve()}|{args['model_version']}|{self.cfg}"
        self.service: Service = build_service(self.cfg, model_dir, self.metrics, share_key)
        gen_path = model_dir / self.cfg.checkpoint_dir / "generation_config.json"
        self.defaults = defaults_from_generation_config(json.loads(gen_path.read_text()) if gen_path.is_file() else {})
        self.inflight: dict[str, _InFlight] = {}
        self.ids = itertools.count()
        self.responses: queue.SimpleQueue = queue.SimpleQueue()
        self.intake: queue.SimpleQueue = queue.SimpleQueue()
        self.unaccepted = 0  # requests between execute() and the service
        self.stopping = threading.Event()
        self.sender_lock = threading.Lock()
        self.model_name = args["model_name"]
        self.unloading = False
        # Shutdown drains first (llmserve/serving/drain.py): tritonserver itself tells a decoupled model too late.
        self.drain = DrainWatch(control_dir(), args.get("model_instance_name") or args["model_name"])
        self.draining = self.drained = False
        self.metrics.set("llm_engine_healthy", 1)
        self.last_stats = None
        self.poll_cursor = 0
        self.response_thread = threading.Thread(target=self._response_loop, name="llm-responses", daemon=True)
        self.housekeeping_thread = threading.Thread(target=self._housekeeping, name="llm-housekeeping", daemon=True)
        self.intake_thread = threading.Thread(target=self._intake_loop, name="llm-intake", daemon=True)
        self.response_thread.start()
        self.housekeeping_thread.start()
        self.intake_thread.start()

    def execute(self, requests):
        # Triton hands this instance its next request only once execute() returns, and a burst of requests waits
        # in line here (one execute() at a time per instance; docs/performance.md): take the requests and go.
        # Reading them, parsing and tokenizing happen on the intake thread (a decoupled model may keep its
        # requests past execute(), as vllm_backend does).
        arrival = time.monotonic()
        with self.sender_lock:
            self.unaccepted += len(requests)  # a drain waits for these too
        for request in requests:
            self.intake.put((request, arrival))
        return None

    def _intake_loop(self) -> None:
        while True:
            item = self.intake.get()
            if item is None:
                return
            request, arrival = item
            try:
                sender = request.get_response_sender()
                rid = f"{request.request_id() or 'req'}#{next(self.ids)}"  # client ids may repeat or be empty
                try:
                    inputs = {t.name(): t.as_numpy() for t in request.inputs()}
                    raw_parameters = request.parameters()
                except Exception as exc:  # noqa: BLE001 - every request gets exactly one final response
                    log.exception("request %s could not be read", rid)
                    self._fail(rid, sender, f"internal error: {type(exc).__name__}: {exc}", "INTERNAL")
                    continue
                self._accept(rid, sender, inputs, raw_parameters, arrival)
            except Exception:  # noqa: BLE001 - without its sender a request cannot be answered at all
                log.exception("a request could not be taken")
            finally:
                with self.sender_lock:
                    self.unaccepted -= 1

    def _accept(self, rid: str, sender, inputs: dict, raw_parameters: str | None, arrival: float) -> None:
        try:
            try:
                parameters = json.loads(raw_parameters or "{}")
            except json.JSONDecodeError:
                parameters = {}
            service = self.service
            front = self.cfg.front
            parsed: ParsedRequest = parse_request(rid, inputs, parameters, self.defaults, front.max_input_bytes,
                                                  front.exclude_input_in_output, service.vocab_size,
                                                  service.max_model_len)
            parsed.request.arrival_time = arrival  # Triton's hand-over: TTFT includes our intake
            if self.cfg.front.log_prompts:  # off by default: prompt text stays out of the logs
                pb_utils.Logger.log_info(f"request {rid}: {parsed.request.prompt or parsed.request.messages!r}")
            self.inflight[rid] = _InFlight(sender, ResponseBuilder(parsed, self.service.tokenizer.decode))
            self.service.submit(parsed.request, self.responses.put)
        except InvalidRequest as exc:
            self._fail(rid, sender, str(exc), "INVALID_ARGUMENT")
        except EngineError as exc:
            self._fail(rid, sender, str(exc), exc.status)
        except Exception as exc:  # noqa: BLE001 - every request gets exactly one final response
            log.exception("request %s failed before reaching the engine", rid)
            self._fail(rid, sender, f"internal error: {type(exc).__name__}: {exc}", "INTERNAL")

    def _fail(self, rid: str, sender, message: str, status: str) -> None:
        self.metrics.increment("llm_request_failures_total", labels={"reason": status.lower()})
        with self.sender_lock:
            state = self.inflight.pop(rid, None)
            if state is not None:
                state.done = True
            sender.send(_error(message, status), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _response_loop(self) -> None:
        # One response per request per batch: when the engine outruns the sends (hundreds of streams), a
        # client gets several tokens in one message instead of a growing backlog.
        while True:
            deltas, stop = take_deltas(self.responses)
            pending: dict[str, list[Delta]] = {}
            for delta in deltas:
                pending.setdefault(delta.request_id, []).append(delta)
            for rid, batch in pending.items():
                state = self.inflight.get(rid)
                if state is None:
                    continue
                try:
                    self._send(batch, state)
                except Exception:  # noqa: BLE001 - one broken response must not stop the others
                    log.exception("sending a response for %s failed", rid)
                    if batch[-1].finished:
                        self.inflight.pop(rid, None)
            if stop:
                return

    def _send(self, deltas: list[Delta], state: _InFlight) -> None:
        """One request's deltas of this batch, as one response (the last delta may be its final one)."""
        delta = deltas[-1]
        if delta.finished:
            # is_cancelled() on a sender after its FINAL crashes tritonserver 2.51 (a freed response
            # factory), so the housekeeping thread must see `done` before the final send happens.
            with self.sender_lock:
                state.done = True
                self.inflight.pop(delta.request_id, None)
                self._send_now(deltas, state)
        else:
            self._send_now(deltas, state)

    def _send_now(self, deltas: list[Delta], state: _InFlight) -> None:
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        delta = deltas[-1]
        if delta.finish_reason == "abort":
            state.sender.send(_error("request cancelled", "CANCELLED"), flags=final)
            return
        if delta.error is not None:
            status = "INVALID_ARGUMENT" if isinstance(delta.error, InvalidRequest) else getattr(
                delta.error, "status", "INTERNAL")
            state.sender.send(_error(str(delta.error), status), flags=final)
            return
        tensors = state.builder.add(deltas)
        if tensors is None:
            return
        response = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in tensors.items()])
        # FINAL rides on the last data response, so /generate sees exactly one response. Cancellation is
        # polled by the housekeeping thread, not here: is_cancelled() is an IPC round trip per token.
        state.sender.send(response, flags=final if delta.finished else 0)

    def _housekeeping(self) -> None:
        period = self.cfg.front.cancellation_check_period_ms / 1000
        next_metrics = next_rss = 0.0
        while not self.stopping.wait(period):
            if not self.service.healthy and not self.unloading:
                # Readiness must tell the truth: a dead engine unloads its model (needs
                # --model-control-mode=explicit, which llmserve.launch uses), so /v2/health/ready goes false.
                self.unloading = True
                self.metrics.set("llm_engine_healthy", 0)
                log.error("engine unhealthy: unloading model %s", self.model_name)
                try:
                    pb_utils.unload_model(self.model_name)
                except Exception:  # noqa: BLE001 - not in explicit mode: requests still get UNAVAILABLE
                    log.exception("unload_model failed")
            self._check_drain()
            for rid, state in self._cancel_poll_slice():
                with self.sender_lock:
                    if state.done:
                        continue
                    try:
                        cancelled = state.sender.is_cancelled()
                    except Exception:  # noqa: BLE001
                        log.debug("is_cancelled failed for %s", rid, exc_info=True)
                        continue
                if cancelled:
                    self.service.abort(rid)
            now = time.monotonic()
            if now >= next_rss:
                next_rss = now + RSS_PERIOD_S
                self.metrics.set("llm_backend_resident_memory_bytes", self.service.resident_memory_bytes())
            if now < next_metrics:
                continue
            next_metrics = now + METRICS_PERIOD_S
            if hasattr(self.metrics, "flush"):
                self.metrics.flush()
            stats = self.service.stats()
            if stats is self.last_stats:
                continue
            self.last_stats = stats
            m = self.metrics
            m.set("llm_requests_running", stats.running)
            m.set("llm_requests_waiting", stats.waiting)
            m.set("llm_kv_cache_blocks", stats.kv_blocks_total - stats.kv_blocks_free, {"state": "used"})
            m.set("llm_kv_cache_blocks", stats.kv_blocks_free, {"state": "free"})

    def _cancel_poll_slice(self) -> list:
        """The requests to poll for cancellation this period: all of them up to MAX_CANCEL_POLLS, else the next
        slice in turn. Each poll is an IPC round trip; with hundreds of streams, polling every one every period
        cost the stub ~20 us of CPU per generated token (bench.adapter, 128 streams)."""
        items = list(self.inflight.items())
        if len(items) <= MAX_CANCEL_POLLS:
            return items
        start = self.poll_cursor % len(items)
        self.poll_cursor = start + MAX_CANCEL_POLLS
        return (items[start:] + items[:start])[:MAX_CANCEL_POLLS]

    def _check_drain(self) -> None:
        if not self.draining:
            grace = self.drain.requested()
            if grace is None:
                return
            self.draining = True
            log.warning("draining before shutdown: %d requests in flight get %.1f s", len(self.inflight), grace)
            self.service.drain(grace)
        if not self.drained:
            with self.sender_lock:  # finals are sent under this lock: empty means every one is out
                empty = not self.inflight and not self.unaccepted
            if empty:
                self.drained = True
                self.drain.mark_drained()

    def finalize(self):
        # The service answers every request still in flight with UNAVAILABLE before its thread ends.
        self.intake.put(None)
        self.intake_thread.join(timeout=5)
        self.service.shutdown()
        self.stopping.set()
        self.responses.put(None)
        self.response_thread.join(timeout=10)
        self.housekeeping_thread.join(timeout=2)
        self.drain.close()
