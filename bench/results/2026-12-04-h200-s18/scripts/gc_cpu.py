"""Full garbage collections while a frozen-heap engine serves many streams (tiny random model, CPU), and their
pauses. From the repository root:
    PYTHONPATH=. python bench/results/2026-12-04-h200-s18/scripts/gc_cpu.py 512 90 10    # CPython's threshold
    PYTHONPATH=. python bench/results/2026-12-04-h200-s18/scripts/gc_cpu.py 512 90        # freeze_heap's (100)
Measured (2-core VM, before freeze_heap set it): 256 streams 0 collections; 512 streams 5 (1.6-3.6 ms each); 512
streams with the threshold at 100: 0."""
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, "tests")
from conftest import write_tiny_llama  # noqa: E402

from bench.run.plans import random_prompts  # noqa: E402
from bench.workload import drive_engine  # noqa: E402
from llmserve.config import ServingConfig  # noqa: E402
from llmserve.engine.torch_engine import TorchEngine  # noqa: E402
from llmserve.serving.bridge.server import freeze_heap  # noqa: E402


def main(streams: int, out_len: int, sweeps: int | None) -> None:
    torch.set_num_threads(1)
    ckpt = write_tiny_llama(Path(tempfile.mkdtemp()) / "ckpt")
    knobs = {"max_batch_size": streams, "max_num_tokens": 4096, "max_queue_size": 4096, "max_model_len": 128}
    eng = TorchEngine(ServingConfig.from_parameters(knobs), ckpt)
    freeze_heap()
    if sweeps is not None:
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, sweeps)
    pauses, started = [], []

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started.append(time.perf_counter())
            else:
                pauses.append((time.perf_counter() - started[-1]) * 1e3)

    gc.callbacks.append(on_gc)
    _, wall = drive_engine(eng, random_prompts(4 * streams, 32, 256, seed=1), out_len, streams)
    print(f"threshold {gc.get_threshold()}, {streams} streams x {out_len} tokens: {wall:.1f} s, full collections "
          f"{len(pauses)}: {[round(p, 1) for p in pauses]} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
