"""One rank's membership of a tensor- and/or pipeline-parallel group: joining it, its device, its shard of the
model, and the agreement on the KV cache's block count.

The ranks form a grid: rank = stage * tensor_parallel_size + tensor-parallel rank (rank 0, the engine's, is the
first stage's first). With both kinds, each stage's ranks get a subgroup of their own for the model's
all-reduces; the stages pass hidden states point to point (llmserve/engine/parallel/pipeline.py).

Two groups over the same ranks: the default one on the device's backend (NCCL on GPUs, gloo on the CPU) for the
model's all-reduces, and a gloo one for each step's inputs, which every rank needs on the host anyway (the
attention metadata's work lists are built there). Both have a timeout, so a rank that hangs fails the others'
collectives instead of stalling them forever.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from llmserve.config import ConfigError, ServingConfig
from llmserve.engine.api import EngineError
from llmserve.engine.graph_inputs import StepInputs
from llmserve.engine.parallel.layout import check_replica, ranks_knob, replica_gpus, visible_gpus_text
from llmserve.engine.parallel.pipeline import Pipeline, StageRole, steps_in_flight
from llmserve.engine.parallel.step_broadcast import StepChannel
from llmserve.model.args import ModelArgs
from llmserve.model.pipeline_parallel import keep_stage
from llmserve.model.tensor_parallel import shard_empty, shard_model

# A collective waits at most this long for the slowest rank: each one spans a layer's half, not a whole step,
# so this is far above any healthy wait and low enough that a hung rank fails its requests within seconds.
COLLECTIVE_TIMEOUT_S = 10.0
JOIN_TIMEOUT_S = 600.0  # every worker must start, and every rank load its shard, within this


class RankLost(EngineError):
    """A rank died, hung past the collective timeout, or fell out of step: no request can be served."""

    def __init__(self, message: str):
        super().__init__(f"tensor-parallel group lost: {message}", status="UNAVAILABLE")


def rank_device(device: str, rank: int) -> torch.device:
    """Rank r's device: cuda:(N + r) for a base of cuda:N (auto and cuda: N = 0; a KIND_GPU instance on GPU g
    gets device cuda:g from the adapter), as layout.replica_gpus numbers them; the CPU for every rank."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    base = torch.device(device if device != "auto" else "cuda")
    return torch.device("cuda", replica_gpus(base.index or 0, rank + 1)[rank])


def join_store(port: int, world: int, rank: int) -> dist.TCPStore:
    """The rendezvous: rank 0 serves it (port 0: any free one, read back from `.port`), the workers connect."""
    return dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0, timeout=timedelta(seconds=JOIN_TIMEOUT_S),
                         wait_for_workers=False)


def refuse_second_group() -> None:
    """torch.distributed has one default group per process, so one tensor-parallel engine per process."""
    if dist.is_initialized():
        raise ConfigError("tensor_parallel_size: this process already belongs to a torch.distributed group "
                          "(one tensor-parallel engine per process)")


def check_devices(cfg: ServingConfig) -> None:
    """This replica's GPUs exist (the launcher checked the whole layout; this covers any other start)."""
    first = rank_device(cfg.device, 0)
    if first.type == "cuda":
        count = torch.cuda.device_count()
        check_replica(first.index, cfg.pytorch.world_size, count, visible_gpus_text(count),
                      ranks_knob(cfg.pytorch.pipeline_parallel_size))


class RankGroup:
    """This process's rank in the group. Joining blocks until every rank has joined (or JOIN_TIMEOUT_S)."""

    lost: str | None = None  # why the group cannot serve (rank 0 sets it; a worker just exits)

    def __init__(self, cfg: ServingConfig, rank: int, store: dist.Store):
        refuse_second_group()
        self.cfg, self.rank, self.world = cfg, rank, cfg.pytorch.world_size
        self.role = StageRole(rank, cfg.pytorch.tensor_parallel_size, cfg.pytorch.pipeline_parallel_size)
        self.device = rank_device(cfg.device, rank)
        self.backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.store = store
        self.meet("started")
        timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        dist.init_process_group(self.backend, store=store, rank=rank, world_size=self.world, timeout=timeout)
        self.joined = True
        self.host_group = dist.new_group(backend="gloo", timeout=timeout)
        self.tp_group = self._stage_group(timeout)
        self.logits_group = self._logits_group(timeout)
        self.channel: StepChannel | None = None
        self.pipeline: Pipeline | None = None

    def _stage_group(self, timeout: timedelta) -> dist.ProcessGroup | None:
        """This stage's tensor-parallel ranks (None: the default group, when that is all of them). Every rank
        creates every stage's group, in the same order, as torch.distributed requires."""
        role = self.role
        if role.stages == 1 or role.tp == 1:
            return None
        groups = [dist.new_group(role.tp_ranks(s), backend=self.backend, timeout=timeout) for s in range(role.stages)]
        return groups[role.stage]

    def _logits_group(self, timeout: timedelta) -> dist.ProcessGroup | None:
        """Rank 0 and the last stage's first rank, for the logits (pipeline.py says why they have their own)."""
        role = self.role
        if role.stages == 1:
            return None
        return dist.new_group([0, role.tp_ranks(role.stages - 1)[0]], backend=self.backend, timeout=timeout)

    def check(self) -> None:
        if self.lost is not None:
            raise RankLost(self.lost)

    def step(self, step: StepInputs, carried: np.ndarray | None = None, launched: bool = False,
             wait: bool = True, argmax: bool = False) -> AbstractContextManager[None]:
        """Rank 0 sends each step (RankZero); a worker receives them on its pipe instead."""
        raise RuntimeError(f"rank {self.rank} does not send steps")

    def decode(self, rows: int, inputs: torch.Tensor) -> AbstractContextManager[None]:
        """Rank 0 sends each decode graph's inputs (RankZero)."""
        raise RuntimeError(f"rank {self.rank} does not send steps")

    def meet(self, name: str) -> None:
        """Waits (up to JOIN_TIMEOUT_S) until every rank got here, through the store: the slow phases (starting
        Python, loading a shard from disk) vary by far more than the collectives' timeout. Rank 0 checks in
        between whether a worker died, so a failed start ends at once instead of at the timeout."""
        self.store.set(f"{name}/{self.rank}", "1")
        keys = [f"{name}/{r}" for r in range(self.world)]
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while not self.store.check(keys):
            self.check()
            if time.monotonic() > deadline:
                raise RankLost(f"not every rank reached {name!r} within {JOIN_TIMEOUT_S:g} s")
            time.sleep(0.05)

    def select(self, model: nn.Module) -> nn.Module:
        """Keeps this rank's stage's layers and its share of their heads and MLP rows, on the empty model before
        loading: the rank reads only those slices. A model of random weights (made whole) is sliced by `shard`."""
        model = keep_stage(model, self.role.stage, self.role.stages)
        empty = model.layers[0].input_layernorm.weight.is_meta
        return shard_empty(model, self.role.tp_rank, self.role.tp) if empty else model

    def shard(self, model: nn.Module) -> nn.Module:
        """The loaded model's row-parallel layers sum over this stage's ranks (a whole one is sliced first)."""
        return shard_model(model, self.role.tp_rank, self.role.tp, self.tp_group)

    def agree_blocks(self, num_blocks: int) -> int:
        """The KV block count every rank can hold (the smallest): rank 0's block manager hands out block ids that
        every rank's cache must have."""
        self.meet("loaded")
        t = torch.tensor([num_blocks], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.host_group)
        return int(t.item())

    def open(self, max_model_len: int, args: ModelArgs, dtype: torch.dtype) -> None:
        """Allocates the step channel's buffer for the largest step the configuration allows, and with more than
        one stage the pipeline that runs this rank's part of each step."""
        b = self.cfg.batching
        width = -(-max_model_len // self.cfg.cache.kv_block_size)
        p = self.cfg.pytorch
        depth = steps_in_flight(p.pipeline_steps_in_flight, self.role.stages) if self.role.stages > 1 else 1
        self.channel = StepChannel(self.host_group, b.max_num_tokens, b.max_batch_size, width,
                                   slots=depth if self.rank == 0 else 1)
        if self.role.stages > 1:
            self.pipeline = Pipeline(self.role, args.hidden_size, args.vocab_size, dtype, self.device,
                                     p.pipeline_micro_batches, depth, self.logits_group)

    def close(self) -> None:
        if getattr(self, "joined", False):
            self.joined = False
            dist.destroy_process_group()
