"""Rank 0's side: the worker processes it starts, their control pipes, and the watch that turns a worker's exit
into a lost group within milliseconds (the engine then fails its requests and reports itself unhealthy).

Workers are fresh interpreters (`python -m llmserve.engine.parallel.worker`), not forks: the engine's process
runs Triton's and our threads, and multiprocessing's spawn re-imports the caller's __main__, which in Triton's
stub is not a script. Each worker exits when its pipe closes or its parent changes, so stopping or killing the
engine's process leaves none behind.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from llmserve.config import ServingConfig
from llmserve.engine.graph_inputs import StepInputs
from llmserve.engine.model_runner import ModelRunner
from llmserve.engine.parallel.group import RankGroup, RankLost, check_devices, join_store, refuse_second_group
from llmserve.engine.parallel.step_broadcast import stop_header
from llmserve.model.args import ModelArgs
from llmserve.model.pipeline_parallel import check_stageable
from llmserve.model.tensor_parallel import check_shardable

log = logging.getLogger(__name__)
WORKER_MODULE = "llmserve.engine.parallel.worker"
STOP_GRACE_S = 5.0  # a stopped worker that has not exited by then is killed
_CHECKOUT = Path(__file__).resolve().parents[3]  # the directory holding the llmserve package


def build_runner(cfg: ServingConfig, checkpoint_dir: Path) -> ModelRunner:
    """The engine's model runner: a plain one, or rank 0 of a tensor- and/or pipeline-parallel group (workers
    started here)."""
    if cfg.pytorch.world_size == 1 and cfg.pytorch.distributed == "auto":
        return ModelRunner(cfg, checkpoint_dir)
    check_devices(cfg)
    refuse_second_group()
    # Before any process starts: a checkpoint whose heads or layers do not split is refused naming the knob.
    args = ModelArgs.from_hf_config(json.loads((checkpoint_dir / "config.json").read_text()))
    check_shardable(args, cfg.pytorch.tensor_parallel_size)
    check_stageable(args.num_layers, cfg.pytorch.pipeline_parallel_size)
    tp = RankZero(cfg, checkpoint_dir)
    try:
        return ModelRunner(cfg, checkpoint_dir, tp)
    except BaseException:
        tp.close()
        raise


def _python() -> str:
    """The interpreter for a worker. Inside Triton's stub `sys.executable` is the stub binary, not Python (as in
    llmserve/serving/bridge/client.py, which the engine layer cannot import)."""
    exe = Path(sys.executable or "")
    if exe.name.startswith("python") and exe.is_file():
        return str(exe)
    for name in (f"python{sys.version_info.major}.{sys.version_info.minor}", "python3", "python"):
        candidate = Path(sys.prefix) / "bin" / name
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError(f"tensor_parallel_size: no Python interpreter found under {sys.prefix}/bin for the workers")


class RankZero(RankGroup):
    """The engine's rank: starts the workers, joins the group with them, and sends each step."""

    def __init__(self, cfg: ServingConfig, checkpoint_dir: Path):
        world = cfg.pytorch.world_size
        store = join_store(0, world, 0)
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []
        self._closing = False
        self._threads = torch.get_num_threads()
        try:
            for rank in range(1, world):
                self._start(rank, store.port, cfg, checkpoint_dir)
            super().__init__(cfg, 0, store)
        except BaseException:
            self.close()
            raise
        if self.device.type == "cpu":  # the ranks share the cores
            torch.set_num_threads(max(1, self._threads // world))

    def _start(self, rank: int, port: int, cfg: ServingConfig, checkpoint_dir: Path) -> None:
        mine, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_CHECKOUT), env.get("PYTHONPATH")]))
        cmd = [_python(), "-m", WORKER_MODULE, str(rank), str(port), str(theirs.fileno()),
               json.dumps(cfg.knobs()), str(checkpoint_dir)]
        proc = subprocess.Popen(cmd, env=env, pass_fds=[theirs.fileno()])
        theirs.close()
        self.procs.append(proc)
        self.conns.append(Connection(mine.detach()))
        threading.Thread(target=self._watch, args=(rank, proc), name=f"tp-worker-{rank}", daemon=True).start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _watch(self, rank: int, proc: subprocess.Popen) -> None:
        code = proc.wait()
        if self._closing:
            return
        self.lost = self.lost or f"worker rank {rank} (pid {proc.pid}) exited with code {code}"
        log.error("tensor parallel: %s; the engine stops serving", self.lost)
        if self.backend == "nccl":  # a NCCL collective would wait out its timeout for the dead peer: end it now
            abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
            if abort is not None:
                abort()

    def step(self, step: StepInputs, carried: np.ndarray | None = None, launched: bool = False,
             wait: bool = True, argmax: bool = False) -> AbstractContextManager[None]:
        """Sends `step` to the workers; the body runs rank 0's shard. wait=False: without waiting for every rank
        to take it (rank 0 keeps pipelined steps in flight); argmax: the step's sampled rows are plain greedy."""
        return self._sent(lambda: self.channel.send(step, self.conns, carried, launched, wait, argmax))

    def guard(self) -> AbstractContextManager[None]:
        """For rank 0's later part of a step it sent (collecting a pipelined step): a failure loses the group."""
        return self._sent(lambda: None)

    def decode(self, rows: int, inputs: torch.Tensor) -> AbstractContextManager[None]:
        """Sends a decode graph's filled inputs to the workers; the body replays rank 0's graph."""
        return self._sent(lambda: self.channel.send_decode(rows, inputs, self.conns))

    @contextmanager
    def _sent(self, send: Callable[[], None]) -> Iterator[None]:
        """Any failure once a message is sent leaves the ranks out of step: it loses the group (RankLost) rather
        than letting a retry desynchronize them."""
        self.check()
        assert self.channel is not None
        try:
            send()
            yield
        except Exception as exc:
            self.lost = self.lost or f"{type(exc).__name__}: {exc}"
            raise RankLost(self.lost) from exc

    def close(self) -> None:
        """Stops the workers (killing those that do not exit within STOP_GRACE_S) and leaves the group."""
        if self._closing:
            return
        self._closing = True
        for conn in self.conns:
            try:
                conn.send_bytes(stop_header())
            except OSError:
                pass  # that worker is gone already
        deadline = time.monotonic() + (0 if self.lost else STOP_GRACE_S)  # a lost group's workers may hang
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for conn in self.conns:
            conn.close()
        super().close()
        torch.set_num_threads(self._threads)
