"""The service in a child process, behind LLMService's surface (`engine_process` knob).

Why: in Triton's Python backend one stub process holds one GIL for Triton's `execute` calls, our intake and
response threads and the engine thread. The engine's eager prefill launches hold that GIL for milliseconds
at a time, so a burst of requests waits at intake: on the H100 at 256 streams the Triton path's TTFT P50 was
609 ms against 273 ms engine-direct, with the same inter-token gap. In a child process the engine, the
detokenizer and stop strings run under their own GIL; the stub keeps intake, tokenizing and the sends.

Parent and child speak over one socket pair (`multiprocessing.connection`, pickled tuples). The parent sends
("add", GenerateRequest), ("abort", id), ("drain", grace_s), ("stop",); the child sends ("out", deltas,
metric calls, stats, healthy) once per batch of deltas (one engine step's worth) and ("stopped",) at the end.
A child that dies is seen as the pipe's EOF: every request still in flight gets a final UNAVAILABLE error and
`healthy` turns False.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from llmserve.config import ServingConfig
from llmserve.engine_api import EngineError, EngineStats
from llmserve.metrics import MetricsSink, NullSink
from llmserve.service import _DRAINING, Callback, Delta, GenerateRequest, take_deltas, tokenize_request
from llmserve.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def _python() -> str:
    """The interpreter for the child. Inside Triton's stub `sys.executable` is the stub binary, not Python."""
    exe = Path(sys.executable or "")
    if exe.name.startswith("python") and exe.is_file():
        return str(exe)
    for name in (f"python{sys.version_info.major}.{sys.version_info.minor}", "python3", "python"):
        candidate = Path(sys.prefix) / "bin" / name
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError(f"engine_process: no Python interpreter found under {sys.prefix}/bin "
                       "(set engine_process to false to run the engine inside this process)")


class ServiceProcess:
    """LLMService's surface (submit, abort, drain, stats, healthy, shutdown) over a child process."""

    def __init__(self, cfg: ServingConfig, model_dir: str | Path, checkpoint: Path,
                 metrics: MetricsSink | None = None):
        self.tokenizer = Tokenizer(checkpoint)  # prompts are tokenized here, on the caller's thread
        self.metrics = metrics or NullSink()
        self.max_prompt_chars = cfg.max_input_bytes
        self.healthy = True
        self._draining = self._stopping = False
        self._stats = EngineStats()
        self._callbacks: dict[str, Callback] = {}
        self._lock = threading.Lock()  # the pipe's send side and the callback table
        # A fresh interpreter rather than fork (this process runs Triton's and our threads) or multiprocessing's
        # spawn (which re-imports the caller's __main__: inside Triton's stub that is not a script).
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                          env.get("PYTHONPATH")]))
        self.process = subprocess.Popen([_python(), "-m", "llmserve.service_process", str(theirs.fileno())],
                                        pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send((cfg, str(model_dir)))
        try:
            ready = self._conn.recv()  # loading and compiling can take minutes on a GPU
        except EOFError:
            raise RuntimeError(f"the engine process exited while starting (exit code {self.process.wait(5)})"
                               ) from None
        if ready[0] != "ready":
            self.process.wait(30)
            raise RuntimeError(f"the engine process failed to start:\n{ready[1]}")
        self.vocab_size, self.max_model_len = ready[1], ready[2]
        self._reader = threading.Thread(target=self._read_loop, name="llm-engine-pipe", daemon=True)
        self._reader.start()

    # -- called from any thread ----------------------------------------------------------------------------
    def submit(self, request: GenerateRequest, callback: Callback) -> None:
        if self._draining:
            raise EngineError(_DRAINING, status="UNAVAILABLE")
        if self._stopping or not self.healthy:
            raise EngineError("the engine is not serving (shutting down or failed)", status="UNAVAILABLE")
        if request.prompt_token_ids is None:
            request.prompt_token_ids = tokenize_request(self.tokenizer, request, self.max_prompt_chars)
        with self._lock:
            self._callbacks[request.request_id] = callback
            self._send(("add", dataclasses.replace(request, prompt=None, messages=None)))  # ids are enough

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._send(("abort", request_id))

    def drain(self, grace_s: float) -> None:
        self._draining = True
        with self._lock:
            self._send(("drain", grace_s))

    def stats(self) -> EngineStats:
        return self._stats

    @property
    def engine_pid(self) -> int:
        return self.process.pid

    def shutdown(self, timeout: float = 30.0) -> None:
        self._stopping = True
        with self._lock:
            self._send(("stop",))
        self._reader.join(timeout)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            log.warning("the engine process did not stop in %.0f s; killing it", timeout)
            self.process.kill()
            self.process.wait(5)
        self._conn.close()
        self._fail_all("the server is shutting down")

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:  # the child is gone; the reader fails what is in flight
            if message[0] == "add":
                self._callbacks.pop(message[1].request_id, None)
                raise EngineError(f"the engine process is gone: {exc}", status="UNAVAILABLE") from None

    # -- the reader thread --------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "stopped":
                break
            _, deltas, metric_calls, self._stats, healthy = message
            for method, args in metric_calls:
                getattr(self.metrics, method)(*args)
            for delta in deltas:
                with self._lock:
                    callback = (self._callbacks.pop if delta.finished else self._callbacks.get)(delta.request_id,
                                                                                            None)
                if callback is not None:
                    callback(delta)
            self.healthy = self.healthy and healthy
        if not self._stopping:
            try:
                code = self.process.wait(1)
            except subprocess.TimeoutExpired:
                code = "still running, pipe closed"
            log.error("the engine process exited (exit code %s)", code)
            self.healthy = False
            self._fail_all(f"the engine process exited (exit code {code})")

    def _fail_all(self, message: str) -> None:
        with self._lock:
            callbacks, self._callbacks = self._callbacks, {}
        for rid, callback in callbacks.items():
            callback(Delta(rid, "", [], 0, "error", error=EngineError(message, "UNAVAILABLE")))


class _RecordingSink:
    """Metric calls made in the child, replayed into the parent's sink (the Triton one lives there)."""

    def __init__(self):
        self.calls: list[tuple[str, tuple]] = []
        self.lock = threading.Lock()

    def observe(self, name, value):
        with self.lock:
            self.calls.append(("observe", (name, value)))

    def increment(self, name, value=1.0, labels=None):
        with self.lock:
            self.calls.append(("increment", (name, value, labels)))

    def set(self, name, value, labels=None):
        with self.lock:
            self.calls.append(("set", (name, value, labels)))

    def take(self) -> list:
        with self.lock:
            calls, self.calls = self.calls, []
        return calls


def _child_main(conn: Connection) -> None:
    from llmserve.factory import build_service
    from llmserve.sampling_params import InvalidRequest

    cfg, model_dir = conn.recv()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the group; the parent decides
    logging.basicConfig(level=os.environ.get("LLMSERVE_LOG_LEVEL", "WARNING"))
    sink = _RecordingSink()
    try:
        service = build_service(cfg.replace(engine_process="false"), model_dir, sink)
    except BaseException:  # noqa: BLE001 - the parent shows the reason
        conn.send(("failed", traceback.format_exc()))
        return
    conn.send(("ready", service.vocab_size, service.max_model_len))
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    sender = threading.Thread(target=_send_loop, args=(conn, outbox, service, sink), name="llm-pipe-out",
                              daemon=True)
    sender.start()
    while True:
        try:
            command = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            command = ("stop",)
        if command[0] == "add":
            request: GenerateRequest = command[1]
            try:
                service.submit(request, outbox.put)
            except (InvalidRequest, EngineError) as exc:
                outbox.put(Delta(request.request_id, "", [], len(request.prompt_token_ids), "error", error=exc))
        elif command[0] == "abort":
            service.abort(command[1])
        elif command[0] == "drain":
            service.drain(command[1])
        elif command[0] == "stop":
            break
    service.shutdown()  # every request still running gets its final (error) delta first
    outbox.put(None)
    sender.join(30)
    try:
        conn.send(("stopped",))
    except OSError:
        pass


def _send_loop(conn, outbox: queue.SimpleQueue, service, sink: _RecordingSink) -> None:
    # One message per batch of deltas: what one engine step delivers goes in one pickle and one write.
    last_stats = None
    while True:
        deltas, end = take_deltas(outbox, timeout=0.05)
        stats = service.stats()
        calls = sink.take()
        if deltas or calls or stats is not last_stats or end:
            last_stats = stats
            try:
                conn.send(("out", deltas, calls, stats, service.healthy))
            except OSError:
                return
        if end:
            return

if __name__ == "__main__":
    _child_main(Connection(int(sys.argv[1])))
