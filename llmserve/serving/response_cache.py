"""The response cache: exact-match answers for deterministic requests, in front of any `Service`.

A request is deterministic when it is greedy or sampled with a seed: the same rendered prompt, the same
parameters and the same checkpoint give the same answer. `CachingService` records the deltas of such a request
as its callback gets them and, once the answer is complete (not cancelled, not failed), stores them under a key
made of the checkpoint's identity, the prompt's token ids and every other field of the request. A repeat is
answered by replaying the recorded deltas (the same text pieces, token ids, finish reason, counts and logprobs)
without reaching the engine. A sampled request without a seed is never looked up or stored.

Framing (stream, exclude_input_in_output, return_*) is applied above the service by the adapter's
`ResponseBuilder`, from the deltas, so a streamed and a unary request share one entry and each is framed as it
asks. `factory.build_service` puts this in front when `response_cache_max_entries` > 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pickle
import threading
import time
from collections import OrderedDict
from pathlib import Path

from llmserve.config import ServingConfig
from llmserve.engine.api import EngineError, EngineStats, FinishReason
from llmserve.engine.sampling_params import SamplingParams
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
from llmserve.serving.metrics import MetricsSink, NullSink

log = logging.getLogger(__name__)

HITS = "llm_response_cache_hits_total"
MISSES = "llm_response_cache_misses_total"
# Deltas that reached the first request apart are replayed at most this far apart, so the adapter's response
# thread mostly sends each as its own response and a hit streams in the first's chunks (it joins neighbouring
# deltas when behind, as for any request: 5 of 245 8-chunk replays on 2 CPU cores at 2 ms, 3 of 40 at 1 ms).
REPLAY_GAP_MAX_S = 0.002
# Files up to this size (configs, tokenizer, chat template, import manifest) enter the identity by content;
# larger ones (weights, engines) by name, size and modification time.
SMALL_FILE_BYTES = 8 << 20
# Not part of what is asked: the request's id, its timestamps, and the prompt's forms before rendering (the key
# holds the rendered prompt's token ids instead).
_NOT_KEYED = {"request_id", "arrival_time", "hops", "prompt", "messages", "prompt_token_ids"}


def deterministic(params: SamplingParams) -> bool:
    """Whether the answer is fixed by the request: greedy, or sampled from a seeded stream."""
    return params.greedy or params.seed is not None


def cache_identity(cfg: ServingConfig, dirs: list[Path]) -> str:
    """The served model's identity: every knob (dtype, engine, KV cache dtype, ... can change an answer) and the
    files of the checkpoint (and engine) directories."""
    h = hashlib.sha256(json.dumps(cfg.knobs(), sort_keys=True).encode())
    for root in dirs:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            st = path.stat()
            h.update(f"{path.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            if st.st_size <= SMALL_FILE_BYTES:
                h.update(path.read_bytes())
    return h.hexdigest()


def request_key(identity: str, request: GenerateRequest) -> str:
    """The key of a tokenized request: every field that can change its deltas, whatever fields it gains later."""
    asked = {f.name: _plain(getattr(request, f.name)) for f in dataclasses.fields(request)
             if f.name not in _NOT_KEYED}
    blob = json.dumps({"identity": identity, "prompt": request.prompt_token_ids, "request": asked},
                      sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


def _plain(value):
    """A dataclass (SamplingParams) as a dict, so the key's JSON names each of its fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


class ResponseStore:
    """Recorded answers by key, each held pickled (so its size in bytes is exact): least recently used out first
    once either bound is passed, and none kept more than `ttl_s` seconds after it was stored. Thread-safe.

    Written here rather than with cachetools (whose TTLCache does LRU + TTL, with one size bound): the serving
    layer also runs inside NVIDIA's Triton images, which install none of our dependencies, and a module they lack
    would fail the model's load; two ordered dicts are all it takes."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float, timer=time.monotonic):
        self.max_entries, self.max_bytes, self.ttl_s = max_entries, max_bytes, ttl_s
        self._timer = timer
        self._lru: OrderedDict[str, bytes] = OrderedDict()  # least recently used first
        self._expiry: OrderedDict[str, float] = OrderedDict()  # the same keys, oldest first (one TTL for all)
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            self._expire()
            blob = self._lru.get(key)
            if blob is not None:
                self._lru.move_to_end(key)
            return blob

    def put(self, key: str, blob: bytes) -> bool:
        """False where the answer alone is larger than the byte bound (it is then not kept)."""
        if len(blob) > self.max_bytes:
            return False
        with self._lock:
            self._drop(key)
            self._lru[key] = blob
            self._expiry[key] = self._timer() + self.ttl_s
            self._bytes += len(blob)
            self._expire()
            while len(self._lru) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._lru)))
        return True

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._lru)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            self._expire()
            return self._bytes

    def _expire(self) -> None:
        now = self._timer()
        while self._expiry and next(iter(self._expiry.values())) <= now:
            self._drop(next(iter(self._expiry)))

    def _drop(self, key: str) -> None:
        blob = self._lru.pop(key, None)
        if blob is not None:
            self._bytes -= len(blob)
            del self._expiry[key]


class _Recorder:
    """The callback of a request that missed: forwards each delta and keeps it, with the time since the one
    before. A complete answer (no choice cancelled or failed) is stored before its final delta goes on, so a
    repeat sent on seeing that delta hits."""

    def __init__(self, key: str, callback: Callback, store: ResponseStore):
        self.key, self.callback, self.store = key, callback, store
        self.steps: list[tuple[float, Delta]] = []
        self.last: float | None = None
        self.failed = False

    def __call__(self, delta: Delta) -> None:
        now = time.monotonic()
        self.steps.append((0.0 if self.last is None else now - self.last, delta))
        self.last = now
        if delta.finish_reason is not None:  # a choice ended (with n > 1, not yet the request)
            self.failed |= delta.error is not None or delta.finish_reason in (FinishReason.ABORT,
                                                                              FinishReason.ERROR)
        if delta.finished and not self.failed:
            self.store.put(self.key, pickle.dumps(self.steps, protocol=pickle.HIGHEST_PROTOCOL))
        self.callback(delta)


@dataclasses.dataclass
class _Replay:
    cancel: threading.Event
    thread: threading.Thread | None = None


class CachingService(Service):
    """A `Service` that answers repeated deterministic requests from a `ResponseStore` and passes everything else
    to `inner`. Hits and misses (deterministic requests only) are counted in `metrics`."""

    def __init__(self, inner: Service, store: ResponseStore, identity: str, metrics: MetricsSink | None = None,
                 max_prompt_chars: int = 1_000_000):
        self.inner = inner
        self.tokenizer = inner.tokenizer
        self.store, self.identity = store, identity
        self.metrics = metrics or NullSink()
        self.max_prompt_chars = max_prompt_chars
        self._replays: dict[str, _Replay] = {}
        self._lock = threading.Lock()
        self._draining = False
        self._stopping = threading.Event()

    @property
    def healthy(self) -> bool:  # type: ignore[override]
        return self.inner.healthy

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def max_model_len(self) -> int:
        return self.inner.max_model_len

    def submit(self, request: GenerateRequest, callback: Callback) -> None:
        if self._draining:
            raise EngineError(DRAINING_MESSAGE, status="UNAVAILABLE")
        if self._stopping.is_set() or not self.healthy:
            raise EngineError(NOT_SERVING_MESSAGE, status="UNAVAILABLE")
        if not deterministic(request.params):
            self.inner.submit(request, callback)
            return
        if request.prompt_token_ids is None:  # the key needs the rendered prompt; the inner service reuses it
            request.prompt_token_ids = tokenize_request(self.tokenizer, request, self.max_prompt_chars)
        key = request_key(self.identity, request)
        recorded = self.store.get(key)
        if recorded is not None:
            self.metrics.increment(HITS)
            self._start_replay(request.request_id, recorded, callback)
            return
        self.metrics.increment(MISSES)
        self.inner.submit(request, _Recorder(key, callback, self.store))

    def abort(self, request_id: str) -> None:
        with self._lock:
            replay = self._replays.get(request_id)
        if replay is not None:
            replay.cancel.set()
        else:
            self.inner.abort(request_id)

    def drain(self, grace_s: float) -> None:
        """Refuses new requests, hits included; replays in flight take milliseconds and finish."""
        self._draining = True
        self.inner.drain(grace_s)

    def stats(self) -> EngineStats:
        return self.inner.stats()

    def resident_memory_bytes(self) -> int:
        return self.inner.resident_memory_bytes()

    def shutdown(self) -> None:
        """Replays in flight end with UNAVAILABLE, as the inner service's requests do."""
        self._stopping.set()
        with self._lock:
            replays = list(self._replays.values())
        for replay in replays:
            replay.cancel.set()
        for replay in replays:
            replay.thread.join(timeout=1.0)
        self.inner.shutdown()

    # -- replays ------------------------------------------------------------------------------------------------
    def _start_replay(self, request_id: str, recorded: bytes, callback: Callback) -> None:
        replay = _Replay(threading.Event())
        replay.thread = threading.Thread(target=self._replay, args=(request_id, recorded, callback, replay.cancel),
                                         name="llm-cache-replay", daemon=True)
        with self._lock:
            self._replays[request_id] = replay
        replay.thread.start()

    def _replay(self, request_id: str, recorded: bytes, callback: Callback, cancel: threading.Event) -> None:
        """Sends the recorded deltas under this request's id; a cancel or a shutdown on the way ends it with its
        own final delta instead, so the request still gets exactly one."""
        try:
            steps: list[tuple[float, Delta]] = pickle.loads(recorded)  # fresh objects: the entry stays as stored
            for gap, delta in steps:
                if cancel.wait(min(gap, REPLAY_GAP_MAX_S)):
                    _call(callback, self._ended_early(request_id, delta.num_input_tokens))
                    return
                _call(callback, dataclasses.replace(delta, request_id=request_id))
        finally:
            with self._lock:
                self._replays.pop(request_id, None)

    def _ended_early(self, request_id: str, num_input_tokens: int) -> Delta:
        if self._stopping.is_set():
            error = EngineError(SHUTTING_DOWN_MESSAGE, status="UNAVAILABLE")
            return Delta(request_id, "", [], num_input_tokens, FinishReason.ERROR, error=error)
        return Delta(request_id, "", [], num_input_tokens, FinishReason.ABORT)


def _call(callback: Callback, delta: Delta) -> None:
    try:
        callback(delta)
    except Exception:  # noqa: BLE001 - a broken callback must not stop the replay (nor reach its thread's top)
        log.exception("response callback failed for %s", delta.request_id)
