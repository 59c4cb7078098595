"""The engine process: one in-process service, served to every client that connects, until the last has gone.

Started by a client as `python -m llmserve.serving.bridge.server NAME CONFIG_JSON MODEL_DIR`. It binds the
abstract socket NAME before it loads anything (ADDRESS_TAKEN: another engine has it), accepts connections once
it has loaded (others wait in the listen backlog), only from its own user, and serves until its last client
has gone.
"""

from __future__ import annotations

import errno
import gc
import itertools
import json
import logging
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

from llmserve.config import ServingConfig, apply_switch_interval
from llmserve.engine.api import EngineError, EngineStats, FinishReason
from llmserve.engine.sampling_params import InvalidRequest
from llmserve.serving.api import SHUTTING_DOWN_MESSAGE, Delta, GenerateRequest, take_deltas
from llmserve.serving.bridge.messages import (
    ADDRESS_TAKEN,
    Abort,
    Add,
    Drain,
    Failed,
    FromClient,
    FromEngine,
    MetricCall,
    Out,
    Ready,
    Stop,
    Stopped,
)
from llmserve.serving.factory import build_in_process
from llmserve.serving.metrics import resident_memory_bytes
from llmserve.serving.service import LLMService

log = logging.getLogger(__name__)

_RSS_PERIOD_S = 1.0  # how often the engine re-reads the resident memory of itself and its clients


class _RecordingSink:
    """Metric calls made in the engine, replayed into a client's sink (the Triton one lives there)."""

    def __init__(self):
        self.calls: list[MetricCall] = []
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

    def take(self) -> list[MetricCall]:
        with self.lock:
            calls, self.calls = self.calls, []
        return calls


@dataclass
class _Client:
    cid: int
    conn: Connection
    pid: int


@dataclass(frozen=True)
class _Leave:
    """On the outbox after a client's deltas: it has sent Stop or gone without a word."""

    cid: int


def _peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


def _post(conn: Connection, message: FromEngine) -> None:
    try:
        conn.send(message)
    except OSError:
        pass  # the client is gone: its reader sees the end and queues its _Leave


class _EngineServer:
    """Serves one LLMService to every client that connects, until the last one has gone.

    Threads: one accepts; one per client reads its commands; one (the sender) routes the service's deltas to
    their clients, with the metric calls and stats, and handles a client's leaving."""

    IDLE_EXIT_S = 60.0  # ready but nobody connected: whoever started us has gone

    def __init__(self, service: LLMService, sink: _RecordingSink, listener: socket.socket):
        self.service, self.sink, self.listener = service, sink, listener
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()  # deltas (engine ids) and _Leave
        self.clients: dict[int, _Client] = {}
        self.owner: dict[str, tuple[int, str]] = {}  # engine request id -> (client, the client's request id)
        self.lock = threading.Lock()  # clients, owner, closing
        self.ids = itertools.count()
        self.closing = False
        # the sender thread's own
        self.turn = 0  # which client reports the next batch's metric calls
        self.rss, self.rss_at = 0, 0.0
        self.last_stats: EngineStats | None = None
        self.last_rss = 0
        self.idle_since = time.monotonic()

    def serve(self) -> None:
        threading.Thread(target=self._accept_loop, name="llm-accept", daemon=True).start()
        self._send_loop()

    # -- the accepting thread ------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:  # closed: the last client has gone
                return
            client = self._admit(sock)
            if client is not None:
                threading.Thread(target=self._read_loop, args=(client,), name=f"llm-client-{client.cid}",
                                 daemon=True).start()

    def _admit(self, sock: socket.socket) -> _Client | None:
        pid, uid = _peer(sock)
        if uid != os.getuid():  # an abstract socket has no file permissions: check the peer instead
            log.warning("refused a connection from uid %d (pid %d)", uid, pid)
            sock.close()
            return None
        conn = Connection(sock.detach())
        with self.lock:
            if self.closing:
                conn.close()
                return None
            client = _Client(next(self.ids), conn, pid)
            try:
                conn.send(Ready(self.service.vocab_size, self.service.max_model_len, os.getpid()))
            except OSError:
                return None
            self.clients[client.cid] = client
        return client

    # -- a client's reader thread --------------------------------------------------------------------------------
    def _read_loop(self, client: _Client) -> None:
        while True:
            try:
                command: FromClient = client.conn.recv()
            except (EOFError, OSError):  # the client is gone without a word
                command = Stop()
            match command:
                case Add(request):
                    self._add(client.cid, request)
                case Abort(request_id):
                    self.service.abort(f"{client.cid}/{request_id}")
                case Drain(grace_s):
                    self.service.drain(grace_s)
                case Stop():
                    self.outbox.put(_Leave(client.cid))
                    return

    def _add(self, cid: int, request: GenerateRequest) -> None:
        if request.hops:  # tracing: when this reader got it (after the pipe and a wait for the GIL)
            request.hops += (time.monotonic(),)
        engine_id = f"{cid}/{request.request_id}"  # request ids are each client's own
        with self.lock:
            self.owner[engine_id] = (cid, request.request_id)
        request.request_id = engine_id
        try:
            self.service.submit(request, self.outbox.put)
        except (InvalidRequest, EngineError) as exc:
            self.outbox.put(Delta(engine_id, "", [], len(request.prompt_token_ids), FinishReason.ERROR, error=exc))

    # -- the sender thread ---------------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        # One message per client per batch of deltas: what one engine step delivers goes in one pickle and one write.
        last = False
        while not last:
            items, _ = take_deltas(self.outbox, timeout=0.05)
            last = self._send_batch(items)

    def _send_batch(self, items: list[Delta | _Leave]) -> bool:
        """Sends one batch; True once the last client has left (the service is shut down by then)."""
        stats, calls, now = self.service.stats(), self.sink.take(), time.monotonic()
        leaving = [item.cid for item in items if isinstance(item, _Leave)]
        clients, out, last = self._route([item for item in items if isinstance(item, Delta)], leaving, now)
        self._read_rss(now, clients)
        self._send_out(clients, out, calls, stats)
        if last:
            self.listener.close()  # a new instance would start an engine of its own now
            self.service.shutdown()  # frees the model before the last client's shutdown() returns
        for cid in leaving:
            try:
                clients[cid].conn.send(Stopped(last))
                clients[cid].conn.close()
            except (OSError, KeyError):
                pass
        return last

    def _route(self, deltas: list[Delta], leaving: list[int],
               now: float) -> tuple[dict[int, _Client], dict[int, list[Delta]], bool]:
        """The clients as of this batch, each one's deltas (client ids), and whether the last one has left."""
        with self.lock:
            clients = dict(self.clients)
            out: dict[int, list[Delta]] = {cid: [] for cid in clients}
            for delta in deltas:
                owner = (self.owner.pop if delta.finished else self.owner.get)(delta.request_id, None)
                if owner is not None and owner[0] in out:
                    delta.request_id = owner[1]
                    out[owner[0]].append(delta)
            for cid in leaving:
                self._leave(cid, out[cid])
            if clients:
                self.idle_since = now
            # the last client has left, or none came since we were ready (whoever started us is gone)
            last = not self.clients and (bool(leaving) or now - self.idle_since > self.IDLE_EXIT_S)
            self.closing = self.closing or last
        return clients, out, last

    def _leave(self, cid: int, out: list[Delta]) -> None:
        """Under the lock: the client's requests end here, with an error, and stop in the engine."""
        self.clients.pop(cid, None)
        mine = [engine_id for engine_id, (c, _) in self.owner.items() if c == cid]
        for engine_id in mine:
            rid = self.owner.pop(engine_id)[1]
            self.service.abort(engine_id)
            error = EngineError(SHUTTING_DOWN_MESSAGE, "UNAVAILABLE")
            out.append(Delta(rid, "", [], 0, FinishReason.ERROR, error=error))

    def _read_rss(self, now: float, clients: dict[int, _Client]) -> None:
        if now - self.rss_at >= _RSS_PERIOD_S:
            self.rss_at = now
            self.rss = resident_memory_bytes() + sum(resident_memory_bytes(c.pid) for c in clients.values())

    def _send_out(self, clients: dict[int, _Client], out: dict[int, list[Delta]], calls: list[MetricCall],
                  stats: EngineStats) -> None:
        # Metric calls go to one client per batch, in turn (any stub may report them: same series).
        reporter = sorted(clients)[self.turn % len(clients)] if clients and calls else None
        self.turn += reporter is not None
        changed = stats is not self.last_stats or self.rss != self.last_rss  # an idle engine still reports memory
        self.last_stats, self.last_rss = stats, self.rss
        for cid, client in clients.items():
            mine = calls if cid == reporter else []
            if out[cid] or mine or changed:
                _post(client.conn, Out(out[cid], mine, stats, self.service.healthy, self.rss))


FULL_COLLECTION_SWEEPS = 100  # gen-1 collections between full ones once the heap is frozen (CPython: 10)


def freeze_heap() -> None:
    """For a process that runs one engine for the rest of its life: collect once, then move every object alive
    (the model, compiled kernels, captured graphs) out of the garbage collector's sight, so that no full
    collection walks them while serving. Objects still get freed by reference counting; only cycles among
    them would stay, which a process that ends with its engine does not mind. Full collections then wait for
    FULL_COLLECTION_SWEEPS middle-generation sweeps: at 512 streams the serving state alone triggered one every few
    seconds, each a pause of every stream (docs/performance.md, eighteenth session)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_SWEEPS)


def _bind(name: str) -> socket.socket | None:
    """The listening socket for `name`; None where another engine holds it."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind("\0" + name)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    listener.listen(64)
    return listener


def _build(cfg_json: str, model_dir: str, sink: _RecordingSink) -> LLMService:
    cfg = ServingConfig.of(**json.loads(cfg_json))
    apply_switch_interval(cfg)
    return build_in_process(cfg.replace(engine_process="false"), model_dir, sink)


def _tell_failure(listener: socket.socket, reason: str) -> int:
    """Tells whoever is waiting for us why we could not start, until nobody has connected for two seconds."""
    listener.settimeout(2.0)
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:
            return 1
        with Connection(sock.detach()) as conn:
            conn.send(Failed(reason))


def _engine_main(name: str, cfg_json: str, model_dir: str) -> int:
    listener = _bind(name)  # first thing: of two engines started at once, one leaves here
    if listener is None:
        return ADDRESS_TAKEN
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the group; the clients decide
    logging.basicConfig(level=os.environ.get("LLMSERVE_LOG_LEVEL", "WARNING"))
    sink = _RecordingSink()
    try:
        service = _build(cfg_json, model_dir, sink)
    except BaseException:  # noqa: BLE001 - whoever is waiting for us is told why
        return _tell_failure(listener, traceback.format_exc())
    freeze_heap()
    _EngineServer(service, sink, listener).serve()
    return 0


if __name__ == "__main__":
    sys.exit(_engine_main(*sys.argv[1:4]))
