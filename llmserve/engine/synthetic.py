"""A model-free engine for measuring the serving layers alone (`engine: synthetic` in config.pbtxt).

Each step sleeps `synthetic_step_ms` (standing in for a GPU step: no GIL held, as when the real engine waits
on the device) and then gives every running request its next token, cycling through the token ids of its
prompt (choice i of n > 1 starts i tokens later, so the choices differ). Nothing is computed, so what the
Triton path loses against it is the adapter's and the server's own cost per token: `python -m bench.adapter`
measures that on any machine, without a GPU.
"""

from __future__ import annotations

import time

from llmserve.engine.api import EngineOutput, EngineRequest, EngineStats, FinishReason, Overloaded


class SyntheticEngine:
    def __init__(self, vocab_size: int, max_model_len: int, max_batch_size: int, step_ms: float,
                 max_queue_size: int):
        self.vocab_size, self.max_model_len = vocab_size, max_model_len
        self.max_batch_size, self.step_s, self.max_queue_size = max_batch_size, step_ms / 1000, max_queue_size
        self.waiting: list[tuple[EngineRequest, int]] = []  # (request, choice)
        self.running: dict[tuple[str, int], list] = {}  # (id, choice) -> [request, tokens generated]
        self.aborted: list[EngineRequest] = []  # their final ("abort") output comes from the next step
        self.steps = 0

    def add_request(self, request: EngineRequest) -> None:
        if len(self.waiting) >= self.max_queue_size:
            raise Overloaded(f"the queue holds {len(self.waiting)} waiting requests (max_queue_size)")
        self.waiting.extend((request, i) for i in range(request.params.n))

    def abort(self, request_id: str) -> None:
        request = next((r for r, _ in [*self.running.values(), *self.waiting] if r.request_id == request_id), None)
        if request is not None:
            self.finish(request_id)
            self.aborted.append(request)

    def finish(self, request_id: str, index: int | None = None) -> None:
        def ends(key: tuple[str, int]) -> bool:
            return key[0] == request_id and index in (None, key[1])

        self.running = {k: v for k, v in self.running.items() if not ends(k)}
        self.waiting = [(r, i) for r, i in self.waiting if not ends((r.request_id, i))]

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.aborted)

    def step(self) -> list[EngineOutput]:
        while self.waiting and len(self.running) < self.max_batch_size:
            r, i = self.waiting.pop(0)
            self.running[(r.request_id, i)] = [r, 0]
        time.sleep(self.step_s)
        self.steps += 1
        outputs = [EngineOutput(r.request_id, [], FinishReason.ABORT, None, None, len(r.prompt_token_ids))
                   for r in self.aborted]
        self.aborted.clear()
        for (rid, index), state in list(self.running.items()):
            request, n = state
            prompt = request.prompt_token_ids
            token = prompt[(n + index) % len(prompt)]
            state[1] = n = n + 1
            done = n >= request.params.max_tokens
            if done:
                del self.running[(rid, index)]
            outputs.append(EngineOutput(rid, [token], FinishReason.LENGTH if done else None, None, None, len(prompt),
                                        index=index))
        return outputs

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self.running), waiting=len(self.waiting), steps=self.steps)

    def shutdown(self) -> None:
        self.running.clear()
