"""A hook on the engine's eager steps, for diagnostics: no-op by default.

The engine calls `eager_step` after each prefill or mixed step it ran (decode steps replay CUDA graphs and are
not reported one by one). `StepTrace` writes one text line per step, and one per full garbage collection (it
stops every thread of the process), to the file named by LLMSERVE_STEP_TRACE; the bench reads those lines.
"""

from __future__ import annotations

import gc
import time
from typing import Protocol

import torch

from llmserve.engine.scheduler import ScheduledBatch, Scheduler


class Launches(Protocol):
    """What the model runner tells of the step it last launched."""

    last_launch_s: float  # host time to enqueue the step
    last_launch_split_ms: tuple[float, float, float] | None  # a graph step's inputs / replay / logits
    device: torch.device


class StepObserver(Protocol):
    def started(self) -> None:
        """The engine has loaded: what follows is serving."""

    def eager_step(self, batch: ScheduledBatch, started: float, sched: Scheduler, runner: Launches) -> None: ...

    def close(self) -> None: ...


class NoObserver:
    def started(self) -> None:
        pass

    def eager_step(self, batch: ScheduledBatch, started: float, sched: Scheduler, runner: Launches) -> None:
        pass

    def close(self) -> None:
        pass


class StepTrace:
    """One line per eager step and per full collection, appended to `path` (line-buffered)."""

    def __init__(self, path: str):
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - lives with the engine
        self.gc_start = 0.0
        self.mallocs = 0  # cudaMalloc + cudaFree calls so far

    def started(self) -> None:
        gc.callbacks.append(self.on_gc)  # collections while loading are not serving pauses

    def on_gc(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self.gc_start = time.perf_counter()
        else:
            self.file.write(f"{time.monotonic():.4f} gc gen=2 ms={(time.perf_counter() - self.gc_start) * 1e3:.1f} "
                            f"collected={info.get('collected')}\n")

    def eager_step(self, batch: ScheduledBatch, started: float, sched: Scheduler, runner: Launches) -> None:
        now = time.monotonic()
        waited = max(started - s.request.arrival_time for s in batch.seqs)
        split = runner.last_launch_split_ms
        parts = "" if split is None else " graph_parts_ms=" + "/".join(f"{x:.1f}" for x in split)
        if runner.device.type == "cuda":  # cudaMalloc/cudaFree by torch's allocator (a free syncs the device)
            parts += f" cuda_mallocs={self._new_mallocs(runner.device)}"
        self.file.write(f"{now:.4f} eager seqs={len(batch.seqs)} tokens={batch.total_tokens} "
                        f"ms={(now - started) * 1e3:.1f} launch_ms={runner.last_launch_s * 1e3:.1f}{parts} "
                        f"oldest_wait_ms={waited * 1e3:.1f} "
                        f"running={len(sched.running)} waiting={len(sched.waiting)}\n")

    def _new_mallocs(self, device: torch.device) -> int:
        stats = torch.cuda.memory_stats(device)
        total = stats.get("num_device_alloc", 0) + stats.get("num_device_free", 0)
        new, self.mallocs = total - self.mallocs, total
        return new

    def close(self) -> None:
        if self.on_gc in gc.callbacks:
            gc.callbacks.remove(self.on_gc)
        self.file.close()


def step_observer(trace_path: str | None) -> StepObserver:
    return StepTrace(trace_path) if trace_path else NoObserver()
