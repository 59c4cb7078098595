"""Experiment (benchmark only): the production Triton adapter with three per-token costs removed, to measure
what they cost. Installed as model.py by `python -m bench.run --triton-adapter fast`.

1. No `sender.is_cancelled()` after every streamed response (the housekeeping thread already polls every
   `cancellation_check_period_ms`): one IPC round trip to the server less per token.
2. The response thread drains its queue and sends one response per request per drain, merging the deltas
   that piled up (streaming clients see several tokens in one message when the thread falls behind).
3. Per-token metric observations go to a sink that counts locally instead of crossing into the server per
   token (pb_utils metrics are IPC calls from the stub).
"""

from __future__ import annotations

import importlib.util
import queue
import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils

from llmserve.metrics import NullSink
from llmserve.service import Delta

_ROOT = Path(__import__("llmserve").__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("llm_production_model", _ROOT / "model_repository/llm/1/model.py")
_prod = importlib.util.module_from_spec(_spec)
sys.modules["llm_production_model"] = _prod  # dataclasses look their module up there
_spec.loader.exec_module(_prod)


def _merge(a: Delta, b: Delta) -> Delta:
    return Delta(a.request_id, a.text + b.text, a.token_ids + b.token_ids, b.num_input_tokens, b.finish_reason,
                 (a.logprobs or []) + (b.logprobs or []) if (a.logprobs or b.logprobs) else None, b.error or a.error)


class TritonPythonModel(_prod.TritonPythonModel):
    def initialize(self, args):
        super().initialize(args)
        self.service.metrics = NullSink()

    def _response_loop(self) -> None:
        while True:
            first = self.responses.get()
            if first is None:
                return
            pending: dict[str, Delta] = {first.request_id: first}
            stop = False
            while True:
                try:
                    d = self.responses.get_nowait()
                except queue.Empty:
                    break
                if d is None:
                    stop = True
                    break
                prev = pending.get(d.request_id)
                pending[d.request_id] = _merge(prev, d) if prev is not None and not prev.finished else d
            for delta in pending.values():
                state = self.inflight.get(delta.request_id)
                if state is None:
                    continue
                try:
                    self._send_fast(delta, state)
                except Exception:  # noqa: BLE001
                    _prod.log.exception("sending a response for %s failed", delta.request_id)
                    if delta.finished:
                        self.inflight.pop(delta.request_id, None)
            if stop:
                return

    def _send_fast(self, delta: Delta, state) -> None:
        if delta.finish_reason == "abort" or delta.error is not None:
            return self._send(delta, state)
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if delta.finished:
            self.inflight.pop(delta.request_id, None)
        tensors = state.builder.add(delta)
        if tensors is None:
            return
        response = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in tensors.items()])
        state.sender.send(response, flags=final if delta.finished else 0)
