"""The service in its own process, behind LLMService's surface (`engine_process` knob), shared by the model
instances on one device.

Why a process: in Triton's Python backend one stub process holds one GIL for Triton's `execute` calls, our
intake and response threads and the engine thread. The engine's eager prefill launches hold that GIL for
milliseconds at a time, so a burst of requests waits at intake: on the H100 at 256 streams the Triton path's
TTFT P50 was 609 ms against 273 ms engine-direct, with the same inter-token gap. In its own process the engine,
the detokenizer and stop strings run under their own GIL; the stub keeps intake, tokenizing and the sends.

Why shared: Triton gives every model instance (`instance_group [{ count: N }]`) a stub process of its own, so
N instances spread execute calls, intake, response sends and metric calls over N processes. They must not each
load the model. Clients with the same share key (the adapter's: tritonserver's pid, the model, its version,
its config including the device) reach one engine process through an abstract Unix socket named after the
key. Whoever finds no engine there starts one; the engine binds the name before it loads anything, so of two
that start at once one exits at bind (ADDRESS_TAKEN) and both connect to the other. The engine accepts
connections once it has loaded (others wait in the listen backlog), only from its own user, and serves until
its last client has gone.

Protocol, pickled tuples over multiprocessing.connection. The engine sends ("ready", vocab_size,
max_model_len, pid) or ("failed", traceback) first; a client then sends ("add", GenerateRequest), ("abort",
id), ("drain", grace_s), ("stop",); the engine sends ("out", deltas, metric calls, stats, healthy,
resident bytes) once per batch of deltas (one engine step's worth) and ("stopped", last) at the end. Request
ids are each client's own: the engine keys them by connection. Metric calls made in the engine go to one
client per batch, in turn: tritonserver merges the instances' metric families into the same series, so any
stub may report them. A client whose engine dies sees EOF: every request it has in flight gets a final
UNAVAILABLE error and `healthy` turns False.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import hashlib
import itertools
import json
import logging
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import uuid
from multiprocessing.connection import Connection
from pathlib import Path

from llmserve.config import ServingConfig, apply_switch_interval
from llmserve.engine.api import EngineError, EngineStats
from llmserve.serving.metrics import MetricsSink, NullSink, resident_memory_bytes
from llmserve.serving.service import (
    _DRAINING,
    _SHUTTING_DOWN,
    Callback,
    Delta,
    GenerateRequest,
    take_deltas,
    tokenize_request,
)
from llmserve.serving.tokenizer import Tokenizer

log = logging.getLogger(__name__)

ADDRESS_TAKEN = 3  # the engine process's exit code when another engine already serves its share key
_RSS_PERIOD_S = 1.0  # how often the engine re-reads the resident memory of itself and its clients


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


class ServiceProcess:
    """LLMService's surface (submit, abort, drain, stats, healthy, shutdown) over an engine process, started
    here or found running under the same `share_key` (None: an engine of this object's own)."""

    def __init__(self, cfg: ServingConfig, model_dir: str | Path, checkpoint: Path,
                 metrics: MetricsSink | None = None, share_key: str | None = None, start_timeout: float = 60.0):
        self.tokenizer = Tokenizer(checkpoint)  # prompts are tokenized here, on the caller's thread
        self.metrics = metrics or NullSink()
        self.max_prompt_chars = cfg.max_input_bytes
        self.healthy = True
        self._draining = self._stopping = False
        self._stats = EngineStats()
        self._resident_bytes = 0
        self._callbacks: dict[str, Callback] = {}
        self._lock = threading.Lock()  # the connection's send side and the callback table
        self.process: subprocess.Popen | None = None  # the engine, where this object started it
        self._tracing = bool(os.environ.get("LLMSERVE_STEP_TRACE"))
        self._conn = self._connect_or_start(cfg, Path(model_dir), share_key or uuid.uuid4().hex, start_timeout)
        try:
            ready = self._conn.recv()  # loading and compiling can take minutes on a GPU
        except EOFError:
            code = self.process.wait(5) if self.process else "unknown"
            raise RuntimeError(f"the engine process exited while starting (exit code {code})") from None
        if ready[0] != "ready":
            if self.process:
                self.process.wait(30)
            raise RuntimeError(f"the engine process failed to start:\n{ready[1]}")
        _, self.vocab_size, self.max_model_len, self.engine_pid = ready
        if self.process is not None and self.process.pid != self.engine_pid:
            self.process.wait(30)  # ours lost the race for the name (ADDRESS_TAKEN) to another client's
            self.process = None
        self._reader = threading.Thread(target=self._read_loop, name="llm-engine-pipe", daemon=True)
        self._reader.start()

    def _connect_or_start(self, cfg: ServingConfig, model_dir: Path, share_key: str, timeout: float) -> Connection:
        name = engine_name(share_key)
        deadline = time.monotonic() + timeout
        while True:
            conn = _connect(name)
            if conn is not None:
                return conn
            code = self.process.poll() if self.process is not None else None
            if code == ADDRESS_TAKEN:  # another client's engine holds the name: connect to it (or start anew)
                self.process = None
            elif code is not None:
                raise RuntimeError(f"the engine process exited while starting (exit code {code})")
            if self.process is None:
                # A fresh interpreter rather than fork (this process runs Triton's and our threads) or
                # multiprocessing's spawn (which re-imports the caller's __main__: in Triton's stub not a script).
                env = dict(os.environ)
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                  env.get("PYTHONPATH")]))
                self.process = subprocess.Popen([_python(), "-m", "llmserve.serving.engine_process", name,
                                                 json.dumps(dataclasses.asdict(cfg)), str(model_dir)], env=env)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no engine process answered within {timeout:.0f} s")
            time.sleep(0.01)  # the engine binds its address first thing, before it imports torch

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
            hops = request.hops + (time.monotonic(),) if self._tracing else request.hops
            # the ids are enough
            self._send(("add", dataclasses.replace(request, prompt=None, messages=None, hops=hops)))

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._send(("abort", request_id))

    def drain(self, grace_s: float) -> None:
        self._draining = True
        with self._lock:
            self._send(("drain", grace_s))

    def stats(self) -> EngineStats:
        return self._stats

    def resident_memory_bytes(self) -> int:
        """The engine process's resident memory plus its clients' (every stub sharing it), as it last read them."""
        return self._resident_bytes

    def shutdown(self, timeout: float = 30.0) -> None:
        self._stopping = True
        with self._lock:
            self._send(("stop",))
        self._reader.join(timeout)  # the engine's last client waits here until the engine has freed the model
        hung = self._reader.is_alive()
        self._conn.close()
        if self.process is not None:
            if hung:  # no answer: the engine is stuck for every client
                log.warning("the engine process did not answer in %.0f s; killing it", timeout)
                self.process.kill()
            if hung or self._last:
                self.process.wait(5)
            else:  # other clients still use the engine we started: reap it whenever they are done
                threading.Thread(target=self.process.wait, name="llm-engine-reaper", daemon=True).start()
        self._fail_all(_SHUTTING_DOWN)

    _last = False  # the engine's ("stopped", last): this was its last client, and it has shut down

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:  # the engine is gone; the reader fails what is in flight
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
                self._last = message[1]
                break
            _, deltas, metric_calls, self._stats, healthy, self._resident_bytes = message
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
            code = self.process.poll() if self.process else None
            log.error("the engine process exited (exit code %s)", "unknown" if code is None else code)
            self.healthy = False
            self._fail_all(f"the engine process exited (exit code {'unknown' if code is None else code})")

    def _fail_all(self, message: str) -> None:
        with self._lock:
            callbacks, self._callbacks = self._callbacks, {}
        for rid, callback in callbacks.items():
            callback(Delta(rid, "", [], 0, "error", error=EngineError(message, "UNAVAILABLE")))


# -- the engine process --------------------------------------------------------------------------------------------
class _RecordingSink:
    """Metric calls made in the engine, replayed into a client's sink (the Triton one lives there)."""

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


@dataclasses.dataclass
class _Client:
    cid: int
    conn: Connection
    pid: int


def _peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


class _EngineServer:
    """Serves one LLMService to every client that connects, until the last one has gone.

    Threads: one accepts; one per client reads its commands; one (the sender) routes the service's deltas to
    their clients, with the metric calls and stats, and handles a client's leaving."""

    IDLE_EXIT_S = 60.0  # ready but nobody connected: whoever started us has gone

    def __init__(self, service, sink: _RecordingSink, listener: socket.socket):
        self.service, self.sink, self.listener = service, sink, listener
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()  # deltas (engine ids) and ("leave", cid)
        self.clients: dict[int, _Client] = {}
        self.owner: dict[str, tuple[int, str]] = {}  # engine request id -> (client, the client's request id)
        self.lock = threading.Lock()  # clients, owner, closing
        self.ids = itertools.count()
        self.closing = False

    def serve(self) -> None:
        threading.Thread(target=self._accept_loop, name="llm-accept", daemon=True).start()
        self._send_loop()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:  # closed: the last client has gone
                return
            pid, uid = _peer(sock)
            if uid != os.getuid():  # an abstract socket has no file permissions: check the peer instead
                log.warning("refused a connection from uid %d (pid %d)", uid, pid)
                sock.close()
                continue
            conn = Connection(sock.detach())
            with self.lock:
                if self.closing:
                    conn.close()
                    continue
                client = _Client(next(self.ids), conn, pid)
                try:
                    conn.send(("ready", self.service.vocab_size, self.service.max_model_len, os.getpid()))
                except OSError:
                    continue
                self.clients[client.cid] = client
            threading.Thread(target=self._read_loop, args=(client,), name=f"llm-client-{client.cid}",
                             daemon=True).start()

    def _read_loop(self, client: _Client) -> None:
        from llmserve.engine.sampling_params import InvalidRequest

        prefix = f"{client.cid}/"
        while True:
            try:
                command = client.conn.recv()
            except (EOFError, OSError):  # the client is gone without a word
                command = ("stop",)
            kind = command[0]
            if kind == "add":
                request: GenerateRequest = command[1]
                if request.hops:  # tracing: when this reader got it (after the pipe and a wait for the GIL)
                    request.hops += (time.monotonic(),)
                engine_id = prefix + request.request_id
                with self.lock:
                    self.owner[engine_id] = (client.cid, request.request_id)
                request.request_id = engine_id
                try:
                    self.service.submit(request, self.outbox.put)
                except (InvalidRequest, EngineError) as exc:
                    self.outbox.put(Delta(engine_id, "", [], len(request.prompt_token_ids), "error", error=exc))
            elif kind == "abort":
                self.service.abort(prefix + command[1])
            elif kind == "drain":
                self.service.drain(command[1])
            elif kind == "stop":
                self.outbox.put(("leave", client.cid))
                return

    def _send_loop(self) -> None:
        # One message per client per batch of deltas: what one engine step delivers goes in one pickle and one write.
        last_stats, last_rss, turn, rss, rss_at, idle_since = None, 0, 0, 0, 0.0, time.monotonic()
        while True:
            items, _ = take_deltas(self.outbox, timeout=0.05)
            stats, calls, now = self.service.stats(), self.sink.take(), time.monotonic()
            leaving = []
            with self.lock:
                clients = dict(self.clients)
                out: dict[int, list[Delta]] = {cid: [] for cid in clients}
                for item in items:
                    if isinstance(item, tuple):
                        leaving.append(item[1])
                        continue
                    owner = (self.owner.pop if item.finished else self.owner.get)(item.request_id, None)
                    if owner is not None and owner[0] in out:
                        item.request_id = owner[1]
                        out[owner[0]].append(item)
                for cid in leaving:  # its requests end here, with an error, and stop in the engine
                    self.clients.pop(cid, None)
                    mine = [engine_id for engine_id, (c, _) in self.owner.items() if c == cid]
                    for engine_id in mine:
                        rid = self.owner.pop(engine_id)[1]
                        self.service.abort(engine_id)
                        out[cid].append(Delta(rid, "", [], 0, "error", error=EngineError(_SHUTTING_DOWN,
                                                                                          "UNAVAILABLE")))
                if clients:
                    idle_since = now
                # the last client has left, or none came since we were ready (whoever started us is gone)
                last = not self.clients and (bool(leaving) or now - idle_since > self.IDLE_EXIT_S)
                if last:
                    self.closing = True
            if now - rss_at >= _RSS_PERIOD_S:
                rss_at = now
                rss = resident_memory_bytes() + sum(resident_memory_bytes(c.pid) for c in clients.values())
            # Metric calls go to one client per batch, in turn (any stub may report them: same series).
            reporter = sorted(clients)[turn % len(clients)] if clients and calls else None
            turn += reporter is not None
            changed = stats is not last_stats or rss != last_rss  # an idle engine still reports its memory
            last_stats, last_rss = stats, rss
            for cid, client in clients.items():
                mine_calls = calls if cid == reporter else []
                if out[cid] or mine_calls or changed:
                    try:
                        client.conn.send(("out", out[cid], mine_calls, stats, self.service.healthy, rss))
                    except OSError:
                        pass  # its reader sees the end and queues ("leave", cid)
            if last:
                self.listener.close()  # a new instance would start an engine of its own now
                self.service.shutdown()  # frees the model before the last client's shutdown() returns
            for cid in leaving:
                try:
                    clients[cid].conn.send(("stopped", last))
                    clients[cid].conn.close()
                except (OSError, KeyError):
                    pass
            if last:
                return


def freeze_heap() -> None:
    """For a process that runs one engine for the rest of its life: collect once, then move every object alive
    (the model, compiled kernels, captured graphs) out of the garbage collector's sight, so that no full
    collection walks them while serving. Objects still get freed by reference counting; only cycles among
    them would stay, which a process that ends with its engine does not mind."""
    gc.collect()
    gc.freeze()


def _engine_main(name: str, cfg_json: str, model_dir: str) -> int:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind("\0" + name)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return ADDRESS_TAKEN
        raise
    listener.listen(64)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the group; the clients decide
    logging.basicConfig(level=os.environ.get("LLMSERVE_LOG_LEVEL", "WARNING"))
    from llmserve.serving.factory import build_service

    sink = _RecordingSink()
    try:
        cfg = ServingConfig(**json.loads(cfg_json))
        apply_switch_interval(cfg)
        service = build_service(cfg.replace(engine_process="false"), model_dir, sink)
    except BaseException:  # noqa: BLE001 - whoever is waiting for us is told why
        reason = traceback.format_exc()
        listener.settimeout(2.0)
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return 1
            with Connection(sock.detach()) as conn:
                conn.send(("failed", reason))
    freeze_heap()
    _EngineServer(service, sink, listener).serve()
    return 0


if __name__ == "__main__":
    sys.exit(_engine_main(*sys.argv[1:4]))
