"""The client side of the bridge: `ServiceProcess`, the `Service` over an engine process, in the Triton stub.

Clients with the same share key (the adapter's: tritonserver's pid, the model, its version, its config
including the device) reach one engine process through an abstract Unix socket named after the key. Whoever
finds no engine there starts one; the engine binds the name before it loads anything, so of two that start at
once one exits at bind (ADDRESS_TAKEN) and both connect to the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path

from llmserve.config import ServingConfig
from llmserve.engine.api import EngineError, EngineStats, FinishReason
from llmserve.serving.api import (
    DRAINING_MESSAGE,
    NOT_SERVING_MESSAGE,
    SHUTTING_DOWN_MESSAGE,
    Callback,
    Delta,
    GenerateRequest,
    Service,
    tokenize_request,
)
from llmserve.serving.bridge.messages import (
    ADDRESS_TAKEN,
    Abort,
    Add,
    Drain,
    Failed,
    FromClient,
    Out,
    Ready,
    Stop,
    Stopped,
)
from llmserve.serving.metrics import MetricsSink, NullSink
from llmserve.serving.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SERVER_MODULE = "llmserve.serving.bridge.server"  # what the engine process runs (`python -m`)
_CHECKOUT = Path(__file__).resolve().parents[3]  # the directory holding the llmserve package


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


def engine_name(share_key: str) -> str:
    """The name of the abstract Unix socket (Linux: no file to leave behind) of the engine serving `share_key`."""
    return "llmserve-engine-" + hashlib.sha256(f"{os.getuid()}|{share_key}".encode()).hexdigest()[:32]


def _connect(name: str) -> Connection | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect("\0" + name)
    except (ConnectionRefusedError, FileNotFoundError):  # nobody there, or an engine between bind and listen
        sock.close()
        return None
    return Connection(sock.detach())


def _spawn(name: str, cfg: ServingConfig, model_dir: Path) -> subprocess.Popen:
    # A fresh interpreter rather than fork (this process runs Triton's and our threads) or
    # multiprocessing's spawn (which re-imports the caller's __main__: in Triton's stub not a script).
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_CHECKOUT), env.get("PYTHONPATH")]))
    return subprocess.Popen([_python(), "-m", SERVER_MODULE, name, json.dumps(cfg.knobs()),
                             str(model_dir)], env=env)


class ServiceProcess(Service):
    """The `Service` over an engine process, started here or found running under the same `share_key` (None: an
    engine of this object's own). Prompts are tokenized here; the engine gets token ids."""

    def __init__(self, cfg: ServingConfig, model_dir: str | Path, checkpoint: Path,
                 metrics: MetricsSink | None = None, share_key: str | None = None, start_timeout: float = 60.0,
                 tracing: bool = False):
        self.tokenizer = Tokenizer(checkpoint)  # prompts are tokenized here, on the caller's thread
        self.metrics = metrics or NullSink()
        self.max_prompt_chars = cfg.front.max_input_bytes
        self.healthy = True
        self._draining = self._stopping = False
        self._last = False  # the engine's Stopped.last: this was its last client, and it has shut down
        self._stats = EngineStats()
        self._resident_bytes = 0
        self._callbacks: dict[str, Callback] = {}
        self._lock = threading.Lock()  # the connection's send side and the callback table
        self.process: subprocess.Popen | None = None  # the engine, where this object started it
        self._tracing = tracing  # stamp each request's hop to the engine process (the step trace)
        self._conn = self._connect_or_start(cfg, Path(model_dir), share_key or uuid.uuid4().hex, start_timeout)
        self._ready = self._wait_ready()
        if self.process is not None and self.process.pid != self._ready.pid:
            self.process.wait(30)  # ours lost the race for the name (ADDRESS_TAKEN) to another client's
            self.process = None
        self._reader = threading.Thread(target=self._read_loop, name="llm-engine-pipe", daemon=True)
        self._reader.start()

    @property
    def vocab_size(self) -> int:
        return self._ready.vocab_size

    @property
    def max_model_len(self) -> int:
        return self._ready.max_model_len

    @property
    def engine_pid(self) -> int:
        return self._ready.pid

    # -- starting ------------------------------------------------------------------------------------------
    def _connect_or_start(self, cfg: ServingConfig, model_dir: Path, share_key: str, timeout: float) -> Connection:
        name = engine_name(share_key)
        deadline = time.monotonic() + timeout
        while (conn := _connect(name)) is None:
            self._start_unless_starting(name, cfg, model_dir)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no engine process answered within {timeout:.0f} s")
            time.sleep(0.01)  # the engine binds its address first thing, before it imports torch
        return conn

    def _start_unless_starting(self, name: str, cfg: ServingConfig, model_dir: Path) -> None:
        code = self.process.poll() if self.process is not None else None
        if code == ADDRESS_TAKEN:  # another client's engine holds the name: connect to it (or start anew)
            self.process = None
        elif code is not None:
            raise RuntimeError(f"the engine process exited while starting (exit code {code})")
        if self.process is None:
            self.process = _spawn(name, cfg, model_dir)

    def _wait_ready(self) -> Ready:
        try:
            ready: Ready | Failed = self._conn.recv()  # loading and compiling can take minutes on a GPU
        except EOFError:
            code = self.process.wait(5) if self.process else "unknown"
            raise RuntimeError(f"the engine process exited while starting (exit code {code})") from None
        if isinstance(ready, Failed):
            if self.process:
                self.process.wait(30)
            raise RuntimeError(f"the engine process failed to start:\n{ready.traceback}")
        return ready

    # -- called from any thread ----------------------------------------------------------------------------
    def submit(self, request: GenerateRequest, callback: Callback) -> None:
        if self._draining:
            raise EngineError(DRAINING_MESSAGE, status="UNAVAILABLE")
        if self._stopping or not self.healthy:
            raise EngineError(NOT_SERVING_MESSAGE, status="UNAVAILABLE")
        if request.prompt_token_ids is None:
            request.prompt_token_ids = tokenize_request(self.tokenizer, request, self.max_prompt_chars)
        with self._lock:
            self._callbacks[request.request_id] = callback
            hops = request.hops + (time.monotonic(),) if self._tracing else request.hops
            # the ids are enough
            self._send(Add(dataclasses.replace(request, prompt=None, messages=None, hops=hops)))

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._send(Abort(request_id))

    def drain(self, grace_s: float) -> None:
        self._draining = True
        with self._lock:
            self._send(Drain(grace_s))

    def stats(self) -> EngineStats:
        return self._stats

    def resident_memory_bytes(self) -> int:
        """The engine process's resident memory plus its clients' (every stub sharing it), as it last read them."""
        return self._resident_bytes

    def shutdown(self, timeout: float = 30.0) -> None:
        self._stopping = True
        with self._lock:
            self._send(Stop())
        self._reader.join(timeout)  # the engine's last client waits here until the engine has freed the model
        hung = self._reader.is_alive()
        self._conn.close()
        if self.process is not None:
            self._reap(hung, timeout)
        self._fail_all(SHUTTING_DOWN_MESSAGE)

    def _reap(self, hung: bool, timeout: float) -> None:
        if hung:  # no answer: the engine is stuck for every client
            log.warning("the engine process did not answer in %.0f s; killing it", timeout)
            self.process.kill()
        if hung or self._last:
            self.process.wait(5)
        else:  # other clients still use the engine we started: reap it whenever they are done
            threading.Thread(target=self.process.wait, name="llm-engine-reaper", daemon=True).start()

    def _send(self, message: FromClient) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:  # the engine is gone; the reader fails what is in flight
            if isinstance(message, Add):
                self._callbacks.pop(message.request.request_id, None)
                raise EngineError(f"the engine process is gone: {exc}", status="UNAVAILABLE") from None

    # -- the reader thread --------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        while True:
            try:
                message: Out | Stopped = self._conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(message, Stopped):
                self._last = message.last
                break
            self._take(message)
        if not self._stopping:
            self._engine_gone()

    def _take(self, out: Out) -> None:
        self._stats, self._resident_bytes = out.stats, out.resident_bytes
        for method, args in out.metric_calls:
            getattr(self.metrics, method)(*args)
        for delta in out.deltas:
            with self._lock:
                callback = (self._callbacks.pop if delta.finished else self._callbacks.get)(delta.request_id, None)
            if callback is not None:
                callback(delta)
        self.healthy = self.healthy and out.healthy

    def _engine_gone(self) -> None:
        code = self.process.poll() if self.process else None
        shown = "unknown" if code is None else code
        log.error("the engine process exited (exit code %s)", shown)
        self.healthy = False
        self._fail_all(f"the engine process exited (exit code {shown})")

    def _fail_all(self, message: str) -> None:
        with self._lock:
            callbacks, self._callbacks = self._callbacks, {}
        for rid, callback in callbacks.items():
            callback(Delta(rid, "", [], 0, FinishReason.ERROR, error=EngineError(message, "UNAVAILABLE")))
