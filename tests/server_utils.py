"""Helpers for tests against the real server: raw gRPC streams and /metrics parsing."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype


def metrics(url: str) -> dict[str, float]:
    from llm_client.soak import scrape

    return scrape(url)


def metric(url: str, name: str, **labels) -> float:
    total = 0.0
    for key, value in metrics(url).items():
        if key == name or key.startswith(name + "{"):
            if all(f'{k}="{v}"' in key for k, v in labels.items()):
                total += value
    return total


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1) -> bool:
    """True once `predicate()` is. An endpoint not listening yet counts as not yet: tritonserver 2.51 opens its
    metrics port ~40 ms after HTTP reports ready (a test scraping in between failed once, 2026-11-30)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except ConnectionRefusedError:
            pass
        except OSError as exc:  # urllib wraps the refusal in URLError
            if not isinstance(getattr(exc, "reason", None), ConnectionRefusedError):
                raise
        time.sleep(interval)
    return predicate()


def infer_inputs(**tensors) -> list:
    out = []
    for name, value in tensors.items():
        if isinstance(value, str):
            arr = np.array([value.encode()], dtype=np.object_)
        elif isinstance(value, dict):
            arr = np.array([json.dumps(value).encode()], dtype=np.object_)
        elif isinstance(value, np.ndarray):
            arr = value
        else:
            arr = np.array([value])
        t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


class Stream:
    """One gRPC stream carrying many requests; records every response per request id."""

    def __init__(self, url: str):
        self.client = grpcclient.InferenceServerClient(url)
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.client.start_stream(callback=lambda result, error: self.q.put((result, error)))

    def send(self, request_id: str, **tensors) -> None:
        self.client.async_stream_infer("llm", infer_inputs(**tensors), request_id=request_id,
                                       enable_empty_final_response=True)

    def collect(self, ids: set[str], timeout: float = 300.0, linger: float = 1.0) -> dict[str, list]:
        """Responses per id until every id has a final one, then `linger` seconds more to catch extras.

        gRPC stream errors carry no request id: they are filed under "?" and each counts as one final."""
        got: dict[str, list] = {i: [] for i in ids}
        finals: set[str] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(finals & ids) + len(got.get("?", [])) < len(ids):
            try:
                result, error = self.q.get(timeout=1)
            except queue.Empty:
                continue
            self._record(got, finals, result, error)
        end = time.monotonic() + linger
        while time.monotonic() < end:
            try:
                self._record(got, finals, *self.q.get(timeout=0.1))
            except queue.Empty:
                pass
        return got

    @staticmethod
    def _record(got, finals, result, error) -> None:
        if error is not None:
            rid = getattr(error, "request_id", None) or "?"
            got.setdefault(rid, []).append(("error", str(error), True))
            return
        resp = result.get_response()
        final = resp.parameters["triton_final_response"].bool_param
        text = result.as_numpy("text_output")
        piece = text.reshape(-1)[0].decode() if text is not None else None
        got.setdefault(resp.id, []).append(("data", piece, final))
        if final:
            finals.add(resp.id)

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def make_repository(root, checkpoint, **overrides) -> Path:
    from llmserve.launch.tritonserver import derive_repository

    return derive_repository(root, checkpoint, Path(__file__).resolve().parents[1] / "model_repository", **overrides)
