"""A tensor-parallel worker: `python -m llmserve.engine.parallel.worker RANK PORT FD KNOBS CHECKPOINT`.

It joins rank 0's group, loads its shard and builds its KV cache (its heads only, as many blocks as every rank
holds) and, on a GPU, the same CUDA graphs as rank 0, then runs its shard of each step rank 0 announces on the
control pipe (file descriptor FD) until told to stop. It owns no scheduling state: rank 0's block tables arrive
with every step. It exits when the pipe closes, when its parent changes (rank 0 died), or on any error, which
rank 0 sees as a closed connection.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from llmserve.config import ServingConfig
from llmserve.engine.model_runner import ModelRunner
from llmserve.engine.parallel.group import RankGroup, join_store
from llmserve.engine.parallel.step_broadcast import DECODE, STOP, StepChannel

log = logging.getLogger("llmserve.engine.parallel.worker")
PARENT_POLL_S = 0.5


def _exit_with_parent(parent: int) -> None:
    """Rank 0 gone (even by SIGKILL, which closes no pipe we are not reading): exit at once, no cleanup that
    could wait on a collective."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(3)


def serve(conn: Connection, channel: StepChannel, runner: ModelRunner) -> None:
    """Runs each message rank 0 sends, the way rank 0 runs it (the same graphs, so the same collectives)."""
    receive_decode = channel.receiver()
    while True:
        try:
            header = conn.recv_bytes()
        except (EOFError, OSError):
            return  # rank 0 closed the pipe
        fields = channel.open(header)
        if fields[0] == STOP:
            return
        if fields[0] == DECODE:
            runner.follow_decode(fields[2], fields[5], receive_decode)
        else:
            runner.follow(*channel.receive(fields))


def main(argv: list[str]) -> int:
    rank, port, fd = int(argv[0]), int(argv[1]), int(argv[2])
    cfg = ServingConfig.of(**json.loads(argv[3]))
    logging.basicConfig(level=logging.INFO, format=f"tp-rank{rank} %(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    conn = Connection(fd)
    group = RankGroup(cfg, rank, join_store(port, cfg.pytorch.world_size, rank))
    if group.device.type == "cpu":  # the ranks share the cores
        torch.set_num_threads(max(1, torch.get_num_threads() // group.world))
    runner = ModelRunner(cfg, Path(argv[4]), group)
    assert group.channel is not None
    serve(conn, group.channel, runner)
    group.close()
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except BaseException:  # noqa: BLE001 - report, then exit without waiting on a collective
        log.exception("tensor-parallel worker failed")
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
